//! Claims and write-back: the sweep's two statements per batch.
//!
//! A claim takes a batch of one supplier's due rows with `FOR UPDATE SKIP LOCKED` inside a
//! CTE and stamps each with a lease expiry, our process id and a fresh fencing token, in
//! one short transaction; no transaction is held across a supplier call. The write-back is
//! one statement per batch: it updates only rows whose fence still matches (so a verdict
//! from a lost lease, or about a token replaced meanwhile, is dropped), appends the event
//! rows and sends the notifications in the same statement, hence the same transaction.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::StandingColumns;
use crate::model::{Reason, Status, Supplier};
use crate::policy::Decision;

/// A claimed credential, still encrypted.
#[derive(Debug)]
pub struct Claimed {
    pub user_id: String,
    pub supplier: Supplier,
    pub ods_code: String,
    pub token_ciphertext: Option<Vec<u8>>,
    pub standing: crate::policy::Standing,
    pub fence: i64,
    /// For a priority check: the `traceparent` of the API request that asked for it.
    pub trace_parent: Option<String>,
}

/// Claims up to `limit` of `supplier`'s credentials that were due at `due_by` and are not
/// leased by a live claim at `now`.
pub async fn claim(
    pool: &PgPool,
    supplier: Supplier,
    due_by: DateTime<Utc>,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    owner: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<Claimed>> {
    let rows = sqlx::query!(
        r#"
        WITH due AS (
            SELECT user_id
              FROM im1_credentials
             WHERE supplier = $1
               AND status <> 'unsupported'
               AND next_check_at <= $2
               AND (lease_expires_at IS NULL OR lease_expires_at <= $3)
             ORDER BY next_check_at
             LIMIT $4
               FOR UPDATE SKIP LOCKED
        )
        UPDATE im1_credentials c
           SET lease_expires_at = $5,
               lease_owner = $6,
               fence = c.fence + 1
          FROM due
         WHERE c.user_id = due.user_id
        RETURNING c.user_id, c.ods_code, c.token_ciphertext, c.fence,
                  c.status, c.reason, c.refresh_required, c.refresh_attempts,
                  c.refresh_suppressed_until, c.strike_at, c.strike_reason, c.last_checked_at,
                  c.last_outcome, c.last_verified_at, c.invalidated_at, c.failures
        "#,
        supplier.as_str(),
        due_by,
        now,
        limit,
        lease_until,
        owner,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            user_id: r.user_id,
            supplier,
            ods_code: r.ods_code,
            token_ciphertext: r.token_ciphertext,
            fence: r.fence,
            trace_parent: None,
            standing: standing_row!(r).into_standing(),
        })
        .collect())
}

/// Claims up to `limit` credentials whose RP asked for a check now (oldest request first),
/// among `suppliers`, whether or not they are due.
pub async fn claim_priority(
    pool: &PgPool,
    suppliers: &[Supplier],
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    owner: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<Claimed>> {
    let names: Vec<String> = suppliers.iter().map(|s| s.as_str().to_owned()).collect();
    let rows = sqlx::query!(
        r#"
        WITH asked AS (
            SELECT user_id
              FROM im1_credentials
             WHERE priority_requested_at IS NOT NULL
               AND supplier = ANY($1)
               AND status <> 'unsupported'
               AND (lease_expires_at IS NULL OR lease_expires_at <= $2)
             ORDER BY priority_requested_at
             LIMIT $3
               FOR UPDATE SKIP LOCKED
        )
        UPDATE im1_credentials c
           SET lease_expires_at = $4,
               lease_owner = $5,
               fence = c.fence + 1
          FROM asked
         WHERE c.user_id = asked.user_id
        RETURNING c.user_id, c.supplier, c.ods_code, c.token_ciphertext, c.fence,
                  c.status, c.reason, c.refresh_required, c.refresh_attempts,
                  c.refresh_suppressed_until, c.strike_at, c.strike_reason, c.last_checked_at,
                  c.last_outcome, c.last_verified_at, c.invalidated_at, c.failures,
                  c.priority_trace_parent
        "#,
        &names,
        now,
        limit,
        lease_until,
        owner,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let supplier = r.supplier.parse().ok()?;
            Some(Claimed {
                user_id: r.user_id,
                supplier,
                ods_code: r.ods_code,
                token_ciphertext: r.token_ciphertext,
                fence: r.fence,
                trace_parent: r.priority_trace_parent,
                standing: standing_row!(r).into_standing(),
            })
        })
        .collect())
}

