//! The runner: the one place with loops, concurrency, limits and write-back.
//!
//! A sweep claims due credentials in batches (one statement per batch), checks each with
//! its supplier's adapter under a concurrency limit and a per-check timeout, turns each
//! answer into a decision with [`crate::policy`], and writes decisions back in batches
//! (one statement per batch, fenced). A heartbeat extends the leases of claims still in
//! flight; on shutdown the runner stops claiming, lets in-flight checks finish within the
//! grace period, and gives back every claim it could not finish.
//!
//! Layout: this file holds the [`Engine`], what a sweep is asked and what it reports;
//! `pipeline` runs one sweep (claim, check, write back, heartbeat), `check` one credential
//! through the gates, `writer` the fenced write-back, `canary` the canary probes first in a
//! sweep, and [`schedule`] the cron loop of `run`.

mod canary;
mod check;
mod pipeline;
pub mod schedule;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::crypto::Keyring;
use crate::metrics::Metrics;
use crate::model::Supplier;
use crate::policy::Rules;
use crate::shutdown::Shutdown;
use crate::store;
use crate::suppliers::Adapter;

pub use check::{Done, Gates};
pub use writer::Change;

/// Limits a sweep runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Checks in flight at once (`IM1_CONCURRENCY`).
    pub concurrency: usize,
    /// Rows per claim and per write-back statement.
    pub batch_size: usize,
    /// How long a claim blocks others if we die (`IM1_LEASE`).
    pub lease: Duration,
    /// One whole check (`IM1_CHECK_TIMEOUT`).
    pub check_timeout: Duration,
    /// How long in-flight checks may finish after shutdown (`IM1_SHUTDOWN_GRACE`).
    pub shutdown_grace: Duration,
}

/// Everything a sweep needs, built once per process and shared by every sweep.
pub struct Engine {
    pub pool: PgPool,
    pub clock: SharedClock,
    pub keys: Arc<Keyring>,
    pub adapters: HashMap<Supplier, Arc<dyn Adapter>>,
    pub metrics: Arc<Metrics>,
    /// Rate limits, breaker and guard, shared with the other live processes.
    pub safety: Arc<crate::safety::Safety>,
    /// Retries inside one check.
    pub retry: crate::safety::retry::RetryPolicy,
    pub rules: Rules,
    pub limits: Limits,
    /// This process's id: the lease owner of its claims, and its sweeps' recorder.
    pub process_id: Uuid,
    /// Checks completed by the running sweep, for progress displays and liveness.
    pub progress: Arc<AtomicU64>,
    /// The last canary results, reused briefly by priority-only runs.
    pub canaries: canary::Cache,
    /// Set when the process runs its own sync loop for its whole life (`run`), so sweeps
    /// need not start one.
    pub background_sync: std::sync::atomic::AtomicBool,
}

/// What starts a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Command,
    Demo,
    Bench,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Command => "command",
            Trigger::Demo => "demo",
            Trigger::Bench => "bench",
        }
    }
}

/// One sweep's request.
#[derive(Debug, Clone, Copy)]
pub struct SweepRequest {
    pub supplier: Option<Supplier>,
    pub dry_run: bool,
    pub trigger: Trigger,
}

/// What a sweep did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SweepReport {
    pub started_at: Option<DateTime<Utc>>,
    pub checks: u64,
    /// Checks per `last_outcome` (valid, suspect, invalid, transient, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Status changes written (or, in a dry run, that would be).
    pub status_changes: u64,
    /// Users newly flagged `refresh_required`.
    pub newly_refresh_required: u64,
    /// Verdicts dropped because the claim was lost or the token replaced meanwhile.
    pub leases_lost: u64,
    /// Claims given back unchecked at shutdown.
    pub released: u64,
    /// The sweep stopped early because shutdown was requested.
    pub interrupted: bool,
    /// Suppliers whose canary failed at the start: their rows were skipped.
    pub canary_failed: Vec<Supplier>,
    /// Suppliers stopped mid-sweep because they said our configuration is wrong.
    pub stopped: Vec<Supplier>,
    /// In a dry run: the changes that would have been written (the first 1,000).
    pub changes: Vec<Change>,
    pub seconds: f64,
}

/// Longest list of dry-run changes kept in a report.
const MAX_REPORTED_CHANGES: usize = 1000;

impl Engine {
    /// Suppliers this sweep covers: the configured ones, narrowed by the request.
    pub fn suppliers_for(&self, request: &SweepRequest) -> Vec<Supplier> {
        let mut suppliers: Vec<Supplier> = self.adapters.keys().copied().collect();
        suppliers.sort();
        suppliers.retain(|s| request.supplier.is_none_or(|only| only == *s));
        suppliers
    }

