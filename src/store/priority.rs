//! Priority checks: an RP's request to check one credential now (the API's
//! `POST /v1/credentials/{user_id}/check`). Requests jump the queue: every claim round
//! takes pending priority requests first, up to half a batch, so scheduled work is never
//! starved; `run` also serves them between scheduled sweeps.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// Asks for a check of `user_id` now. Returns false when there is no such credential, or
/// it is never checked (Microtest). `trace_parent`: the asking request's span, which the
/// check will link to (the first request's, while one is pending).
pub async fn request<'e>(
    db: impl PgExecutor<'e>,
    user_id: &str,
    now: DateTime<Utc>,
    trace_parent: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        r#"UPDATE im1_credentials
              SET priority_requested_at = coalesce(priority_requested_at, $2),
                  priority_trace_parent = CASE WHEN priority_requested_at IS NULL THEN $3
                                               ELSE priority_trace_parent END
            WHERE user_id = $1 AND status <> 'unsupported'"#,
        user_id,
        now,
        trace_parent,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether a priority request for `user_id` is still waiting for its check.
pub async fn pending(pool: &PgPool, user_id: &str) -> sqlx::Result<bool> {
    let pending = sqlx::query_scalar!(
        r#"SELECT priority_requested_at IS NOT NULL AS "pending!" FROM im1_credentials WHERE user_id = $1"#,
        user_id,
    )
    .fetch_optional(pool)
    .await?;
    Ok(pending.unwrap_or(false))
}

/// Whether any priority request is waiting (cheap: reads the partial index).
pub async fn any_pending(pool: &PgPool) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM im1_credentials WHERE priority_requested_at IS NOT NULL) AS "any!""#
    )
    .fetch_one(pool)
    .await
}