/// How many of `suppliers`' credentials are due at `due_by` (for progress displays).
pub async fn count_due(pool: &PgPool, suppliers: &[Supplier], due_by: DateTime<Utc>) -> sqlx::Result<i64> {
    let names: Vec<String> = suppliers.iter().map(|s| s.as_str().to_owned()).collect();
    sqlx::query_scalar!(
        r#"
        SELECT count(*) AS "due!"
          FROM im1_credentials
         WHERE supplier = ANY($1) AND status <> 'unsupported' AND next_check_at <= $2
        "#,
        &names,
        due_by,
    )
    .fetch_one(pool)
    .await
}

/// Reads due credentials without claiming them, for `sweep --dry-run`: keyset pages in
/// (next_check_at, user_id) order after `after`.
pub async fn peek_due(
    pool: &PgPool,
    supplier: Supplier,
    due_by: DateTime<Utc>,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> sqlx::Result<Vec<(Claimed, DateTime<Utc>)>> {
    let (after_at, after_user) = match after {
        Some((at, user)) => (Some(at), user),
        None => (None, String::new()),
    };
    let rows = sqlx::query!(
        r#"
        SELECT user_id, ods_code, token_ciphertext, fence, next_check_at,
               status, reason, refresh_required, refresh_attempts,
               refresh_suppressed_until, strike_at, strike_reason, last_checked_at,
               last_outcome, last_verified_at, invalidated_at, failures
          FROM im1_credentials
         WHERE supplier = $1
           AND status <> 'unsupported'
           AND next_check_at <= $2
           AND ($3::timestamptz IS NULL OR (next_check_at, user_id) > ($3, $4))
         ORDER BY next_check_at, user_id
         LIMIT $5
        "#,
        supplier.as_str(),
        due_by,
        after_at,
        after_user,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let claimed = Claimed {
                user_id: r.user_id,
                supplier,
                ods_code: r.ods_code,
                token_ciphertext: r.token_ciphertext,
                fence: r.fence,
                trace_parent: None,
                standing: standing_row!(r).into_standing(),
            };
            (claimed, r.next_check_at)
        })
        .collect())
}

/// One check's result, ready to be written.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub user_id: String,
    pub fence: i64,
    pub from_status: Status,
    pub decision: Decision,
    /// The supplier's evidence (status, code, message; scrubbed of any token text).
    pub evidence: serde_json::Value,
    /// The invalid answer the mass-invalidation guard held instead of applying (the
    /// decision then records `held`); stored for `guard release|discard`.
    pub held: Option<Reason>,
}

/// What caused a write: the event rows' `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A sweep's check.
    Check,
    /// An operator's `guard release`.
    Guard,
}

impl WriteKind {
    fn as_str(self) -> &'static str {
        match self {
            WriteKind::Check => "check",
            WriteKind::Guard => "guard",
        }
    }
}

/// What a batch write achieved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// Rows updated (their fence still matched).
    pub written: u64,
    /// Event rows appended.
    pub events: u64,
    /// Held verdicts stored.
    pub held: u64,
    /// Users whose verdict was dropped: the fence no longer matched.
    pub lost: Vec<String>,
}

