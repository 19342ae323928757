//! The faults: each scenario injects one for about ten seconds into a working system, and
//! names the planted defect it exists to catch.

use std::time::{Duration, Instant};

use crate::population::{POPULATION, Truth, token, truth, truth_script};
use crate::world::{Hogs, World};
use crate::{LATENCY_MS, SLOW_LATENCY_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// SIGKILL a worker every four seconds for a minute, restarting it each time.
    Kill,
    /// The supplier answers 503 to everything for a while, then recovers.
    Outage,
    /// The supplier accepts connections and never answers, then recovers.
    Hang,
    /// The supplier resets every connection (open and new) for a while.
    Reset,
    /// Every answer a 429 with a Retry-After longer than the storm (a retry storm).
    Storm,
    /// Every answer slow (but within the request timeout) for a while: claims must be
    /// extended while their checks wait.
    Slow,
    /// Another client holds every connection the server allows while the workers' own are
    /// cut.
    PoolExhaustion,
    /// Every backend of the database is terminated every second for a while.
    TerminateBackends,
    /// The PostgreSQL server crashes (immediate stop) mid-sweep and comes back.
    PgRestart,
    /// SIGTERM each worker in turn mid-sweep and start it again (a rolling restart).
    RollingRestart,
}

/// The storm's Retry-After: longer than the storm, so no token may be called twice in it.
pub const STORM_RETRY_AFTER: u64 = 30;

impl Scenario {
    pub const ALL: [Scenario; 10] = [
        Scenario::Kill,
        Scenario::Outage,
        Scenario::Hang,
        Scenario::Reset,
        Scenario::Storm,
        Scenario::Slow,
        Scenario::PoolExhaustion,
        Scenario::TerminateBackends,
        Scenario::PgRestart,
        Scenario::RollingRestart,
    ];

    /// The few minutes CI runs on every change: a worker killed, the database crashed,
    /// connections reset, the supplier hung (the stuck half-open breaker's regression), a
    /// rolling restart, each with its planted defect too.
    pub const SHORT: [Scenario; 5] =
        [Scenario::Kill, Scenario::PgRestart, Scenario::Reset, Scenario::Hang, Scenario::RollingRestart];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill",
            Scenario::Outage => "outage",
            Scenario::Hang => "hang",
            Scenario::Reset => "reset",
            Scenario::Storm => "storm",
            Scenario::Slow => "slow",
            Scenario::PoolExhaustion => "pool-exhaustion",
            Scenario::TerminateBackends => "terminate-backends",
            Scenario::PgRestart => "pg-restart",
            Scenario::RollingRestart => "rolling-restart",
        }
    }

    pub fn named(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Credentials the scenario works on: enough that its faults land mid-sweep.
    pub fn population(self) -> usize {
        match self {
            // A minute of kills needs a minute of work: ~3,900 checks at ~100 a second,
            // fewer while workers restart.
            Scenario::Kill => 5 * POPULATION,
            _ => POPULATION,
        }
    }

    /// Settings the scenario needs beyond the suite's.
    pub fn env(self) -> Vec<(&'static str, String)> {
        match self {
            // A cool-off (1 s) shorter than a request's timeout (2 s): checks still retrying
            // a hung call meet a half-open breaker. The soak found such a retry taking the
            // half-open probe without sending it, which left the breaker half-open, and
            // every check skipped, until the process restarted.
            Scenario::Hang => vec![("IM1_BREAKER_COOLDOWN", "1s".to_owned())],
            _ => Vec::new(),
        }
    }

    /// Credentials (by index) marked as canaries before the workers start: the hang's
    /// canary probes each sweep's start while the breaker cycles open and half-open.
    pub fn canaries(self) -> &'static [usize] {
        match self {
            // Index 3 is valid (see `population::truth`).
            Scenario::Hang => &[3],
            _ => &[],
        }
    }

    /// The planted defect (src/defects.rs) this scenario must catch when proving the suite.
    pub fn defect(self) -> &'static str {
        match self {
            Scenario::Kill => "ignore-leases",
            Scenario::Outage => "503-is-invalid",
            Scenario::Hang => "timeout-is-invalid",
            Scenario::Reset => "reset-is-invalid",
            Scenario::Storm => "ignore-retry-after",
            Scenario::Slow => "no-lease-heartbeat",
            Scenario::PoolExhaustion => "exit-on-database-error",
            Scenario::TerminateBackends => "events-after-commit",
            Scenario::PgRestart => "ready-without-database",
            Scenario::RollingRestart => "abrupt-shutdown",
        }
    }

    /// Duplicate supplier calls the fault can explain, where the supplier answered
    /// throughout (an outage, hang, reset or storm makes retries and rechecks legitimate:
    /// `None`). A claim window is what one process holds: the checks in flight and two
    /// batches claimed ahead.
    pub fn duplicate_bound(self, world: &World) -> Option<u64> {
        let shape = &world.shape;
        let window = (shape.concurrency + 2 * shape.batch) as u64;
        let workers = shape.workers as u64;
        match self {
            // Each kill loses at most what that process held.
            Scenario::Kill => Some(world.kills * window),
            // Graceful stops finish their checks or give their claims back: nothing is
            // checked twice (no check outlives the grace while the supplier is healthy).
            Scenario::RollingRestart => Some(0),
            // Nobody died and the supplier answered every call within the lease.
            Scenario::Slow => Some(0),
            // A lost connection can fail a write-back after the answer came: the answer is
            // redone (never half-written), at most a claim window per worker per cut.
            Scenario::TerminateBackends | Scenario::PoolExhaustion | Scenario::PgRestart => {
                Some(world.cuts * workers * window)
            }
            Scenario::Outage | Scenario::Hang | Scenario::Reset | Scenario::Storm => None,
        }
    }
}

