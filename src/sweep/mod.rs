//! The runner: the one place with loops, concurrency, limits and write-back.
//!
//! A sweep claims due credentials in batches (one statement per batch), checks each with
//! its supplier's adapter under a concurrency limit and a per-check timeout, turns each
//! answer into a decision with [`crate::policy`], and writes decisions back in batches
//! (one statement per batch, fenced). A heartbeat extends the leases of claims still in
//! flight; on shutdown the runner stops claiming, lets in-flight checks finish within the
//! grace period, and gives back every claim it could not finish.

mod canary;
mod check;
pub mod schedule;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::clock::{SharedClock, delta};
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

    async fn run_pipeline(
        &self,
        suppliers: &[Supplier],
        due_by: DateTime<Utc>,
        dry_run: bool,
        priority_only: bool,
        mut shutdown: Shutdown,
    ) -> Result<SweepReport, (SweepReport, anyhow::Error)> {
        let batch = self.limits.batch_size.max(1);
        // Shared safety state first: this process is counted in every supplier's rate
        // share, and sees any open breaker or holding guard, before its first call.
        self.safety.set_read_only(dry_run);
        if let Err(e) = self.safety.join().await {
            tracing::warn!(error = %e, "could not read breaker, guard and rate-limit state; using the last view");
        }
        let (sync_stop, sync_stopped) = tokio::sync::oneshot::channel::<()>();
        let sync = (!self.background_sync.load(Ordering::Relaxed))
            .then(|| tokio::spawn(self.safety.clone().sync_loop(sync_stopped)));
        let gates = Arc::new(check::Gates::new(self.probe_canaries(suppliers, dry_run, priority_only).await));
        let ctx = Arc::new(check::Context::from_engine(self, gates.clone()));
        let in_flight: InFlight = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = mpsc::channel::<Done>(batch * 2);
        let writer = tokio::spawn(
            writer::Writer {
                pool: self.pool.clone(),
                clock: self.clock.clone(),
                metrics: self.metrics.clone(),
                in_flight: in_flight.clone(),
                batch,
                dry_run,
                max_changes: MAX_REPORTED_CHANGES,
                progress: self.progress.clone(),
            }
            .run(rx)
            .in_current_span(),
        );
        let (hb_stop, hb_stopped) = tokio::sync::oneshot::channel::<()>();
        let heartbeat = (!dry_run).then(|| {
            tokio::spawn(heartbeat(
                self.pool.clone(),
                self.clock.clone(),
                self.process_id,
                self.limits.lease,
                in_flight.clone(),
                hb_stopped,
            ))
        });

        // The window bounds rows held in memory (claimed, not yet handed to the writer):
        // a batch being checked, the next one claimed ahead so the checks never drain
        // while a claim runs, and the concurrency's worth in flight. `running` bounds
        // checks in flight.
        let window = Arc::new(Semaphore::new(self.limits.concurrency + 2 * batch));
        let running = Arc::new(Semaphore::new(self.limits.concurrency));
        let mut tasks = JoinSet::new();
        let mut active: Vec<Supplier> = suppliers.to_vec();
        let mut cursors: HashMap<Supplier, (DateTime<Utc>, String)> = HashMap::new();
        let mut turn = 0usize;
        let mut interrupted = false;
        let mut failure: Option<anyhow::Error> = None;

        while !active.is_empty() {
            let mut permits = tokio::select! {
                biased;
                _ = shutdown.wait() => { interrupted = true; break; }
                p = window.clone().acquire_many_owned(batch as u32) => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            // Priority requests first, up to half a batch (all of it in priority-only
            // mode), so an RP's login-time check jumps the queue without starving the
            // scheduled work. A dry run only reads, so it takes none.
            let now = self.clock.now();
            let lease_until = now + delta(self.limits.lease);
            let mut rows = Vec::new();
            // One span per claim batch (debug level: never built while tracing is off and
            // logs are at info); its checks are its children.
            let claim_span = tracing::debug_span!(
                "claim",
                supplier = tracing::field::Empty,
                priority_rows = tracing::field::Empty,
                rows = tracing::field::Empty,
            );
            if !dry_run {
                let limit = if priority_only { batch } else { (batch / 2).max(1) };
                match store::claims::claim_priority(
                    &self.pool,
                    suppliers,
                    now,
                    lease_until,
                    self.process_id,
                    limit as i64,
                )
                .instrument(claim_span.clone())
                .await
                {
                    Ok(claimed) => rows = claimed,
                    Err(e) => {
                        crate::telemetry::set_error(&claim_span, "claiming priority checks failed");
                        failure = Some(anyhow::Error::new(e).context("claiming priority checks"));
                        break;
                    }
                }
            }
            claim_span.record("priority_rows", rows.len());
            if priority_only {
                if rows.is_empty() {
                    break;
                }
            } else {
                let limit = batch - rows.len();
                let slot = turn % active.len();
                let supplier = active[slot];
                claim_span.record("supplier", supplier.as_str());

                // A supplier that said our configuration is wrong is claimed no more.
                let regular = if gates.is_stopped(supplier) {
                    Ok(Vec::new())
                } else if dry_run {
                    let after = cursors.get(&supplier).cloned();
                    store::claims::peek_due(&self.pool, supplier, due_by, after, limit as i64).await.map(|found| {
                        if let Some((last, at)) = found.last() {
                            cursors.insert(supplier, (*at, last.user_id.clone()));
                        }
                        found.into_iter().map(|(c, _)| c).collect::<Vec<_>>()
                    })
                } else {
                    let leases_seen_at = crate::defects::leases_seen_at(now);
                    store::claims::claim(
                        &self.pool,
                        supplier,
                        due_by,
                        leases_seen_at,
                        lease_until,
                        self.process_id,
                        limit as i64,
                    )
                    .instrument(claim_span.clone())
                    .await
                };
                match regular {
                    Ok(regular) => {
                        if regular.len() < limit {
                            active.remove(slot);
                        } else {
                            turn += 1;
                        }
                        rows.extend(regular);
                    }
                    Err(e) => {
                        crate::telemetry::set_error(&claim_span, "claiming credentials failed");
                        failure = Some(anyhow::Error::new(e).context(format!("claiming {supplier} credentials")));
                        break;
                    }
                }
            }
            claim_span.record("rows", rows.len());
            if !dry_run {
                let mut held = lock(&in_flight);
                for row in &rows {
                    held.insert(row.user_id.clone(), row.fence);
                }
            }
            for row in rows {
                let Some(permit) = permits.split(1) else { break };
                let ctx = ctx.clone();
                let running = running.clone();
                let tx = tx.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(
                    async move {
                        let done = ctx.run(row, running, shutdown).await;
                        // The window permit is held until the writer has the result.
                        let _ = tx.send(done).await;
                        drop(permit);
                    }
                    .instrument(claim_span.clone()),
                );
            }
            drop(permits);
            while let Some(joined) = tasks.try_join_next() {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "a check task failed");
                }
            }
        }
        if shutdown.is_triggered() {
            interrupted = true;
        }

        // Drain: without a shutdown, in-flight checks simply finish (each is bounded by
        // its timeout); once shutdown comes, whenever it comes, they have the grace period.
        let mut deadline = interrupted.then(|| tokio::time::Instant::now() + self.limits.shutdown_grace);
        loop {
            let joined = match deadline {
                None => tokio::select! {
                    joined = tasks.join_next() => joined,
                    _ = shutdown.wait() => {
                        interrupted = true;
                        deadline = Some(tokio::time::Instant::now() + self.limits.shutdown_grace);
                        continue;
                    }
                },
                Some(at) => match tokio::time::timeout_at(at, tasks.join_next()).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        tracing::warn!(left = tasks.len(), "shutdown grace ran out: giving back unfinished claims");
                        tasks.shutdown().await;
                        break;
                    }
                },
            };
            match joined {
                None => break,
                Some(Err(e)) => tracing::error!(error = %e, "a check task failed"),
                Some(Ok(())) => {}
            }
        }
        drop(tx);
        let mut report = match writer.await {
            Ok(Ok(report)) => report,
            Ok(Err((report, e))) => {
                failure.get_or_insert(e);
                report
            }
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("the write-back task failed: {e}"));
                SweepReport::default()
            }
        };
        let _ = hb_stop.send(());
        if let Some(hb) = heartbeat {
            let _ = hb.await;
        }
        // Whatever is still held was never written: give it back so others need not
        // wait for the lease to run out.
        let leftover: Vec<(String, i64)> = lock(&in_flight).drain().collect();
        if !leftover.is_empty() && !dry_run {
            match store::claims::release(&self.pool, &leftover, self.process_id).await {
                Ok(n) => report.released += n,
                Err(e) => {
                    tracing::warn!(error = %e, claims = leftover.len(), "could not give back claims; their leases will expire")
                }
            }
        }
        // The last counts of this run are flushed now, whoever runs the loop.
        let _ = sync_stop.send(());
        match sync {
            Some(sync) => {
                let _ = sync.await;
            }
            None => {
                if let Err(e) = self.safety.sync().await {
                    tracing::warn!(error = %e, "could not flush breaker and guard counts");
                }
            }
        }
        report.interrupted = interrupted;
        report.canary_failed = gates.canary_failed();
        report.stopped = gates.stopped();
        match failure {
            Some(e) => Err((report, e)),
            None => Ok(report),
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

/// Extends the leases of claims still in flight, every third of a lease.
async fn heartbeat(
    pool: PgPool,
    clock: SharedClock,
    owner: Uuid,
    lease: Duration,
    in_flight: InFlight,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let every = crate::defects::heartbeat_every((lease / 3).max(Duration::from_millis(500)));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
        let held: Vec<(String, i64)> = lock(&in_flight).iter().map(|(k, v)| (k.clone(), *v)).collect();
        let until = clock.now() + delta(lease);
        if let Err(e) = store::claims::extend_leases(&pool, &held, owner, until).await {
            tracing::warn!(error = %e, "could not extend leases");
        }
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