/// Writes a batch of verdicts, their events and notifications, and any verdicts the guard
/// held, in one statement.
pub async fn write_back<'e>(
    db: impl sqlx::PgExecutor<'e>,
    verdicts: &[Verdict],
    now: DateTime<Utc>,
    kind: WriteKind,
) -> sqlx::Result<Written> {
    if verdicts.is_empty() {
        return Ok(Written::default());
    }
    let n = verdicts.len();
    let mut user_id = Vec::with_capacity(n);
    let mut fence = Vec::with_capacity(n);
    let mut from_status = Vec::with_capacity(n);
    let mut next_check_at = Vec::with_capacity(n);
    let mut event = Vec::with_capacity(n);
    let mut notify = Vec::with_capacity(n);
    let mut evidence = Vec::with_capacity(n);
    let mut held = Vec::with_capacity(n);
    let mut cols = StandingColumns::with_capacity(n);
    for v in verdicts {
        user_id.push(v.user_id.clone());
        fence.push(v.fence);
        from_status.push(v.from_status.as_str().to_owned());
        next_check_at.push(v.decision.next_check_at);
        event.push(v.decision.event);
        notify.push(v.decision.notify);
        evidence.push(v.evidence.to_string());
        held.push(v.held.map(|r| r.as_str().to_owned()));
        cols.push(&v.decision.standing);
    }
    let row = sqlx::query!(
        r#"
        WITH v AS (
            SELECT *
              FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::bool[], $6::int4[],
                          $7::timestamptz[], $8::timestamptz[], $9::text[], $10::timestamptz[],
                          $11::text[], $12::timestamptz[], $13::timestamptz[], $14::int4[],
                          $15::timestamptz[], $16::text[], $17::bool[], $18::bool[], $19::text[],
                          $22::text[])
                AS v(user_id, fence, status, reason, refresh_required, refresh_attempts,
                     refresh_suppressed_until, strike_at, strike_reason, last_checked_at,
                     last_outcome, last_verified_at, invalidated_at, failures,
                     next_check_at, from_status, emit_event, emit_notify, evidence, held_reason)
        ),
        u AS (
            UPDATE im1_credentials c
               SET status = v.status,
                   reason = v.reason,
                   refresh_required = v.refresh_required,
                   refresh_attempts = v.refresh_attempts,
                   refresh_suppressed_until = v.refresh_suppressed_until,
                   strike_at = v.strike_at,
                   strike_reason = v.strike_reason,
                   last_checked_at = v.last_checked_at,
                   last_outcome = v.last_outcome,
                   last_verified_at = v.last_verified_at,
                   invalidated_at = v.invalidated_at,
                   failures = v.failures,
                   next_check_at = v.next_check_at,
                   lease_expires_at = NULL,
                   lease_owner = NULL,
                   -- The check an RP asked for has been made.
                   priority_requested_at = NULL,
                   priority_trace_parent = NULL,
                   updated_at = $20
              -- Sorted input: the nested loop over the primary key updates (and so locks)
              -- rows in user_id order, the order import locks them in, so writers cannot
              -- deadlock with it (the writer still retries if the database says otherwise);
              -- it also walks the index in order, which measured faster.
              FROM (SELECT * FROM v ORDER BY user_id) v
             WHERE c.user_id = v.user_id
               AND c.fence = v.fence
            RETURNING c.user_id, c.supplier, c.ods_code
        ),
        e AS (
            INSERT INTO im1_credential_events
                   (user_id, supplier, ods_code, at, kind, from_status, to_status, outcome,
                    reason, refresh_required, evidence)
            SELECT u.user_id, u.supplier, u.ods_code, $20, $21, v.from_status, v.status,
                   v.last_outcome, v.reason, v.refresh_required, v.evidence::jsonb
              FROM u JOIN v ON v.user_id = u.user_id
             WHERE v.emit_event
            RETURNING 1
        ),
        n AS (
            SELECT pg_notify('im1_credential_status',
                             json_build_object('user_id', v.user_id, 'status', v.status,
                                               'refresh_required', v.refresh_required)::text)
              FROM u JOIN v ON v.user_id = u.user_id
             WHERE v.emit_notify
        ),
        h AS (
            -- Only while the supplier's guard still holds: a verdict held by a process
            -- that had not yet seen an operator's release is not stored (the row is
            -- simply checked again).
            INSERT INTO im1_held_verdicts (user_id, supplier, ods_code, reason, evidence, held_at)
            SELECT u.user_id, u.supplier, u.ods_code, v.held_reason, v.evidence::jsonb, $20
              FROM u JOIN v ON v.user_id = u.user_id
             WHERE v.held_reason IS NOT NULL
               AND EXISTS (SELECT 1 FROM im1_supplier_state s
                            WHERE s.supplier = u.supplier AND s.guard_held_since IS NOT NULL)
            ON CONFLICT ON CONSTRAINT im1_held_verdicts_pkey DO UPDATE
               SET reason = excluded.reason, evidence = excluded.evidence, held_at = excluded.held_at
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM u) AS "written!",
               (SELECT count(*) FROM e) AS "events!",
               (SELECT count(*) FROM n) AS "notified!",
               (SELECT count(*) FROM h) AS "held!",
               ARRAY(SELECT v.user_id FROM v WHERE v.user_id NOT IN (SELECT u.user_id FROM u)) AS "lost!"
        "#,
        &user_id,
        &fence,
        &cols.status,
        &cols.reason as &[Option<String>],
        &cols.refresh_required,
        &cols.refresh_attempts,
        &cols.refresh_suppressed_until as &[Option<DateTime<Utc>>],
        &cols.strike_at as &[Option<DateTime<Utc>>],
        &cols.strike_reason as &[Option<String>],
        &cols.last_checked_at as &[Option<DateTime<Utc>>],
        &cols.last_outcome as &[Option<String>],
        &cols.last_verified_at as &[Option<DateTime<Utc>>],
        &cols.invalidated_at as &[Option<DateTime<Utc>>],
        &cols.failures,
        &next_check_at,
        &from_status,
        &event,
        &notify,
        &evidence,
        now,
        kind.as_str(),
        &held as &[Option<String>],
    )
    .fetch_one(db)
    .await?;
    Ok(Written { written: row.written as u64, events: row.events as u64, held: row.held as u64, lost: row.lost })
}

