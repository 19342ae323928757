//! Verdict safety: the defences that keep a supplier that is down, slow, throttling or
//! answering nonsense from marking good tokens invalid.
//!
//! - [`crate::suppliers::throttle`]: each supplier's request rate and in-flight cap, shared
//!   by every live process (each takes `1/n`); built here from the settings ([`throttles`]).
//! - The circuit breaker: when transient calls reach a share of a rolling window, the
//!   supplier's checks are skipped without a call until its cool-off ends; then a probe
//!   decides.
//! - The mass-invalidation guard: when invalid answers exceed a share of a rolling window,
//!   new invalid verdicts are held until an operator releases or discards them.
//! - [`retry`]: retries inside one check.
//!
//! Breaker, guard and shares are the same for every replica: each process counts what it
//! sees in memory and, about once a second (never per check), flushes its counts, heartbeats
//! and reads the shared state in one statement ([`Safety::sync`]). Between syncs the
//! process also judges its own counts on top of the last shared sums, so a breaker opens or
//! the guard holds the moment this process's own answers make it so.
//!
//! This file stays over 500 lines on purpose: breaker, guard and the shared sync are one
//! state machine over one set of windows, and reading them apart would hide how a call,
//! an answer and a sync move the same counts. The pure rules are in [`rules`], the shared
//! status report in [`report`], retries in [`retry`].

pub mod report;
pub mod retry;
pub mod rules;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::model::Breaker;
use crate::model::Supplier;
use crate::store::safety::{self as shared, BreakerMove, Counts, ProcessInfo, SupplierState, Windows};
use crate::suppliers::throttle::{self, Throttle};
use crate::suppliers::{Evidence, Outcome};
pub use rules::{BreakerConfig, GuardConfig};

/// How often a process syncs while it may call suppliers.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long a process that found itself alone waits before looking again.
const JOIN_RECHECK: Duration = Duration::from_millis(100);
/// A process whose heartbeat is older than this is dead: its share goes to the others.
pub const PROCESS_TTL: Duration = Duration::from_secs(10);

/// What a check may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call the supplier.
    Call,
    /// Call once, as the half-open breaker's probe: no retries; the answer decides, and
    /// must be reported with [`Safety::probe_result`].
    Probe,
    /// No call: the breaker is open (or half-open with its probe out).
    Skip { why: &'static str, retry_after: Option<Duration> },
}

/// One supplier's state in this process.
struct Local {
    /// Counts since the last flush.
    pending: Counts,
    /// The shared window sums at the last sync (our flushed counts included).
    breaker_window: Counts,
    guard_window: Counts,
    breaker: Breaker,
    guard_held: bool,
    /// When this process sent its probe in the current half-open period, if it has.
    probe_sent: Option<DateTime<Utc>>,
}

impl Local {
    fn new() -> Self {
        Local {
            pending: Counts::default(),
            breaker_window: Counts::default(),
            guard_window: Counts::default(),
            breaker: Breaker::Closed,
            guard_held: false,
            probe_sent: None,
        }
    }

    fn set_breaker(&mut self, breaker: Breaker) {
        if self.breaker != breaker {
            self.breaker = breaker;
            self.probe_sent = None;
        }
    }

    fn with_pending(&self, window: &Counts) -> Counts {
        let mut c = *window;
        c.add(&self.pending);
        c
    }
}

struct SupplierSafety {
    throttle: Arc<Throttle>,
    local: Mutex<Local>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Breaker and guard settings together.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub breaker: BreakerConfig,
    pub guard: GuardConfig,
    /// How long a half-open probe may go unreported before this process sends another.
    /// Every probe reports (its check ends within `IM1_CHECK_TIMEOUT` once the throttle
    /// admits it); this only keeps a probe lost some other way, a check future dropped
    /// say, from leaving the breaker half-open for good.
    pub probe_lost_after: Duration,
}

