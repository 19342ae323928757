//! One sweep's pipeline: claim due credentials in batches, check each under the concurrency
//! limit and the per-check timeout, and write decisions back in batches, while a heartbeat
//! extends the leases of claims still in flight. [`Engine::sweep`] and
//! [`Engine::sweep_priority`] run it; on shutdown it stops claiming, lets in-flight checks
//! finish within the grace period and gives back every claim it could not finish.
//! One function, long because each stage's channel, task and shutdown arm reads best in
//! the order they run.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use super::{Done, Engine, InFlight, MAX_REPORTED_CHANGES, SweepReport, check, lock, writer};
use crate::clock::{SharedClock, delta};
use crate::model::Supplier;
use crate::shutdown::Shutdown;
use crate::store;

impl Engine {
    pub(super) async fn run_pipeline(
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
