//! Planted defects, so the fault suite (`tests/chaos`) can prove it catches a breach: each
//! scenario is also run once with its defect switched on and must report it. Compiled only
//! into debug builds (`cfg(debug_assertions)`): a release binary contains none of this and
//! ignores the variable.
//!
//! Switched on by `CHAOS_PLANTED_DEFECT` (deliberately not an `IM1_*` setting).

/// A defect the fault suite can plant, each the kind of mistake one of its scenarios exists
/// to catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// Claims ignore other processes' leases (`ignore-leases`): credentials are checked
    /// again while another process holds them.
    IgnoreLeases,
    /// A 503 counts as an explicit rejection (`503-is-invalid`): an outage flags users.
    ServiceUnavailableIsInvalid,
    /// A request that timed out counts as a rejection (`timeout-is-invalid`): a hung
    /// supplier flags users.
    TimeoutIsInvalid,
    /// A connection that failed (refused, reset) counts as a rejection (`reset-is-invalid`).
    ResetIsInvalid,
    /// Retries inside a check ignore `Retry-After` (`ignore-retry-after`): a rate-limited
    /// supplier is called again sooner than it asked.
    IgnoreRetryAfter,
    /// Claims are never extended while their checks run (`no-lease-heartbeat`): slow
    /// answers outlive the lease and another process checks the same credential.
    NoLeaseHeartbeat,
    /// `run` exits when a sweep fails on the database (`exit-on-database-error`) instead of
    /// trying again at the next fire.
    ExitOnDatabaseError,
    /// Events are written after the status change, in a transaction of their own that
    /// lingers (`events-after-commit`): a connection lost in between leaves a change
    /// without its event.
    EventsAfterCommit,
    /// SIGTERM ends the process at once (`abrupt-shutdown`): checks in flight are
    /// abandoned unwritten and their claims left to expire.
    AbruptShutdown,
    /// `/readyz` answers ready without asking the database (`ready-without-database`).
    ReadyWithoutDatabase,
}

impl Defect {
    pub fn name(self) -> &'static str {
        match self {
            Defect::IgnoreLeases => "ignore-leases",
            Defect::ServiceUnavailableIsInvalid => "503-is-invalid",
            Defect::TimeoutIsInvalid => "timeout-is-invalid",
            Defect::ResetIsInvalid => "reset-is-invalid",
            Defect::IgnoreRetryAfter => "ignore-retry-after",
            Defect::NoLeaseHeartbeat => "no-lease-heartbeat",
            Defect::ExitOnDatabaseError => "exit-on-database-error",
            Defect::EventsAfterCommit => "events-after-commit",
            Defect::AbruptShutdown => "abrupt-shutdown",
            Defect::ReadyWithoutDatabase => "ready-without-database",
        }
    }
}

/// Whether `defect` is planted in this process.
#[cfg(debug_assertions)]
pub fn planted(defect: Defect) -> bool {
    static PLANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PLANTED.get_or_init(|| std::env::var("CHAOS_PLANTED_DEFECT").ok()).as_deref() == Some(defect.name())
}

/// Release builds have no planted defects.
#[cfg(not(debug_assertions))]
pub fn planted(_defect: Defect) -> bool {
    false
}

/// `events-after-commit`: the events of a batch whose status changes were written (and
/// committed) without them, in a transaction of their own held open a while, with any
/// failure ignored. Exactly what the write-back must never do.
pub async fn write_events_late(pool: sqlx::PgPool, users: Vec<String>, from_status: Vec<String>) {
    let late = async {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_sleep(0.3)").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO im1_credential_events
                    (user_id, supplier, ods_code, at, kind, from_status, to_status, outcome,
                     reason, refresh_required, evidence)
             SELECT c.user_id, c.supplier, c.ods_code, now(), 'check', v.from_status, c.status,
                    c.last_outcome, c.reason, c.refresh_required, '{}'::jsonb
               FROM im1_credentials c
               JOIN UNNEST($1::text[], $2::text[]) AS v(user_id, from_status) USING (user_id)",
        )
        .bind(&users)
        .bind(&from_status)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    };
    if let Err(e) = late.await {
        tracing::debug!(error = %e, "planted defect: late events lost");
    }
}