async fn sleep(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The fault, for about ten seconds. What it sees going wrong on the way (a token called
/// inside its Retry-After, `/readyz` claiming readiness without a database) is recorded in
/// `world.breaches`.
pub async fn inject(world: &mut World, scenario: Scenario) {
    let workers = world.shape.workers;
    match scenario {
        Scenario::Kill => {
            for round in 0..15 {
                sleep(4000).await;
                let slot = round % workers;
                world.kill(slot);
                world.start_worker(slot);
            }
        }
        Scenario::Outage => {
            sleep(500).await;
            world.http.post(world.sim_url("/_sim/outage/emis")).send().await.unwrap();
            sleep(8000).await;
            world.http.delete(world.sim_url("/_sim/outage/emis")).send().await.unwrap();
        }
        Scenario::Hang => {
            // No answer comes (the supplier accepts every connection and holds it), then
            // everything answers as before. It starts once the workers are checking rows
            // (past their canary probes), so calls in flight hang, the breaker opens,
            // and retries and the next sweeps' canaries meet it half-open.
            if !world.until_checked(50).await {
                return;
            }
            answer_for(world, world.population, |_| serde_json::json!(["hang"]), 6000).await;
        }
        Scenario::Reset => {
            sleep(1500).await;
            world.proxy.resetting(true);
            sleep(6000).await;
            world.proxy.resetting(false);
        }
        Scenario::Storm => storm(world).await,
        Scenario::Slow => {
            // Every answer, whatever it says, takes longer than a worker's claimed batches
            // last within one lease (but less than the request timeout). Scripts are left
            // alone, so no answer is repeated.
            sleep(500).await;
            world.set_latency(SLOW_LATENCY_MS).await;
            sleep(8000).await;
            world.set_latency(LATENCY_MS).await;
        }
        Scenario::PoolExhaustion => pool_exhaustion(world).await,
        Scenario::TerminateBackends => {
            for _ in 0..10 {
                sleep(1000).await;
                world.terminate_backends().await;
                world.cuts += 1;
            }
        }
        Scenario::PgRestart => pg_restart(world).await,
        Scenario::RollingRestart => {
            for round in 0..workers * 2 {
                sleep(1500).await;
                let slot = round % workers;
                world.terminate(slot).await;
                world.start_worker(slot);
            }
        }
    }
}

/// Every token answers 429 with a Retry-After longer than the storm: between two counts
/// taken inside the storm, no token may have been called twice.
async fn storm(world: &mut World) {
    sleep(500).await;
    let storm = serde_json::json!([{"behaviour": "rate_limited", "retry_after_secs": STORM_RETRY_AFTER}]);
    for i in 0..world.population {
        world.script(&token(i), &storm).await;
    }
    let before = world.token_calls().await;
    sleep(5000).await;
    let after = world.token_calls().await;
    let mut undercut: Vec<String> = after
        .iter()
        .filter_map(|(t, n)| {
            let calls = n - before.get(t).copied().unwrap_or(0);
            (calls > 1).then(|| format!("{t} ×{calls}"))
        })
        .collect();
    undercut.sort();
    for i in 0..world.population {
        world.script(&token(i), &truth_script(truth(i))).await;
    }
    if !undercut.is_empty() {
        world.breaches.push(format!(
            "{} token(s) called again within the {STORM_RETRY_AFTER} s Retry-After they were given: {:?}",
            undercut.len(),
            &undercut[..undercut.len().min(5)]
        ));
    }
}

/// Another client takes every connection the server will give and, for longer than the
/// workers' 10 s pool acquire timeout, cuts any connection a worker still has or manages
/// to make and takes its slot too: their sweeps fail on the database and must be tried
/// again at the next fire. The server must really refuse.
async fn pool_exhaustion(world: &mut World) {
    sleep(500).await;
    let (mut hogs, refused) = Hogs::take(world).await;
    match refused {
        Some(e) if e.contains("too many clients") => {}
        other => world.breaches.push(format!(
            "the pool exhaustion did not exhaust the server: {} connections taken, then {other:?}",
            hogs.len()
        )),
    }
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if hogs.starve(world).await > 0 {
            world.cuts += 1;
        }
        sleep(250).await;
    }
    drop(hogs);
}

/// The server crashes mid-sweep and stays down for a few seconds: every worker's `/readyz`
/// must say not ready the whole time, and ready again soon after the server is back.
async fn pg_restart(world: &mut World) {
    sleep(1500).await;
    if let Err(e) = world.cluster.stop("immediate") {
        world.breaches.push(format!("could not stop the suite's PostgreSQL: {e}"));
        return;
    }
    world.cuts += 1;
    let down = Instant::now();
    // Worker slot → how many polls it answered 200.
    let mut lied = std::collections::BTreeMap::<usize, u32>::new();
    while down.elapsed() < Duration::from_secs(6) {
        for (slot, answer) in world.readiness().await {
            if answer == Ok(200) {
                *lied.entry(slot).or_default() += 1;
            }
        }
        sleep(500).await;
    }
    if !lied.is_empty() {
        let lied: Vec<String> = lied.iter().map(|(slot, n)| format!("worker {slot} {n} times")).collect();
        world.breaches.push(format!("/readyz answered 200 with the database down ({})", lied.join(", ")));
    }
    if let Err(e) = world.cluster.start() {
        world.breaches.push(format!("could not start the suite's PostgreSQL again: {e}"));
        return;
    }
    let back = Instant::now();
    const RECOVER: Duration = Duration::from_secs(30);
    loop {
        let answers = world.readiness().await;
        if answers.iter().all(|(_, a)| *a == Ok(200)) {
            break;
        }
        if back.elapsed() > RECOVER {
            world
                .breaches
                .push(format!("/readyz still not ready {RECOVER:?} after the database came back: {answers:?}"));
            break;
        }
        sleep(250).await;
    }
}

/// Scripts the first `n` tokens with `fault(truth)` for `ms`, then back to their truth.
async fn answer_for(world: &World, n: usize, fault: impl Fn(Truth) -> serde_json::Value, ms: u64) {
    for i in 0..n {
        world.script(&token(i), &fault(truth(i))).await;
    }
    sleep(ms).await;
    for i in 0..n {
        world.script(&token(i), &truth_script(truth(i))).await;
    }
}
