//! Sweep records: every sweep, from `run` or `sweep`, on any replica, writes one row, so
//! "last successful sweep" is the same answer everywhere.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::model::Supplier;

pub async fn start(
    pool: &PgPool,
    process: Uuid,
    trigger: &str,
    supplier: Option<Supplier>,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        "INSERT INTO im1_sweeps (process_id, trigger, supplier, started_at) VALUES ($1, $2, $3, $4) RETURNING id",
        process,
        trigger,
        supplier.map(|s| s.as_str()),
        now,
    )
    .fetch_one(pool)
    .await
}

pub async fn finish(
    pool: &PgPool,
    id: i64,
    now: DateTime<Utc>,
    succeeded: bool,
    checks: u64,
    outcomes: &serde_json::Value,
    error: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE im1_sweeps SET finished_at = $2, succeeded = $3, checks = $4, outcomes = $5, error = $6 WHERE id = $1",
        id,
        now,
        succeeded,
        checks as i64,
        outcomes,
        error,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The last successful sweep's start and finish, from any process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastSweep {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub checks: i64,
    pub trigger: String,
}

pub async fn last_success(pool: &PgPool) -> sqlx::Result<Option<LastSweep>> {
    sqlx::query_as!(
        LastSweep,
        r#"SELECT started_at, finished_at AS "finished_at!", checks, trigger
             FROM im1_sweeps
            WHERE succeeded AND finished_at IS NOT NULL
            ORDER BY finished_at DESC
            LIMIT 1"#
    )
    .fetch_optional(pool)
    .await
}
