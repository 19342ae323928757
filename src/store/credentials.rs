//! One credential at a time, for the RP API: a reported refresh outcome (the loop guard
//! counts it) and erasure. Each change, its event row and its notification are written in
//! one transaction, like the sweep's write-back and import.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::policy::{self, Rules};

/// What a reported refresh outcome did to a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshCounted {
    pub status: String,
    pub refresh_required: bool,
    pub refresh_attempts: i32,
    /// A NOTIFY was sent: the status or `refresh_required` changed.
    pub notified: bool,
}

/// Counts one refresh attempt that gave nothing usable (`outcome` is the RP's word for
/// it, recorded as evidence). Returns `None` for an unknown user.
///
/// The row is locked, the loop guard applied ([`policy::refresh_failed`]), and the new
/// standing written with an event (kind `refresh_outcome`) and, when the status or
/// `refresh_required` changed, a NOTIFY. The fencing token is bumped and any lease
/// cleared, so a check in flight cannot write its older standing over this count; the
/// row stays due, so that check is simply made again.
pub async fn refresh_outcome(
    pool: &PgPool,
    user_id: &str,
    outcome: &str,
    rules: &Rules,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<RefreshCounted>> {
    let mut tx = pool.begin().await?;
    let Some(r) = sqlx::query!(
        r#"
        SELECT status, reason, refresh_required, refresh_attempts, refresh_suppressed_until,
               strike_at, strike_reason, last_checked_at, last_outcome, last_verified_at,
               invalidated_at, failures
          FROM im1_credentials
         WHERE user_id = $1
           FOR UPDATE
        "#,
        user_id,
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let old = standing_row!(r).into_standing();
    let new = policy::refresh_failed(&old, now, rules);
    let notify = old.status != new.status || old.refresh_required != new.refresh_required;
    sqlx::query!(
        r#"
        WITH u AS (
            UPDATE im1_credentials c
               SET status = $2,
                   reason = $3,
                   refresh_required = $4,
                   refresh_attempts = $5,
                   refresh_suppressed_until = $6,
                   lease_expires_at = NULL,
                   lease_owner = NULL,
                   fence = c.fence + 1,
                   updated_at = $7
             WHERE c.user_id = $1
            RETURNING c.user_id, c.supplier, c.ods_code, c.status, c.reason, c.refresh_required,
                      c.refresh_attempts
        ),
        e AS (
            INSERT INTO im1_credential_events
                   (user_id, supplier, ods_code, at, kind, from_status, to_status, outcome,
                    reason, refresh_required, evidence)
            SELECT u.user_id, u.supplier, u.ods_code, $7, 'refresh_outcome', $8, u.status, NULL,
                   u.reason, u.refresh_required,
                   jsonb_build_object('outcome', $9::text, 'refresh_attempts', u.refresh_attempts)
              FROM u
            RETURNING 1
        ),
        n AS (
            SELECT pg_notify('im1_credential_status',
                             json_build_object('user_id', u.user_id, 'status', u.status,
                                               'refresh_required', u.refresh_required)::text)
              FROM u
             WHERE $10
        )
        SELECT (SELECT count(*) FROM u) AS "written!", (SELECT count(*) FROM e) AS "events!",
               (SELECT count(*) FROM n) AS "notified!"
        "#,
        user_id,
        new.status.as_str(),
        new.reason.map(|r| r.as_str()),
        new.refresh_required,
        new.refresh_attempts,
        new.refresh_suppressed_until,
        now,
        old.status.as_str(),
        outcome,
        notify,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(RefreshCounted {
        status: new.status.as_str().to_owned(),
        refresh_required: new.refresh_required,
        refresh_attempts: new.refresh_attempts,
        notified: notify,
    }))
}

/// Erasure: deletes the user's credential (the encrypted token goes with the row) and
/// appends an `erasure` event naming the status it had, in one statement. Returns false
/// when there was nothing to erase (erasure is idempotent). Earlier event rows are kept
/// (they never hold a token) until retention prunes them.
pub async fn erase(pool: &PgPool, user_id: &str, now: DateTime<Utc>) -> sqlx::Result<bool> {
    let row = sqlx::query!(
        r#"
        WITH d AS (
            DELETE FROM im1_credentials
             WHERE user_id = $1
            RETURNING user_id, supplier, ods_code, status
        ),
        e AS (
            INSERT INTO im1_credential_events
                   (user_id, supplier, ods_code, at, kind, from_status, to_status, outcome,
                    reason, refresh_required, evidence)
            SELECT d.user_id, d.supplier, d.ods_code, $2, 'erasure', d.status, d.status, NULL,
                   NULL, false, jsonb_build_object('erased', true)
              FROM d
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM d) AS "erased!", (SELECT count(*) FROM e) AS "events!"
        "#,
        user_id,
        now,
    )
    .fetch_one(pool)
    .await?;
    Ok(row.erased > 0)
}
