//! Planted defects, so the fault suite (`tests/chaos`) can prove it catches a breach: each
//! scenario is also run once with its defect switched on and must report it.
//!
//! This module is the one seam between them and production code. Production code never
//! asks whether a defect is planted; at the few points a defect would change something it
//! passes its own value through a hook below and uses what comes back:
//!
//! | hook                   | caller                               | defect                     |
//! |------------------------|--------------------------------------|----------------------------|
//! | [`readiness`]          | `admin::readyz`                      | `ready-without-database`   |
//! | [`on_sigterm`]         | `shutdown::listen`                   | `abrupt-shutdown`          |
//! | [`leases_seen_at`]     | `sweep` claim loop                   | `ignore-leases`            |
//! | [`heartbeat_every`]    | `sweep::heartbeat`                   | `no-lease-heartbeat`       |
//! | [`write_back`]         | `sweep::writer::write`               | `events-after-commit`      |
//! | [`after_failed_sweep`] | `sweep::schedule`                    | `exit-on-database-error`   |
//! | [`retry_after`]        | `safety::retry`                      | `ignore-retry-after`       |
//! | [`unlisted_answer`]    | `suppliers::transient_for`           | `503-is-invalid`           |
//! | [`transport_failure`]  | `suppliers::Answer::from_transport`  | `timeout-is-invalid`, `reset-is-invalid` |
//!
//! In a release build (`cfg(not(debug_assertions))`) every hook is the identity (or does
//! nothing), the defects themselves are not compiled, and `CHAOS_PLANTED_DEFECT` is
//! ignored. In a debug build a hook changes its value only when the variable names its
//! defect (deliberately not an `IM1_*` setting).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::model::Outcome;
use crate::store::claims::{self, Verdict, WriteKind, Written};

/// `ready-without-database`: `/readyz` answers ready without asking the database.
pub async fn readiness<E>(check: impl Future<Output = Result<bool, E>>) -> Result<bool, E> {
    #[cfg(debug_assertions)]
    if planted(Defect::ReadyWithoutDatabase) {
        return Ok(true);
    }
    check.await
}

/// `abrupt-shutdown`: SIGTERM ends the process at once, skipping the graceful path.
pub fn on_sigterm() {
    #[cfg(debug_assertions)]
    if planted(Defect::AbruptShutdown) {
        std::process::exit(0);
    }
}

/// `ignore-leases`: the moment leases are judged at, far enough ahead that every lease
/// looks expired.
pub fn leases_seen_at(now: DateTime<Utc>) -> DateTime<Utc> {
    #[cfg(debug_assertions)]
    if planted(Defect::IgnoreLeases) {
        return now + chrono::TimeDelta::days(3650);
    }
    now
}

/// `no-lease-heartbeat`: how often leases are extended; never, when planted (the
/// heartbeat then sleeps until it is stopped).
pub fn heartbeat_every(every: Duration) -> Duration {
    #[cfg(debug_assertions)]
    if planted(Defect::NoLeaseHeartbeat) {
        return Duration::from_secs(100 * 365 * 24 * 3600);
    }
    every
}

/// `events-after-commit`: a batch's write-back. Production writes changes and their
/// events in one transaction ([`claims::write_back`]); the defect writes the changes
/// without their events, then the events in a lingering transaction of their own.
pub async fn write_back(
    pool: &PgPool,
    verdicts: &[Verdict],
    now: DateTime<Utc>,
    kind: WriteKind,
) -> sqlx::Result<Written> {
    #[cfg(debug_assertions)]
    if planted(Defect::EventsAfterCommit) {
        return write_back_events_late(pool, verdicts, now, kind).await;
    }
    claims::write_back(pool, verdicts, now, kind).await
}

/// `exit-on-database-error`: called after a scheduled sweep failed; the defect exits
/// instead of trying again at the next fire.
pub fn after_failed_sweep() {
    #[cfg(debug_assertions)]
    if planted(Defect::ExitOnDatabaseError) {
        std::process::exit(1);
    }
}

/// `ignore-retry-after`: the supplier's `Retry-After` as a retry inside a check sees it;
/// forgotten, when planted.
pub fn retry_after(after: Option<Duration>) -> Option<Duration> {
    #[cfg(debug_assertions)]
    if planted(Defect::IgnoreRetryAfter) {
        return None;
    }
    after
}

/// `503-is-invalid`: the outcome of an unlisted answer with this HTTP status; a 503
/// counts as an explicit rejection, when planted.
pub fn unlisted_answer(status: u16, outcome: Outcome) -> Outcome {
    #[cfg(debug_assertions)]
    if status == 503 && planted(Defect::ServiceUnavailableIsInvalid) {
        return Outcome::Invalid(crate::model::Reason::TokenRejected);
    }
    let _ = status;
    outcome
}

/// `timeout-is-invalid` and `reset-is-invalid`: the outcome of a request that got no
/// answer, named by its evidence label (`timeout`, `connect`, `transport`, ...): a
/// timeout, or a connection refused or reset, counts as a rejection when planted.
pub fn transport_failure(failure: &str, outcome: Outcome) -> Outcome {
    #[cfg(debug_assertions)]
    {
        let defect = match failure {
            "timeout" => Some(Defect::TimeoutIsInvalid),
            "connect" | "transport" => Some(Defect::ResetIsInvalid),
            _ => None,
        };
        if defect.is_some_and(planted) {
            return Outcome::Invalid(crate::model::Reason::TokenRejected);
        }
    }
    let _ = failure;
    outcome
}

/// A defect the fault suite can plant, each the kind of mistake one of its scenarios exists
/// to catch.
#[cfg(debug_assertions)]
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

#[cfg(debug_assertions)]
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
fn planted(defect: Defect) -> bool {
    static PLANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PLANTED.get_or_init(|| std::env::var("CHAOS_PLANTED_DEFECT").ok()).as_deref() == Some(defect.name())
}

/// The `events-after-commit` write-back: the changes without their events, then the
/// events in a lingering transaction of their own, spawned, with any failure ignored.
/// Exactly what the write-back must never do.
#[cfg(debug_assertions)]
async fn write_back_events_late(
    pool: &PgPool,
    verdicts: &[Verdict],
    now: DateTime<Utc>,
    kind: WriteKind,
) -> sqlx::Result<Written> {
    let mut quiet = verdicts.to_vec();
    quiet.iter_mut().for_each(|v| v.decision.event = false);
    let written = claims::write_back(pool, &quiet, now, kind).await?;
    let (users, from): (Vec<String>, Vec<String>) = verdicts
        .iter()
        .filter(|v| v.decision.event && !written.lost.contains(&v.user_id))
        .map(|v| (v.user_id.clone(), v.from_status.as_str().to_owned()))
        .unzip();
    tokio::spawn(write_events_late(pool.clone(), users, from));
    Ok(written)
}

/// The late events of `write_back_events_late`, written after a pause.
#[cfg(debug_assertions)]
async fn write_events_late(pool: sqlx::PgPool, users: Vec<String>, from_status: Vec<String>) {
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