    /// One pass over every credential due when the sweep starts.
    ///
    /// Returns an error only for database failures; supplier trouble is in the report.
    #[tracing::instrument(
        skip_all,
        fields(
            trigger = request.trigger.as_str(),
            supplier = ?request.supplier,
            dry_run = request.dry_run,
            checks = tracing::field::Empty,
            status_changes = tracing::field::Empty,
            newly_refresh_required = tracing::field::Empty,
            leases_lost = tracing::field::Empty,
            released = tracing::field::Empty,
            result = tracing::field::Empty,
        )
    )]
    pub async fn sweep(&self, request: SweepRequest, shutdown: Shutdown) -> anyhow::Result<SweepReport> {
        let started = Instant::now();
        let due_by = self.clock.now();
        let suppliers = self.suppliers_for(&request);
        let sweep_id = if request.dry_run {
            None
        } else {
            Some(
                store::sweeps::start(&self.pool, self.process_id, request.trigger.as_str(), request.supplier, due_by)
                    .await
                    .context("recording the sweep's start")?,
            )
        };
        tracing::info!(suppliers = ?suppliers, "sweep started");
        self.progress.store(0, Ordering::Relaxed);

        let result = self.run_pipeline(&suppliers, due_by, request.dry_run, false, shutdown).await;
        let seconds = started.elapsed().as_secs_f64();

        let (mut report, error) = match result {
            Ok(report) => (report, None),
            Err((report, e)) => (report, Some(e)),
        };
        report.started_at = Some(due_by);
        report.seconds = seconds;
        let succeeded = error.is_none() && !report.interrupted;
        if let Some(id) = sweep_id {
            let outcomes = serde_json::to_value(&report.outcomes).unwrap_or_default();
            let error_text = match (&error, report.interrupted) {
                (Some(e), _) => Some(format!("{e:#}")),
                (None, true) => Some("interrupted by shutdown".to_owned()),
                (None, false) => None,
            };
            // Recording the end is best effort when the database itself was the failure.
            let finish = store::sweeps::finish(
                &self.pool,
                id,
                self.clock.now(),
                succeeded,
                report.checks,
                &outcomes,
                error_text.as_deref(),
            )
            .await;
            if let Err(e) = finish {
                tracing::warn!(error = %e, "could not record the sweep's end");
            }
            self.metrics.sweep_duration.observe(seconds);
        }
        let result_label = if error.is_some() {
            "failed"
        } else if report.interrupted {
            "interrupted"
        } else {
            "completed"
        };
        self.metrics
            .sweeps
            .get_or_create(&crate::metrics::OutcomeLabels {
                supplier: request.supplier.map_or("all", |s| s.as_str()).to_owned(),
                outcome: result_label.to_owned(),
            })
            .inc();
        record_report(&tracing::Span::current(), &report, result_label, error.as_ref());
        tracing::info!(
            checks = report.checks,
            outcomes = ?report.outcomes,
            status_changes = report.status_changes,
            leases_lost = report.leases_lost,
            released = report.released,
            seconds,
            result = result_label,
            "sweep finished"
        );
        match error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Checks every credential an RP asked to have checked now (`POST …/check`), then
    /// returns. `run` calls this between scheduled sweeps; a sweep also takes pending
    /// requests first in every claim round.
    #[tracing::instrument(level = "debug", name = "priority_sweep", skip_all, fields(checks = tracing::field::Empty))]
    pub async fn sweep_priority(&self, shutdown: Shutdown) -> anyhow::Result<SweepReport> {
        let suppliers = self.suppliers_for(&SweepRequest { supplier: None, dry_run: false, trigger: Trigger::Command });
        match self.run_pipeline(&suppliers, self.clock.now(), false, true, shutdown).await {
            Ok(report) => {
                tracing::Span::current().record("checks", report.checks);
                if report.checks > 0 {
                    tracing::info!(checks = report.checks, outcomes = ?report.outcomes, "priority checks done");
                }
                Ok(report)
            }
            Err((_, e)) => Err(e),
        }
    }
}

/// The sweep's counts on its span, and its status: an error when it failed (the
/// description is the error's outermost context, which names no user) or was interrupted.
fn record_report(span: &tracing::Span, report: &SweepReport, result: &str, error: Option<&anyhow::Error>) {
    span.record("checks", report.checks);
    span.record("status_changes", report.status_changes);
    span.record("newly_refresh_required", report.newly_refresh_required);
    span.record("leases_lost", report.leases_lost);
    span.record("released", report.released);
    span.record("result", result);
    if span.is_disabled() {
        return;
    }
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    for (outcome, n) in &report.outcomes {
        span.set_attribute(format!("outcomes.{outcome}"), *n as i64);
    }
    match error {
        Some(e) => crate::telemetry::set_error(span, &e.to_string()),
        None if report.interrupted => crate::telemetry::set_error(span, "interrupted by shutdown"),
        None => {}
    }
}

/// Claims this process holds and has not written back: user id → fence.
pub(crate) type InFlight = Arc<Mutex<HashMap<String, i64>>>;

/// Locks a mutex that no code path poisons (no panics while held); a poisoned one is
/// still usable because every critical section leaves the map consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The verdict rules the settings ask for (`IM1_RECHECK_INTERVAL`, `IM1_CONFIRM_AFTER`,
/// `IM1_MAX_REFRESH_ATTEMPTS`, `IM1_REFRESH_SUPPRESSION`), for the sweep and for every
/// action outside it that judges a credential (release, the API, the console).
pub fn rules(settings: &crate::config::Settings) -> Rules {
    Rules::new(
        settings.recheck_interval,
        settings.confirm_after,
        settings.max_refresh_attempts,
        settings.refresh_suppression,
    )
}
