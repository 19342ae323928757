//! The audit trail's upkeep: rows older than `IM1_EVENT_RETENTION` are deleted in
//! batches, so pruning never holds long locks or bloats one transaction.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Rows deleted per statement.
const PRUNE_BATCH: i64 = 10_000;

/// Deletes events older than `before`; returns how many.
pub async fn prune(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let done = sqlx::query!(
            r#"DELETE FROM im1_credential_events
                WHERE id IN (SELECT id FROM im1_credential_events WHERE at < $1 ORDER BY at LIMIT $2)"#,
            before,
            PRUNE_BATCH,
        )
        .execute(pool)
        .await?;
        total += done.rows_affected();
        if done.rows_affected() < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}
