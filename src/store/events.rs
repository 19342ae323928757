//! The audit trail's upkeep. The events table is partitioned by calendar month (UTC) of
//! `at` (migration `20261207120000_events_by_month`): retention drops each month that lies
//! wholly past `IM1_EVENT_RETENTION`, a catalogue change however many rows it held, and
//! deletes the older rows of the month the horizon falls in (and of the default partition)
//! in batches, so pruning never holds long locks or bloats one transaction. The months
//! ahead are created by the same upkeep; until they are, the default partition takes
//! their rows, so no insert ever fails for want of a partition.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Rows deleted per statement.
const PRUNE_BATCH: i64 = 10_000;
/// Months created ahead of the current one.
const MONTHS_AHEAD: i32 = 3;

/// What one prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rows in the monthly partitions dropped whole.
    pub dropped: u64,
    /// Rows deleted one batch at a time (the horizon's month and the default partition).
    pub deleted: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.dropped + self.deleted
    }
}

/// Creates the partitions of `now`'s month and the next three, moving into them any of
/// their rows the default partition took. A month whose lock cannot be had within two
/// seconds (a long import holds the table) is left for the next call; returns how many of
/// the four exist.
pub async fn ensure_months(pool: &PgPool, now: DateTime<Utc>) -> sqlx::Result<i32> {
    let made = sqlx::query_scalar!(r#"SELECT im1_events_ensure_months($1, $2) AS "made!""#, now, MONTHS_AHEAD)
        .fetch_one(pool)
        .await?;
    Ok(made)
}

/// Removes every event older than `before`.
pub async fn prune(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<Pruned> {
    let dropped = sqlx::query_scalar!(r#"SELECT im1_events_drop_months_before($1) AS "dropped!""#, before)
        .fetch_one(pool)
        .await?;
    let mut pruned = Pruned { dropped: dropped as u64, deleted: 0 };
    loop {
        let done = sqlx::query!(
            r#"DELETE FROM im1_credential_events
                WHERE (id, at) IN (SELECT id, at FROM im1_credential_events WHERE at < $1 ORDER BY at LIMIT $2)"#,
            before,
            PRUNE_BATCH,
        )
        .execute(pool)
        .await?;
        pruned.deleted += done.rows_affected();
        if done.rows_affected() < PRUNE_BATCH as u64 {
            return Ok(pruned);
        }
    }
}
