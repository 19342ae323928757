//! The write-back task: collects finished checks and writes them in batches (one
//! statement each, with events and notifications), retrying a failed write a few times
//! so a brief database outage loses nothing; an unwritten verdict's claim simply expires
//! and the credential is checked again, never half-written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::check::{Done, is_flagging};
use super::{InFlight, SweepReport, lock};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::model::Supplier;
use crate::store::claims::{self, Verdict};

/// A change a dry run would have written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub user_id: String,
    pub supplier: Supplier,
    pub from_status: String,
    pub to_status: String,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub refresh_required: bool,
    pub evidence: serde_json::Value,
}

pub(super) struct Writer {
    pub pool: PgPool,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub in_flight: InFlight,
    pub batch: usize,
    pub dry_run: bool,
    pub max_changes: usize,
    pub progress: Arc<AtomicU64>,
}

/// How long a partial batch waits for company before it is written.
const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// Attempts at one batch write before giving up on it.
const WRITE_ATTEMPTS: u32 = 4;
/// Batch writes in flight at once. Batches hold disjoint rows (each row is claimed by
/// one process and appears in one batch), so concurrent writes never contend; the
/// benchmark showed a single writer leaving PostgreSQL idle between statements.
const CONCURRENT_WRITES: usize = 3;

/// Verdicts waiting to be written, with each one's supplier and ODS code (for logs).
#[derive(Default)]
struct Pending {
    verdicts: Vec<Verdict>,
    context: Vec<(Supplier, String)>,
}

impl Pending {
    fn len(&self) -> usize {
        self.verdicts.len()
    }

    fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
    }
}
/// A finished batch write: the batch, and the users whose verdicts were dropped.
type WriteDone = (Pending, sqlx::Result<Vec<String>>);

