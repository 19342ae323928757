//! The `run` loop: `select!{ sleep_until(next fire), shutdown }`, one sweep at a time,
//! never overlapping. Fire times come from the cron expression in `IM1_TIMEZONE`
//! (croner, so daylight-saving changes neither skip nor double a run).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Schedule;
use crate::shutdown::Shutdown;

use super::{Engine, SweepRequest, Trigger};

/// Proof of life for `/healthz`: the scheduler loop and running sweeps tick it.
#[derive(Debug)]
pub struct Liveness {
    started: Instant,
    last_tick_ms: AtomicI64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { started: Instant::now(), last_tick_ms: AtomicI64::new(0) }
    }
}

impl Liveness {
    pub fn tick(&self) {
        self.last_tick_ms.store(self.started.elapsed().as_millis() as i64, Ordering::Relaxed);
    }

    /// The loop ticked within `within`.
    pub fn alive(&self, within: Duration) -> bool {
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as i64;
        now - last <= within.as_millis() as i64
    }
}

/// How often the idle loop wakes to prove it is alive.
const TICK: Duration = Duration::from_secs(5);
/// How often the idle loop looks for RP-requested priority checks (one index-only query on
/// an almost always empty partial index): a login-time check waits at most this long.
const PRIORITY_POLL: Duration = Duration::from_millis(250);
/// How often old event rows are pruned (every replica may; the deletes are idempotent).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Creates the event partitions of this month and the next three, then removes event rows
/// older than the retention (whole months dropped, the rest deleted in batches); failures
/// are logged, never fatal.
pub async fn prune_events(engine: &Engine, retention: Duration) {
    let now = engine.clock.now();
    if let Err(e) = crate::store::events::ensure_months(&engine.pool, now).await {
        tracing::warn!(error = %e, "could not create the coming months' event partitions");
    }
    let before = now - crate::clock::delta(retention);
    match crate::store::events::prune(&engine.pool, before).await {
        Ok(pruned) if pruned.total() == 0 => {}
        Ok(pruned) => tracing::info!(
            deleted = pruned.total(),
            in_dropped_months = pruned.dropped,
            deleted_by_row = pruned.deleted,
            "pruned event rows past IM1_EVENT_RETENTION"
        ),
        Err(e) => tracing::warn!(error = %e, "could not prune old event rows"),
    }
    // Window counts and dead processes' heartbeat rows outlive every window by an hour.
    let config = engine.safety.config();
    let longest = config.breaker.window.max(config.guard.window) + Duration::from_secs(3600);
    let before = engine.clock.now() - crate::clock::delta(longest);
    if let Err(e) = crate::store::safety::prune(&engine.pool, before).await {
        tracing::warn!(error = %e, "could not prune old breaker and guard counts");
    }
}

/// Sweeps on `schedule` until `shutdown`. A failed sweep (database down) is logged and the
/// loop carries on: the next fire tries again.
pub async fn run(
    engine: Arc<Engine>,
    schedule: Schedule,
    tz: chrono_tz::Tz,
    event_retention: Duration,
    liveness: Arc<Liveness>,
    mut shutdown: Shutdown,
) {
    liveness.tick();
    let mut last_prune: Option<Instant> = None;
    if matches!(schedule, Schedule::Off) {
        tracing::info!("IM1_SCHEDULE=off: serving the admin port without sweeping");
        engine.metrics.next_sweep.set(0.0);
    }
    loop {
        let now = engine.clock.now();
        let next = schedule.next_after(now, tz);
        if let Some(next) = next {
            engine.metrics.next_sweep.set(next.timestamp_millis() as f64 / 1000.0);
        }
        // Sleep towards the next fire in short steps, ticking liveness on each and serving
        // priority checks between sweeps.
        let wait = next.map_or(TICK, |next| (next - now).to_std().unwrap_or(Duration::ZERO).min(TICK));
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(wait.min(PRIORITY_POLL)) => {}
        }
        liveness.tick();
        serve_priority(&engine, &shutdown).await;
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            prune_events(&engine, event_retention).await;
        }
        let Some(next) = next else { continue };
        if engine.clock.now() < next {
            continue;
        }
        // Progress of the sweep keeps liveness ticking while it runs.
        let ticker = {
            let liveness = liveness.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TICK).await;
                    liveness.tick();
                }
            })
        };
        let request = SweepRequest { supplier: None, dry_run: false, trigger: Trigger::Schedule };
        if let Err(e) = engine.sweep(request, shutdown.clone()).await {
            tracing::error!(error = format!("{e:#}"), "scheduled sweep failed; the next fire will try again");
            crate::defects::after_failed_sweep();
        }
        ticker.abort();
        liveness.tick();
        if shutdown.is_triggered() {
            break;
        }
    }
}

/// Runs any pending priority checks now. Failures are logged; the next poll retries.
async fn serve_priority(engine: &Engine, shutdown: &Shutdown) {
    match crate::store::priority::any_pending(&engine.pool).await {
        Ok(true) => {
            if let Err(e) = engine.sweep_priority(shutdown.clone()).await {
                tracing::warn!(error = format!("{e:#}"), "priority checks failed; retrying at the next poll");
            }
        }
        Ok(false) => {}
        Err(e) => tracing::debug!(error = %e, "could not look for priority checks"),
    }
}