impl Config {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Config {
            breaker: BreakerConfig {
                threshold: s.breaker_threshold,
                min_calls: s.breaker_min_calls,
                cooldown: s.breaker_cooldown,
                window: s.breaker_window,
            },
            guard: GuardConfig { threshold: s.guard_threshold, min_checks: s.guard_min_checks, window: s.guard_window },
            // The check's own timeout, and as long again for the throttle's queue before it.
            probe_lost_after: 2 * s.check_timeout,
        }
    }
}

/// A throttle for every configured checkable supplier, from its `IM1_<SUPPLIER>_RATE`,
/// `_BURST` and `_MAX_IN_FLIGHT`.
pub fn throttles(settings: &crate::config::Settings) -> BTreeMap<Supplier, Arc<Throttle>> {
    Supplier::CHECKABLE
        .iter()
        .filter_map(|s| settings.supplier(*s))
        .map(|cfg| {
            let limits = throttle::Limits { rate: cfg.rate, burst: cfg.burst, max_in_flight: cfg.max_in_flight };
            (cfg.supplier, Throttle::new(limits))
        })
        .collect()
}

/// This process's view of every configured supplier's shared safety state.
pub struct Safety {
    pool: PgPool,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    me: ProcessInfo,
    config: Config,
    suppliers: BTreeMap<Supplier, SupplierSafety>,
    /// A dry run reads shared state but writes none (no counts, no transitions).
    read_only: AtomicBool,
    /// Serialises syncs; holds when the last one finished.
    syncing: tokio::sync::Mutex<Option<Instant>>,
    /// Set once this process has been seen by the others (see [`Safety::join`]).
    joined: AtomicBool,
    wake: Notify,
}

impl std::fmt::Debug for Safety {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Safety").field("process_id", &self.me.process_id).field("config", &self.config).finish()
    }
}

