//! Read-side queries: counts for `status` and metrics, single rows, and `recheck`.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use crate::model::Supplier;

/// Credentials per supplier and status, with how many of them need a refresh.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct StatusCount {
    pub supplier: String,
    pub status: String,
    pub count: i64,
    pub refresh_required: i64,
}

pub async fn counts(pool: &PgPool) -> sqlx::Result<Vec<StatusCount>> {
    sqlx::query_as!(
        StatusCount,
        r#"SELECT supplier AS "supplier!", status AS "status!", count(*) AS "count!",
                  count(*) FILTER (WHERE refresh_required) AS "refresh_required!"
             FROM im1_credentials
            GROUP BY supplier, status
            ORDER BY supplier, status"#
    )
    .fetch_all(pool)
    .await
}

/// Credentials checked but not confirmed valid for longer than `stale_before`: a practice
/// or supplier quietly failing. Per supplier.
pub async fn unverified(pool: &PgPool, stale_before: DateTime<Utc>) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT supplier AS "supplier!", count(*) AS "count!"
             FROM im1_credentials
            WHERE status <> 'unsupported'
              AND last_checked_at IS NOT NULL
              AND coalesce(last_verified_at, created_at) < $1
              AND status <> 'invalid'
            GROUP BY supplier"#,
        stale_before,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.supplier, r.count)).collect())
}

/// One user's row of the status view, as JSON-ready data.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct StatusRow {
    pub user_id: String,
    pub supplier: String,
    pub ods_code: String,
    pub status: String,
    pub reason: Option<String>,
    pub refresh_required: bool,
    pub refresh_attempts: i32,
    pub refresh_suppressed_until: Option<DateTime<Utc>>,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    pub last_verified_at: Option<DateTime<Utc>>,
    pub invalidated_at: Option<DateTime<Utc>>,
    pub next_check_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn row(pool: &PgPool, user_id: &str) -> sqlx::Result<Option<StatusRow>> {
    sqlx::query_as!(
        StatusRow,
        r#"SELECT user_id AS "user_id!", supplier AS "supplier!", ods_code AS "ods_code!",
                  status AS "status!", reason, refresh_required AS "refresh_required!",
                  refresh_attempts AS "refresh_attempts!", refresh_suppressed_until,
                  last_checked_at, last_outcome, last_verified_at, invalidated_at,
                  next_check_at AS "next_check_at!", updated_at AS "updated_at!"
             FROM im1_credential_status
            WHERE user_id = $1"#,
        user_id,
    )
    .fetch_optional(pool)
    .await
}

/// Which credentials `recheck` makes due.
#[derive(Debug, Clone, Default)]
pub struct RecheckFilter {
    pub supplier: Option<Supplier>,
    pub user_id: Option<String>,
}

/// Makes the chosen credentials due now (an operator may undercut a Retry-After).
pub async fn recheck<'e>(db: impl PgExecutor<'e>, filter: &RecheckFilter, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"UPDATE im1_credentials
              SET next_check_at = $3
            WHERE status <> 'unsupported'
              AND ($1::text IS NULL OR supplier = $1)
              AND ($2::text IS NULL OR user_id = $2)
              AND next_check_at > $3"#,
        filter.supplier.map(|s| s.as_str()),
        filter.user_id.as_deref(),
        now,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
