//! What the operator console reads beyond `status` and `guard list`, and the audit row
//! every console action writes.
//!
//! Nothing here selects a token, a ciphertext or a key: the queries name their columns,
//! and the credential detail is the standing, the schedule and the marks only.
//! Actions themselves go through the same store functions as the CLI (`guard::release_as`,
//! `canaries::add`, `status::recheck`, `priority::request`); this module adds the event
//! that names the console user, written in the same transaction as the action.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};

/// One supplier's counts over one minute (the sums of its 5-second buckets), for the
/// overview's chart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MinuteCounts {
    pub supplier: String,
    pub minute: DateTime<Utc>,
    /// Supplier calls (retries included) and the transient ones.
    pub calls: i64,
    pub transient: i64,
    /// Checks answered valid or invalid, and the invalid ones.
    pub answers: i64,
    pub invalid: i64,
    /// Checks finished, whatever their outcome.
    pub checks: i64,
}

/// Every supplier's counts per minute since `since`, oldest first. The counts table holds
/// a few thousand rows at most (pruned with the events), so this is cheap.
pub async fn minutes(pool: &PgPool, since: DateTime<Utc>) -> sqlx::Result<Vec<MinuteCounts>> {
    sqlx::query_as!(
        MinuteCounts,
        r#"
        SELECT supplier AS "supplier!", date_trunc('minute', bucket) AS "minute!",
               sum(calls)::int8 AS "calls!", sum(transient)::int8 AS "transient!",
               sum(answers)::int8 AS "answers!", sum(invalid)::int8 AS "invalid!",
               sum(checks)::int8 AS "checks!"
          FROM im1_supplier_counts
         WHERE bucket >= $1
         GROUP BY 1, 2
         ORDER BY 1, 2
        "#,
        since,
    )
    .fetch_all(pool)
    .await
}

/// One credential as the console shows it: its standing, strikes, schedule, refresh
/// lifecycle and marks. Never the token (the ciphertext column is not selected).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CredentialDetail {
    pub user_id: String,
    pub supplier: String,
    pub ods_code: String,
    pub key_id: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub refresh_required: bool,
    pub refresh_attempts: i32,
    pub refresh_suppressed_until: Option<DateTime<Utc>>,
    pub strike_at: Option<DateTime<Utc>>,
    pub strike_reason: Option<String>,
    pub failures: i32,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    pub last_verified_at: Option<DateTime<Utc>>,
    pub invalidated_at: Option<DateTime<Utc>>,
    pub next_check_at: DateTime<Utc>,
    pub priority_requested_at: Option<DateTime<Utc>>,
    /// Set while a process holds a claim on it (a check in flight).
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub canary: bool,
    /// The guard's held answer for it, if any: reason and when.
    pub held_reason: Option<String>,
    pub held_at: Option<DateTime<Utc>>,
}

pub async fn credential(pool: &PgPool, user_id: &str) -> sqlx::Result<Option<CredentialDetail>> {
    sqlx::query_as!(
        CredentialDetail,
        r#"
        SELECT c.user_id, c.supplier, c.ods_code, c.key_id, c.status, c.reason,
               c.refresh_required, c.refresh_attempts, c.refresh_suppressed_until,
               c.strike_at, c.strike_reason, c.failures, c.last_checked_at, c.last_outcome,
               c.last_verified_at, c.invalidated_at, c.next_check_at, c.priority_requested_at,
               c.lease_expires_at, c.created_at, c.updated_at,
               EXISTS (SELECT 1 FROM im1_canaries k WHERE k.user_id = c.user_id) AS "canary!",
               h.reason AS "held_reason?", h.held_at AS "held_at?"
          FROM im1_credentials c
          LEFT JOIN im1_held_verdicts h ON h.user_id = c.user_id
         WHERE c.user_id = $1
        "#,
        user_id,
    )
    .fetch_optional(pool)
    .await
}

/// One row of the audit trail. The evidence is the supplier's (scrubbed of token text
/// before it was stored) or the operator action's; never a token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    pub id: i64,
    pub user_id: String,
    pub supplier: String,
    pub ods_code: String,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub refresh_required: bool,
    pub evidence: Value,
}

/// Which events to list; every field narrows (`None` is no filter).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub user_id: Option<String>,
    pub supplier: Option<String>,
    pub kind: Option<String>,
    /// Matches the event's `reason` or its `outcome` (a transient answer has no reason).
    pub reason: Option<String>,
    /// Only events older than this id (the next page).
    pub before_id: Option<i64>,
}

/// The latest `limit` events matching `filter`, newest first.
pub async fn events(pool: &PgPool, filter: &EventFilter, limit: i64) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as!(
        EventRow,
        r#"
        SELECT id, user_id, supplier, ods_code, at, kind, from_status, to_status, outcome,
               reason, refresh_required, evidence
          FROM im1_credential_events
         WHERE ($1::text IS NULL OR user_id = $1)
           AND ($2::text IS NULL OR supplier = $2)
           AND ($3::text IS NULL OR kind = $3)
           AND ($4::text IS NULL OR reason = $4 OR outcome = $4)
           AND ($5::int8 IS NULL OR id < $5)
         ORDER BY id DESC
         LIMIT $6
        "#,
        filter.user_id.as_deref(),
        filter.supplier.as_deref(),
        filter.kind.as_deref(),
        filter.reason.as_deref(),
        filter.before_id,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Appends the audit row of an operator action on `user_id`'s credential (kind
/// `operator`, its status unchanged): `{"action", "by", ...detail}`. Returns false when
/// no such credential exists (nothing is written). Run it in the action's transaction.
pub async fn record_action<'e>(
    db: impl PgExecutor<'e>,
    user_id: &str,
    action: &str,
    by: &str,
    detail: Value,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let mut evidence = match detail {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    evidence.insert("action".into(), Value::from(action));
    evidence.insert("by".into(), Value::from(by));
    let done = sqlx::query!(
        r#"
        INSERT INTO im1_credential_events
               (user_id, supplier, ods_code, at, kind, from_status, to_status, outcome, reason,
                refresh_required, evidence)
        SELECT c.user_id, c.supplier, c.ods_code, $2, 'operator', c.status, c.status, NULL, NULL,
               c.refresh_required, $3
          FROM im1_credentials c
         WHERE c.user_id = $1
        "#,
        user_id,
        now,
        Value::Object(evidence),
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What [`request_check`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A priority check is now requested, with its audit row.
    Done,
    /// One was already waiting: nothing written (a repeated submit).
    AlreadyPending,
    /// No such credential, or a Microtest one (never checked).
    NotCheckable,
}

/// "Check now" from the console: [`super::priority::request`] (the RP API's priority
/// check) plus its audit row, in one transaction. The row is locked first, so two
/// submits at once request (and record) one check.
pub async fn request_check(pool: &PgPool, user_id: &str, now: DateTime<Utc>, by: &str) -> sqlx::Result<Requested> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        r#"SELECT status, priority_requested_at IS NOT NULL AS "pending!"
             FROM im1_credentials WHERE user_id = $1 FOR UPDATE"#,
        user_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match row {
        None => Requested::NotCheckable,
        Some(r) if r.status == "unsupported" => Requested::NotCheckable,
        Some(r) if r.pending => Requested::AlreadyPending,
        Some(_) => {
            if super::priority::request(&mut *tx, user_id, now, None).await? {
                record_action(&mut *tx, user_id, "check_now", by, Value::Object(Default::default()), now).await?;
                Requested::Done
            } else {
                Requested::NotCheckable
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}