impl Safety {
    pub fn new(
        pool: PgPool,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        process_id: Uuid,
        command: &str,
        config: Config,
        throttles: &BTreeMap<Supplier, Arc<Throttle>>,
    ) -> Arc<Self> {
        let me = ProcessInfo {
            process_id,
            command: command.to_owned(),
            hostname: hostname(),
            pid: std::process::id() as i32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: clock.now(),
        };
        metrics.init_suppliers(&throttles.keys().copied().collect::<Vec<_>>());
        let suppliers = throttles
            .iter()
            .map(|(s, t)| (*s, SupplierSafety { throttle: t.clone(), local: Mutex::new(Local::new()) }))
            .collect();
        Arc::new(Safety {
            pool,
            clock,
            metrics,
            me,
            config,
            suppliers,
            read_only: AtomicBool::new(false),
            syncing: tokio::sync::Mutex::new(None),
            joined: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn process_id(&self) -> Uuid {
        self.me.process_id
    }

    /// A dry run: read the shared state, write none of it.
    pub fn set_read_only(&self, read_only: bool) {
        self.read_only.store(read_only, Ordering::Relaxed);
    }

    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    /// The throttle every request to `supplier` passes.
    pub fn throttle(&self, supplier: Supplier) -> Option<&Arc<Throttle>> {
        self.suppliers.get(&supplier).map(|s| &s.throttle)
    }

    /// The breaker as this process sees it now.
    pub fn breaker(&self, supplier: Supplier) -> Breaker {
        let now = self.clock.now();
        self.suppliers.get(&supplier).map_or(Breaker::Closed, |s| lock(&s.local).breaker.at(now))
    }

    /// Whether the guard holds `supplier`'s invalid verdicts, as this process sees it.
    pub fn guard_held(&self, supplier: Supplier) -> bool {
        self.suppliers.get(&supplier).is_some_and(|s| lock(&s.local).guard_held)
    }

    /// Whether calls to `supplier` go through now: the breaker is closed. Unlike
    /// [`Safety::admit`] it never takes the half-open probe, so it is what a check already
    /// under way (before a retry) and a canary ask.
    pub fn calls_allowed(&self, supplier: Supplier) -> bool {
        self.breaker(supplier) == Breaker::Closed
    }

    /// Whether a new check of `supplier` may call it now. While the breaker is half-open
    /// the first check to ask is its probe (one per process, and another only if that one
    /// goes unreported for [`Config::probe_lost_after`]); a check given
    /// [`Admission::Probe`] must report with [`Safety::probe_result`].
    pub fn admit(&self, supplier: Supplier) -> Admission {
        let Some(s) = self.suppliers.get(&supplier) else { return Admission::Call };
        let now = self.clock.now();
        let mut local = lock(&s.local);
        let breaker = local.breaker.at(now);
        local.set_breaker(breaker);
        match breaker {
            Breaker::Closed => Admission::Call,
            Breaker::Open { until } => {
                Admission::Skip { why: "breaker_open", retry_after: (until - now).to_std().ok() }
            }
            Breaker::HalfOpen => match local.probe_sent {
                Some(sent) if now < sent + crate::clock::delta(self.config.probe_lost_after) => {
                    Admission::Skip { why: "breaker_half_open", retry_after: None }
                }
                lost => {
                    local.probe_sent = Some(now);
                    drop(local);
                    if lost.is_some() {
                        tracing::warn!(supplier = %supplier, "the half-open breaker's probe never reported: sending another");
                    }
                    Admission::Probe
                }
            },
        }
    }

    /// Counts one supplier call. When this process's counts on top of the last shared
    /// window open the breaker, it opens here at once (the next sync records it).
    pub fn record_call(&self, supplier: Supplier, transient: bool) {
        let Some(s) = self.suppliers.get(&supplier) else { return };
        let mut local = lock(&s.local);
        local.pending.calls += 1;
        if transient {
            local.pending.transient += 1;
        }
        if local.breaker == Breaker::Closed
            && transient
            && rules::breaker_trips(&self.config.breaker, &local.with_pending(&local.breaker_window))
        {
            let until = self.clock.now() + crate::clock::delta(self.config.breaker.cooldown);
            local.set_breaker(Breaker::Open { until });
            drop(local);
            tracing::warn!(supplier = %supplier, "circuit breaker opening: transient answers reached the threshold");
            self.wake.notify_one();
        }
    }

    /// Counts one finished check, whatever its outcome (shared, so the console shows every
    /// process's checks per minute). Nothing here judges: it only counts.
    pub fn record_check(&self, supplier: Supplier) {
        let Some(s) = self.suppliers.get(&supplier) else { return };
        lock(&s.local).pending.checks += 1;
    }

    /// Counts one check that got a verdict-shaped answer (valid or invalid). Returns
    /// whether this invalid answer must be held: the guard holds, or this very answer
    /// makes it hold.
    pub fn record_answer(&self, supplier: Supplier, invalid: bool) -> bool {
        let Some(s) = self.suppliers.get(&supplier) else { return false };
        let mut local = lock(&s.local);
        local.pending.answers += 1;
        if invalid {
            local.pending.invalid += 1;
        }
        if !local.guard_held
            && invalid
            && rules::guard_trips(&self.config.guard, &local.with_pending(&local.guard_window))
        {
            local.guard_held = true;
            drop(local);
            tracing::error!(supplier = %supplier, "invalidation guard holding: invalid answers exceed the threshold");
            self.wake.notify_one();
            return true;
        }
        invalid && local.guard_held
    }

    /// A half-open probe's answer (its evidence already scrubbed of the token): a real
    /// answer closes the breaker for everyone; a transient one opens it for another
    /// cool-off.
    pub async fn probe_result(&self, supplier: Supplier, outcome: &Outcome, evidence: &Evidence) {
        let Some(s) = self.suppliers.get(&supplier) else { return };
        let now = self.clock.now();
        let transient = matches!(outcome, Outcome::Transient { .. });
        let evidence = serde_json::json!({ "probe": evidence });
        if transient {
            let until = now + crate::clock::delta(self.config.breaker.cooldown);
            lock(&s.local).set_breaker(Breaker::Open { until });
            tracing::warn!(supplier = %supplier, "circuit breaker probe failed: open for another cool-off");
            if !self.read_only()
                && let Err(e) = shared::move_breaker(
                    &self.pool,
                    supplier,
                    BreakerMove::Open { from: "half_open", until },
                    now,
                    Some(&evidence),
                )
                .await
            {
                tracing::warn!(error = %e, supplier = %supplier, "could not record the breaker re-opening");
            }
        } else {
            {
                let mut local = lock(&s.local);
                local.set_breaker(Breaker::Closed);
                local.breaker_window = Counts::default();
                local.pending.calls = 0;
                local.pending.transient = 0;
            }
            tracing::info!(supplier = %supplier, "circuit breaker probe answered: closed");
            if !self.read_only()
                && let Err(e) =
                    shared::move_breaker(&self.pool, supplier, BreakerMove::Close, now, Some(&evidence)).await
            {
                tracing::warn!(error = %e, supplier = %supplier, "could not record the breaker closing");
            }
        }
        self.metrics.set_breaker(supplier, self.breaker(supplier));
    }

    fn windows(&self, now: DateTime<Utc>) -> Windows {
        Windows {
            breaker_from: now - crate::clock::delta(self.config.breaker.window),
            guard_from: now - crate::clock::delta(self.config.guard.window),
            alive_after: now - crate::clock::delta(PROCESS_TTL),
        }
    }

    /// Heartbeats, flushes this process's counts, reads every supplier's shared state and
    /// the live processes, and makes any transition the shared counts call for. On a
    /// database error the counts are kept for the next sync and the last view stands.
    pub async fn sync(&self) -> sqlx::Result<()> {
        let mut last = self.syncing.lock().await;
        let now = self.clock.now();
        let read_only = self.read_only();
        let flush: Vec<(Supplier, Counts)> = if read_only {
            Vec::new()
        } else {
            self.suppliers.iter().map(|(s, ss)| (*s, std::mem::take(&mut lock(&ss.local).pending))).collect()
        };
        let synced = match shared::sync(&self.pool, &self.me, now, &flush, self.windows(now)).await {
            Ok(synced) => synced,
            Err(e) => {
                for (s, counts) in &flush {
                    if let Some(ss) = self.suppliers.get(s) {
                        lock(&ss.local).pending.add(counts);
                    }
                }
                return Err(e);
            }
        };
        *last = Some(Instant::now());
        let processes = u32::try_from(synced.other_processes).unwrap_or(u32::MAX).saturating_add(1);
        self.metrics.live_processes.set(i64::from(processes));
        for state in &synced.suppliers {
            let Some(ss) = self.suppliers.get(&state.supplier) else { continue };
            ss.throttle.set_processes(processes);
            let flushed = flush.iter().find(|(s, _)| *s == state.supplier).map(|(_, c)| *c).unwrap_or_default();
            self.apply(state, &ss.local, flushed, now).await?;
            self.metrics.set_breaker(state.supplier, lock(&ss.local).breaker.at(now));
            self.metrics.set_guard(state.supplier, lock(&ss.local).guard_held, state.held_verdicts);
        }
        Ok(())
    }

    /// Brings one supplier's local view in line with the shared state, making the
    /// transitions the shared window calls for.
    async fn apply(
        &self,
        state: &SupplierState,
        local: &Mutex<Local>,
        flushed: Counts,
        now: DateTime<Utc>,
    ) -> sqlx::Result<()> {
        let supplier = state.supplier;
        let read_only = self.read_only();
        let mut breaker_window = state.breaker_window;
        breaker_window.add(&flushed);
        let mut guard_window = state.guard_window;
        guard_window.add(&flushed);
        let mut breaker = Breaker::from_row(&state.breaker_state, state.breaker_open_until);
        if !read_only {
            match breaker {
                Breaker::Closed if rules::breaker_trips(&self.config.breaker, &breaker_window) => {
                    let until = now + crate::clock::delta(self.config.breaker.cooldown);
                    let evidence = rules::breaker_evidence(&breaker_window, &self.config.breaker);
                    if shared::move_breaker(
                        &self.pool,
                        supplier,
                        BreakerMove::Open { from: "closed", until },
                        now,
                        Some(&evidence),
                    )
                    .await?
                    {
                        tracing::warn!(supplier = %supplier, evidence = %evidence, "circuit breaker opened: calls stop until the cool-off ends");
                        self.metrics.breaker_transition(supplier, "open");
                    }
                    breaker = Breaker::Open { until };
                }
                Breaker::Open { until } if now >= until => {
                    if shared::move_breaker(&self.pool, supplier, BreakerMove::HalfOpen, now, None).await? {
                        tracing::info!(supplier = %supplier, "circuit breaker half-open: a probe decides");
                        self.metrics.breaker_transition(supplier, "half_open");
                    }
                    breaker = Breaker::HalfOpen;
                }
                _ => {}
            }
        }
        let mut guard_held = state.guard_held_since.is_some();
        if !guard_held && rules::guard_trips(&self.config.guard, &guard_window) {
            guard_held = true;
            if !read_only {
                let evidence = rules::guard_evidence(&guard_window, &self.config.guard);
                if shared::hold_guard(&self.pool, supplier, now, &evidence).await? {
                    tracing::error!(
                        supplier = %supplier,
                        evidence = %evidence,
                        "invalidation guard holding: new invalid verdicts are held until an operator runs `guard release` or `guard discard`"
                    );
                    self.metrics.guard_trips.get_or_create(&crate::metrics::supplier_label(supplier)).inc();
                }
            }
        }
        let mut l = lock(local);
        l.breaker_window = breaker_window;
        l.guard_window = guard_window;
        l.set_breaker(breaker.at(now));
        l.guard_held = guard_held;
        // Counts that arrived while this sync ran (or, in a dry run, every count of this
        // process) are judged on top of the new shared sums, as record_call/record_answer do.
        if l.breaker == Breaker::Closed
            && l.pending.transient > 0
            && rules::breaker_trips(&self.config.breaker, &l.with_pending(&breaker_window))
        {
            l.set_breaker(Breaker::Open { until: now + crate::clock::delta(self.config.breaker.cooldown) });
        }
        if !l.guard_held
            && l.pending.invalid > 0
            && rules::guard_trips(&self.config.guard, &l.with_pending(&guard_window))
        {
            l.guard_held = true;
        }
        Ok(())
    }

    /// The first sync of this process. When other processes are live, waits one sync
    /// period so that each has seen this one (and taken its smaller share) before this
    /// one makes its first call: two processes never both spend the whole rate. Alone, it
    /// looks once more after a moment, for a process that registered at the same instant
    /// (neither statement could see the other's row).
    pub async fn join(&self) -> sqlx::Result<()> {
        self.sync().await?;
        if self.joined.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let mut others = self.metrics.live_processes.get() > 1;
        if !others {
            tokio::time::sleep(JOIN_RECHECK).await;
            self.sync().await?;
            others = self.metrics.live_processes.get() > 1;
        }
        if others {
            // Two periods: the others sync every period, plus however long a sync takes.
            tokio::time::sleep(2 * SYNC_EVERY).await;
            self.sync().await?;
        }
        Ok(())
    }

    /// Syncs every [`SYNC_EVERY`], and at once when a local count opens a breaker or
    /// trips the guard, until `stop` fires; then one last sync flushes the counts.
    pub async fn sync_loop(self: Arc<Self>, mut stop: tokio::sync::oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(SYNC_EVERY) => {}
                _ = self.wake.notified() => {}
            }
            if let Err(e) = self.sync().await {
                tracing::warn!(error = %e, "could not sync breaker, guard and rate-limit state; keeping the last view");
            }
        }
        if let Err(e) = self.sync().await {
            tracing::warn!(error = %e, "could not flush breaker and guard counts");
        }
    }

    /// Removes this process's heartbeat row (a clean exit).
    pub async fn deregister(&self) {
        if let Err(e) = shared::deregister(&self.pool, self.me.process_id).await {
            tracing::debug!(error = %e, "could not remove this process's heartbeat row; it will expire");
        }
    }
}

/// The host name for the heartbeat row (`HOSTNAME`, else `/etc/hostname`, else unknown).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