/// Extends the leases of claims we still hold (heartbeat). Returns how many were extended.
pub async fn extend_leases(
    pool: &PgPool,
    claims: &[(String, i64)],
    owner: Uuid,
    lease_until: DateTime<Utc>,
) -> sqlx::Result<u64> {
    if claims.is_empty() {
        return Ok(0);
    }
    let (ids, fences): (Vec<String>, Vec<i64>) = claims.iter().cloned().unzip();
    let done = sqlx::query!(
        r#"
        WITH mine AS (
            -- Never wait: a row locked now is being written back (or replaced), and
            -- waiting here could deadlock with that writer.
            SELECT c.user_id
              FROM im1_credentials c
              JOIN UNNEST($1::text[], $2::int8[]) AS k(user_id, fence)
                ON c.user_id = k.user_id AND c.fence = k.fence
             WHERE c.lease_owner = $3
               FOR UPDATE OF c SKIP LOCKED
        )
        UPDATE im1_credentials c
           SET lease_expires_at = $4
          FROM mine
         WHERE c.user_id = mine.user_id
        "#,
        &ids,
        &fences,
        owner,
        lease_until,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Gives claims back without a verdict (shutdown): they are due again at once for anyone.
pub async fn release(pool: &PgPool, claims: &[(String, i64)], owner: Uuid) -> sqlx::Result<u64> {
    if claims.is_empty() {
        return Ok(0);
    }
    let (ids, fences): (Vec<String>, Vec<i64>) = claims.iter().cloned().unzip();
    let done = sqlx::query!(
        r#"
        UPDATE im1_credentials c
           SET lease_expires_at = NULL, lease_owner = NULL
          FROM UNNEST($1::text[], $2::int8[]) AS k(user_id, fence)
         WHERE c.user_id = k.user_id AND c.fence = k.fence AND c.lease_owner = $3
        "#,
        &ids,
        &fences,
        owner,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