impl Writer {
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Done>) -> Result<SweepReport, (SweepReport, anyhow::Error)> {
        let mut report = SweepReport::default();
        let mut pending = Pending::default();
        let mut writes: JoinSet<WriteDone> = JoinSet::new();
        let mut failure: Option<anyhow::Error> = None;
        loop {
            while let Some(done) = writes.try_join_next() {
                self.complete(done, &mut report, &mut failure);
            }
            let next = if pending.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(FLUSH_AFTER, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.flush(&mut pending, &mut writes, &mut report, &mut failure).await;
                        continue;
                    }
                }
            };
            match next {
                Some(Done::Verdict { verdict, supplier, ods_code }) => {
                    pending.verdicts.push(verdict);
                    pending.context.push((supplier, ods_code));
                    if pending.len() >= self.batch {
                        self.flush(&mut pending, &mut writes, &mut report, &mut failure).await;
                    }
                }
                // The claim stays in the in-flight set; the runner gives it back.
                Some(Done::Release { .. }) => {}
                None => break,
            }
        }
        self.flush(&mut pending, &mut writes, &mut report, &mut failure).await;
        while let Some(done) = writes.join_next().await {
            self.complete(done, &mut report, &mut failure);
        }
        match failure {
            Some(e) => Err((report, e)),
            None => Ok(report),
        }
    }

    /// Starts writing the pending batch, first waiting for a write slot.
    async fn flush(
        &self,
        pending: &mut Pending,
        writes: &mut JoinSet<WriteDone>,
        report: &mut SweepReport,
        failure: &mut Option<anyhow::Error>,
    ) {
        if pending.is_empty() {
            return;
        }
        let batch = std::mem::take(pending);
        if self.dry_run {
            self.complete(Ok((batch, Ok(Vec::new()))), report, failure);
            return;
        }
        while writes.len() >= CONCURRENT_WRITES {
            match writes.join_next().await {
                Some(done) => self.complete(done, report, failure),
                None => break,
            }
        }
        let (pool, clock) = (self.pool.clone(), self.clock.clone());
        // One span per write-back statement (debug level: never built while tracing is off
        // and logs are at info), a child of the sweep's.
        let span = tracing::debug_span!("write_back", rows = batch.len(), lost = tracing::field::Empty);
        writes.spawn(
            async move {
                let result = write(&pool, &clock, &batch.verdicts).await;
                let span = tracing::Span::current();
                match &result {
                    Ok(lost) => {
                        span.record("lost", lost.len());
                    }
                    Err(_) => crate::telemetry::set_error(&span, "writing verdicts failed"),
                }
                (batch, result)
            }
            .instrument(span),
        );
    }

    /// Books a finished write: drops the rows from the in-flight set, counts and logs.
    fn complete(
        &self,
        done: Result<WriteDone, tokio::task::JoinError>,
        report: &mut SweepReport,
        failure: &mut Option<anyhow::Error>,
    ) {
        let (batch, result) = match done {
            Ok(done) => done,
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("a write-back task failed: {e}"));
                return;
            }
        };
        let lost = match result {
            Ok(lost) => lost,
            Err(e) => {
                tracing::error!(error = %e, verdicts = batch.len(), "could not write verdicts; their claims will expire and be checked again");
                failure.get_or_insert(anyhow::Error::new(e).context("writing verdicts"));
                return;
            }
        };
        if !lost.is_empty() {
            self.metrics.leases_lost.inc_by(lost.len() as u64);
            report.leases_lost += lost.len() as u64;
            tracing::warn!(count = lost.len(), "verdicts dropped: claim lost or token replaced meanwhile");
        }
        {
            let mut held = lock(&self.in_flight);
            for v in &batch.verdicts {
                held.remove(&v.user_id);
            }
        }
        for (v, (supplier, ods_code)) in batch.verdicts.iter().zip(&batch.context) {
            if lost.contains(&v.user_id) {
                continue;
            }
            self.record(v, *supplier, ods_code, report);
        }
        self.progress.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }

    /// Counts, logs and (in a dry run) lists one written decision.
    fn record(&self, v: &Verdict, supplier: Supplier, ods_code: &str, report: &mut SweepReport) {
        let s = &v.decision.standing;
        report.checks += 1;
        let outcome = s.last_outcome.map_or("none", |o| o.as_str());
        *report.outcomes.entry(outcome.to_owned()).or_default() += 1;
        let status_changed = v.from_status != s.status;
        if status_changed {
            report.status_changes += 1;
            if !self.dry_run {
                self.metrics.status_change(supplier, s.status);
            }
        }
        if v.decision.notify && is_flagging(s.status, s.refresh_required) {
            report.newly_refresh_required += 1;
        }
        if !v.decision.event {
            return;
        }
        if self.dry_run {
            if report.changes.len() < self.max_changes {
                report.changes.push(Change {
                    user_id: v.user_id.clone(),
                    supplier,
                    from_status: v.from_status.as_str().to_owned(),
                    to_status: s.status.as_str().to_owned(),
                    outcome: s.last_outcome.map(|o| o.as_str().to_owned()),
                    reason: s.reason.map(|r| r.as_str().to_owned()),
                    refresh_required: s.refresh_required,
                    evidence: v.evidence.clone(),
                });
            }
            return;
        }
        tracing::info!(
            user_id = %v.user_id,
            supplier = %supplier,
            ods_code,
            from_status = %v.from_status,
            to_status = %s.status,
            outcome,
            reason = s.reason.map(|r| r.as_str()),
            refresh_required = s.refresh_required,
            evidence = %v.evidence,
            "credential standing changed"
        );
    }
}

/// One batch write, retried with backoff on database errors.
async fn write(pool: &PgPool, clock: &SharedClock, verdicts: &[Verdict]) -> sqlx::Result<Vec<String>> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match crate::defects::write_back(pool, verdicts, clock.now(), claims::WriteKind::Check).await {
            Ok(written) => return Ok(written.lost),
            Err(e) if attempt < WRITE_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "write-back failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
