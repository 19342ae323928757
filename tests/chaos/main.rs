//! The fault suite: the real binary (several `run` workers), the simulator as its own
//! process, and a PostgreSQL cluster of the suite's own (a database per scenario); a
//! population with known truths, faults injected while they work, and invariants checked
//! at the end from the database and the simulator's call counts (see [`invariants`]).
//!
//! ```text
//! cargo test --test chaos -- --run [--scenario NAME]...    # the scenarios
//! cargo test --test chaos -- --prove [--scenario NAME]...  # each with its planted defect: must be caught
//! cargo test --test chaos -- --short                       # CI: a few scenarios, plain and proved
//! cargo test --release --test chaos -- --soak [--minutes 30] [--credentials 1000000] [--seed N]
//! ```
//!
//! Without a mode it only says how to run it, so `cargo test --all-targets` stays quick.
//! Creating the cluster needs root or passwordless sudo (Debian's `pg_createcluster`).

mod cluster;
mod invariants;
mod population;
mod proxy;
mod scenarios;
mod soak;
mod world;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::Cluster;
use population::{import_line, token, truth, truth_script};
use scenarios::Scenario;
use world::{Shape, World};

pub const BIN: &str = env!("CARGO_BIN_EXE_im1-revalidator");
pub const KEY: &str = "chaos:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// How long the system has to settle once the faults stop: a credential that got no
/// verdict during the faults backs off (a minute, ±10 %, for a first failure), so recovery
/// takes that long by design.
pub const SETTLE: Duration = Duration::from_secs(150);
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// The simulator's delay per answer: 3 workers × 8 in flight ÷ 0.25 s ≈ 100 checks a
/// second, so the ~800 checks of a scenario span its faults.
pub const LATENCY_MS: u64 = 250;
/// A slow supplier's delay: under the 2 s request timeout, but a worker's claimed checks
/// (8 in flight and two batches of 20 ahead) then take longer than its 5 s lease, which
/// only its heartbeat extends.
pub const SLOW_LATENCY_MS: u64 = 1200;

pub type Failure = String;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The scenario suite's world: three workers sweeping every two seconds, small batches, a
/// five-second lease.
fn suite_shape() -> Shape {
    Shape {
        workers: 3,
        concurrency: 8,
        batch: 20,
        lease: Duration::from_secs(5),
        schedule: "*/2 * * * * *",
        recheck_interval: "7d".to_owned(),
        env: Vec::new(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if !["--run", "--prove", "--short", "--soak"].iter().any(|m| has(m)) {
        println!(
            "chaos: run with `cargo test --test chaos -- --run [--scenario NAME]... | --prove | --short | --soak`"
        );
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cluster = match Cluster::create() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("chaos: could not create the suite's own PostgreSQL cluster: {e}");
            std::process::exit(1);
        }
    };
    let ok = if has("--soak") {
        runtime.block_on(soak::run(cluster.clone(), soak::Options::from_args(&args)))
    } else {
        let chosen: Vec<Scenario> = args
            .windows(2)
            .filter(|w| w[0] == "--scenario")
            .map(|w| Scenario::named(&w[1]).unwrap_or_else(|| panic!("no scenario named {}", w[1])))
            .collect();
        let (plain, proved): (Vec<Scenario>, Vec<Scenario>) = if has("--short") {
            (Scenario::SHORT.to_vec(), Scenario::SHORT.to_vec())
        } else {
            let chosen = if chosen.is_empty() { Scenario::ALL.to_vec() } else { chosen };
            if has("--prove") { (Vec::new(), chosen) } else { (chosen, Vec::new()) }
        };
        // Every scenario runs, whatever the ones before it found.
        let plain: Vec<bool> = plain.into_iter().map(|s| report(&runtime, &cluster, s, None)).collect();
        let proved: Vec<bool> = proved.into_iter().map(|s| report(&runtime, &cluster, s, Some(s.defect()))).collect();
        plain.into_iter().chain(proved).all(|ok| ok)
    };
    // The cluster is dropped (and with it the server) before the exit code is chosen.
    drop(runtime);
    drop(cluster);
    if !ok {
        std::process::exit(1);
    }
}

/// Runs one scenario and prints its outcome. With a planted defect, success is the suite
/// catching it. Returns whether it went as it should.
fn report(
    runtime: &tokio::runtime::Runtime,
    cluster: &Arc<Cluster>,
    scenario: Scenario,
    defect: Option<&'static str>,
) -> bool {
    let started = Instant::now();
    let name = scenario.name();
    let outcome = runtime.block_on(run_scenario(cluster.clone(), scenario, defect));
    let took = started.elapsed();
    match (defect, outcome) {
        (None, Ok(report)) => {
            println!("chaos {name}: ok in {took:.0?} ({report})");
            true
        }
        (None, Err(breaches)) => {
            println!("chaos {name}: BREACH after {took:.0?}");
            breaches.iter().for_each(|b| println!("  - {b}"));
            false
        }
        (Some(defect), Err(breaches)) => {
            println!("chaos {name} with {defect} planted: caught in {took:.0?}");
            breaches.iter().for_each(|b| println!("  - {b}"));
            true
        }
        (Some(defect), Ok(report)) => {
            println!("chaos {name} with {defect} planted: NOT CAUGHT ({report})");
            false
        }
    }
}

async fn run_scenario(
    cluster: Arc<Cluster>,
    scenario: Scenario,
    defect: Option<&'static str>,
) -> Result<String, Vec<Failure>> {
    let simulator = serde_json::json!({ "latency_ms": LATENCY_MS });
    let label = format!("{}{}", scenario.name(), if defect.is_some() { "_planted" } else { "" });
    let mut shape = suite_shape();
    shape.env.extend(scenario.env());
    let mut world = World::new(cluster, &label, shape, scenario.population(), simulator).await;
    world.defect = defect;
    let mut file = String::new();
    for i in 0..world.population {
        world.script(&token(i), &truth_script(truth(i))).await;
        file.push_str(&import_line(i));
    }
    world.command(&["credentials", "import"], &file).expect("import");
    for i in scenario.canaries() {
        world.command(&["credentials", "canary", "add", &population::user(*i)], "").expect("canary add");
    }
    world.start_workers();
    scenarios::inject(&mut world, scenario).await;
    let faults_stopped = Instant::now();
    world.check_alive();
    let result = invariants::settle_and_check(&mut world, scenario, faults_stopped).await;
    // Clean shutdown of every worker (exit 0 within the grace), and no panic in any log.
    let mut breaches = result.as_ref().err().cloned().unwrap_or_default();
    let (stop_breaches, logs, _) = world.teardown().await;
    breaches.extend(stop_breaches);
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if text.contains("panicked") {
            breaches.push(format!("{} shows a panic", entry.path().display()));
        }
    }
    if breaches.is_empty() {
        world::discard_logs(&logs);
        Ok(result.unwrap_or_default())
    } else {
        if defect.is_none() {
            breaches.push(format!("logs kept in {}", logs.display()));
        } else {
            world::discard_logs(&logs);
        }
        Err(breaches)
    }
}
