//! The fault suite: the real binary (several `run` workers), the simulator as its own
//! process and a database of its own, a population with known truths, faults injected
//! while they work, and invariants checked at the end from the database and the
//! simulator's call counts.
//!
//! `cargo test --test chaos -- --run [--scenario NAME]...` (without `--run` it only says
//! how to run it, so `cargo test --all-targets` stays quick). Needs a PostgreSQL server:
//! DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres.
//!
//! The system is at-least-once: a credential may be checked twice in one cycle only when a
//! process died (or gave up) holding its claim, so duplicate checks are bounded by what the
//! killed processes held (their claim window each).

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_im1-revalidator");
const KEY: &str = "chaos:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Credentials per scenario: 70 % valid, 20 % revoked, 10 % flaky (a 500, then valid).
const POPULATION: usize = 600;
const WORKERS: usize = 3;
const CONCURRENCY: usize = 8;
const BATCH: usize = 20;
const LEASE: Duration = Duration::from_secs(5);
/// The simulator's delay per answer: 3 workers × 8 in flight ÷ 0.25 s ≈ 100 checks a
/// second, so the ~700 checks of a scenario span its faults.
const LATENCY_MS: u64 = 250;
/// How long the system has to settle once the faults stop: a credential that got no
/// verdict during the faults backs off (a minute, ±10 %, for a first failure), so recovery
/// takes that long by design.
const SETTLE: Duration = Duration::from_secs(150);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    Valid,
    Revoked,
    Flaky,
}

fn truth(i: usize) -> Truth {
    match i % 10 {
        0 | 1 => Truth::Revoked,
        2 => Truth::Flaky,
        _ => Truth::Valid,
    }
}

/// How the simulator answers a token of this truth when nothing is wrong.
fn truth_script(t: Truth) -> serde_json::Value {
    match t {
        Truth::Valid => serde_json::json!(["valid"]),
        Truth::Revoked => serde_json::json!(["not_registered"]),
        Truth::Flaky => serde_json::json!(["server_error", "valid"]),
    }
}

fn token(i: usize) -> String {
    format!("chaos-token-{i:04}")
}

/// Supplier calls a credential needs when nothing goes wrong: valid one, revoked two (a
/// strike, then the confirmation), flaky two (a 500 retried inside the check).
fn expected_calls(t: Truth) -> u64 {
    match t {
        Truth::Valid => 1,
        Truth::Revoked | Truth::Flaky => 2,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// SIGKILL a worker every two seconds for a while, restarting it each time.
    Kill,
    /// The supplier answers 503 to everything for a while, then recovers.
    Outage,
    /// The supplier accepts connections and never answers, then recovers.
    Hang,
    /// Every answer a 429 with Retry-After for a while (a retry storm).
    Storm,
    /// Every answer slow (but within the request timeout) for a while.
    Slow,
    /// Another client holds every connection the server allows while the workers' own are
    /// cut.
    PoolExhaustion,
    /// Every backend of the database is terminated every second for a while.
    TerminateBackends,
    /// SIGTERM each worker in turn mid-sweep and start it again (a rolling restart).
    RollingRestart,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::Kill,
        Scenario::Outage,
        Scenario::Hang,
        Scenario::Storm,
        Scenario::Slow,
        Scenario::PoolExhaustion,
        Scenario::TerminateBackends,
        Scenario::RollingRestart,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill",
            Scenario::Outage => "outage",
            Scenario::Hang => "hang",
            Scenario::Storm => "storm",
            Scenario::Slow => "slow",
            Scenario::PoolExhaustion => "pool-exhaustion",
            Scenario::TerminateBackends => "terminate-backends",
            Scenario::RollingRestart => "rolling-restart",
        }
    }
}

type Failure = String;

/// Each scenario the suite proves it can fail, with the defect it must catch.
const PROOFS: [(Scenario, &str); 2] = [(Scenario::Kill, "ignore-leases"), (Scenario::Outage, "503-is-invalid")];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--run" || a == "--prove") {
        println!("chaos: run with `cargo test --test chaos -- --run [--scenario NAME]... | --prove`");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if args.iter().any(|a| a == "--prove") {
        // The suite can fail: with a defect planted (debug builds only), the scenario must
        // report a breach.
        let mut missed = false;
        for (scenario, defect) in PROOFS {
            match runtime.block_on(run_scenario(scenario, Some(defect))) {
                Err(breaches) => {
                    println!("chaos {} with {defect} planted: caught ({})", scenario.name(), breaches[0]);
                }
                Ok(report) => {
                    missed = true;
                    println!("chaos {} with {defect} planted: NOT CAUGHT ({report})", scenario.name());
                }
            }
        }
        if missed {
            std::process::exit(1);
        }
        return;
    }
    let chosen: Vec<Scenario> = args
        .windows(2)
        .filter(|w| w[0] == "--scenario")
        .filter_map(|w| Scenario::ALL.into_iter().find(|s| s.name() == w[1]))
        .collect();
    let scenarios = if chosen.is_empty() { Scenario::ALL.to_vec() } else { chosen };
    let mut failed = false;
    for scenario in scenarios {
        let started = Instant::now();
        match runtime.block_on(run_scenario(scenario, None)) {
            Ok(report) => println!("chaos {}: ok in {:.0?} ({report})", scenario.name(), started.elapsed()),
            Err(breaches) => {
                failed = true;
                println!("chaos {}: BREACH after {:.0?}", scenario.name(), started.elapsed());
                for b in breaches {
                    println!("  - {b}");
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

struct World {
    admin_url: String,
    db_name: String,
    db_url: String,
    sim_port: u16,
    sim: Child,
    workers: Vec<Option<Child>>,
    logs: std::path::PathBuf,
    http: reqwest::Client,
    kills: u64,
    /// A planted defect for the workers (`CHAOS_PLANTED_DEFECT`), when proving the suite.
    defect: Option<&'static str>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl World {
    async fn new(scenario: Scenario) -> World {
        let admin_url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let db_name = format!("im1_chaos_{}_{}", std::process::id(), scenario.name().replace('-', "_"));
        let mut admin = PgConnection::connect(&admin_url).await.expect("PostgreSQL is reachable");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}"))).execute(&mut admin).await.unwrap();
        let db_url = match admin_url.rfind('/') {
            Some(i) => format!("{}/{db_name}", &admin_url[..i]),
            None => panic!("DATABASE_URL has no database name"),
        };
        let logs = std::env::temp_dir().join(format!("im1-chaos-{}-{}", std::process::id(), scenario.name()));
        std::fs::create_dir_all(&logs).unwrap();
        let sim_port = free_port();
        // Answers slow enough that the population takes longer to check than the faults
        // last: the faults hit work in flight, not an idle system.
        let scenario_file = logs.join("scenario.json");
        std::fs::write(&scenario_file, serde_json::json!({ "latency_ms": LATENCY_MS }).to_string()).unwrap();
        let sim = Command::new(BIN)
            .args(["simulate", "--addr", &format!("127.0.0.1:{sim_port}"), "--scenario"])
            .arg(&scenario_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the simulator starts");
        let http = reqwest::Client::new();
        let world = World {
            admin_url,
            db_name,
            db_url,
            sim_port,
            sim,
            workers: Vec::new(),
            logs,
            http,
            kills: 0,
            defect: None,
        };
        world.wait_for_simulator().await;
        world.command(&["migrate"], "").expect("migrate");
        world
    }

    async fn wait_for_simulator(&self) {
        for _ in 0..400 {
            if self.http.get(self.sim_url("/_sim/calls")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the simulator never answered");
    }

    fn sim_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.sim_port)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.db_url.clone()),
            ("IM1_ENCRYPTION_KEYS", KEY.to_owned()),
            ("IM1_EMIS_URL", self.sim_url("/emis")),
            ("IM1_EMIS_APPLICATION_ID", "chaos".to_owned()),
            ("IM1_EMIS_RATE", "100000".to_owned()),
            ("IM1_EMIS_BURST", "100000".to_owned()),
            ("IM1_EMIS_MAX_IN_FLIGHT", "1000".to_owned()),
            ("IM1_CONFIRM_AFTER", "0s".to_owned()),
            ("IM1_RETRY_ATTEMPTS", "2".to_owned()),
            ("IM1_RETRY_MAX_DELAY", "50ms".to_owned()),
            ("IM1_HTTP_TIMEOUT", "1s".to_owned()),
            ("IM1_CHECK_TIMEOUT", "3s".to_owned()),
            ("IM1_CONCURRENCY", CONCURRENCY.to_string()),
            ("IM1_BATCH_SIZE", BATCH.to_string()),
            ("IM1_LEASE", format!("{}s", LEASE.as_secs())),
            ("IM1_SHUTDOWN_GRACE", "3s".to_owned()),
            // The breaker would (rightly) stop calls during an outage; the suite wants to
            // see what happens to the answers themselves, so it only opens on near-total
            // failure over a short window.
            ("IM1_BREAKER_WINDOW", "5s".to_owned()),
            ("IM1_BREAKER_COOLDOWN", "2s".to_owned()),
            // A fifth of this population is revoked, far more than any real one: at the
            // default 10 % the guard would (rightly) hold every verdict.
            ("IM1_GUARD_THRESHOLD", "0.5".to_owned()),
            ("IM1_SCHEDULE", "*/2 * * * * *".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
    }

    /// Runs a one-off command to completion.
    fn command(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut child = Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() { Ok(text) } else { Err(text) }
    }

    fn start_worker(&mut self, slot: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("worker-{slot}.log")))
            .unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .env("IM1_ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
            .envs(self.defect.map(|d| ("CHAOS_PLANTED_DEFECT", d)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("a worker starts");
        if self.workers.len() <= slot {
            self.workers.resize_with(slot + 1, || None);
        }
        self.workers[slot] = Some(child);
    }

    fn signal(&mut self, slot: usize, signal: &str) {
        if let Some(mut child) = self.workers[slot].take() {
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Scripts a token's answers in the simulator.
    async fn script(&self, token: &str, steps: &serde_json::Value) {
        self.http
            .put(self.sim_url(&format!("/_sim/tokens/{token}")))
            .header("content-type", "application/json")
            .body(steps.to_string())
            .send()
            .await
            .expect("the simulator takes the script");
    }

    async fn seed(&self) -> HashMap<String, (Truth, String)> {
        let mut file = String::new();
        let mut truths = HashMap::new();
        for i in 0..POPULATION {
            let user = format!("user-{i:04}");
            let token = token(i);
            let t = truth(i);
            self.script(&token, &truth_script(t)).await;
            file.push_str(
                &serde_json::json!({"user_id": user, "supplier": "emis", "ods_code": "A81001",
                                    "token": {"access_identity_guid": token}})
                .to_string(),
            );
            file.push('\n');
            truths.insert(user, (t, token));
        }
        self.command(&["credentials", "import"], &file).expect("import");
        truths
    }

    async fn db(&self) -> PgConnection {
        PgConnection::connect(&self.db_url).await.expect("the scenario's database")
    }

    async fn teardown(mut self) {
        for slot in 0..self.workers.len() {
            self.signal(slot, "-TERM");
        }
        let _ = self.sim.kill();
        let _ = self.sim.wait();
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ =
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name)))
                    .execute(&mut admin)
                    .await;
        }
    }
}

async fn run_scenario(scenario: Scenario, defect: Option<&'static str>) -> Result<String, Vec<Failure>> {
    let mut world = World::new(scenario).await;
    world.defect = defect;
    let truths = world.seed().await;
    for slot in 0..WORKERS {
        world.start_worker(slot);
    }
    inject(&mut world, scenario).await;
    let faults_stopped = Instant::now();
    let result = settle_and_check(&world, &truths, scenario, faults_stopped).await;
    // Clean shutdown of every worker, and no panic in any log.
    let mut breaches = match result {
        Ok(_) => Vec::new(),
        Err(ref b) => b.clone(),
    };
    let logs = world.logs.clone();
    world.teardown().await;
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if text.contains("panicked") {
            breaches.push(format!("{} shows a panic", entry.path().display()));
        }
    }
    let _ = std::fs::remove_dir_all(&logs);
    if breaches.is_empty() { Ok(result.unwrap_or_default()) } else { Err(breaches) }
}

/// The fault, for about ten seconds.
async fn inject(world: &mut World, scenario: Scenario) {
    let sleep = |ms| tokio::time::sleep(Duration::from_millis(ms));
    match scenario {
        Scenario::Kill => {
            for round in 0..6 {
                sleep(2000).await;
                let slot = round % WORKERS;
                world.signal(slot, "-KILL");
                world.kills += 1;
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
            // A third of the tokens' answers never come (the supplier accepts the
            // connection and holds it), then everything answers as before.
            sleep(500).await;
            answer_for(world, POPULATION / 3, |_| serde_json::json!(["hang"]), 6000).await;
        }
        Scenario::Storm => {
            // Every answer is a 429 with Retry-After: 1.
            sleep(500).await;
            let storm = |_| serde_json::json!([{"behaviour": "rate_limited", "retry_after_secs": 1}]);
            answer_for(world, POPULATION, storm, 6000).await;
        }
        Scenario::Slow => {
            // Every answer takes 850 ms with the simulator's own latency (under the 1 s request
            // timeout), whatever it says.
            sleep(500).await;
            let slow = |t| {
                let steps = truth_script(t);
                let steps: Vec<serde_json::Value> = steps
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| serde_json::json!({"behaviour": b, "delay_ms": 600}))
                    .collect();
                serde_json::Value::from(steps)
            };
            answer_for(world, POPULATION, slow, 8000).await;
        }
        Scenario::PoolExhaustion => {
            // Another client takes every connection the server will give, while the
            // workers' own connections are cut, so they must wait to reconnect.
            sleep(500).await;
            let mut hogs = Vec::new();
            while hogs.len() < 300 {
                match PgConnection::connect(&world.db_url).await {
                    Ok(c) => hogs.push(c),
                    Err(_) => break,
                }
            }
            let mut admin = PgConnection::connect(&world.admin_url).await.ok();
            if let Some(admin) = admin.as_mut() {
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE datname = $1 AND application_name = 'im1-revalidator'",
                )
                .bind(&world.db_name)
                .execute(admin)
                .await;
            }
            sleep(8000).await;
            drop(hogs);
        }
        Scenario::TerminateBackends => {
            let mut admin = PgConnection::connect(&world.admin_url).await.unwrap();
            for _ in 0..10 {
                sleep(1000).await;
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&world.db_name)
                .execute(&mut admin)
                .await;
            }
        }
        Scenario::RollingRestart => {
            for round in 0..WORKERS * 2 {
                sleep(1500).await;
                let slot = round % WORKERS;
                world.signal(slot, "-TERM");
                world.start_worker(slot);
            }
        }
    }
}

/// Scripts the first `n` tokens with `fault(truth)` for `ms`, then back to their truth.
async fn answer_for(world: &World, n: usize, fault: impl Fn(Truth) -> serde_json::Value, ms: u64) {
    for i in 0..n {
        world.script(&token(i), &fault(truth(i))).await;
    }
    tokio::time::sleep(Duration::from_millis(ms)).await;
    for i in 0..n {
        world.script(&token(i), &truth_script(truth(i))).await;
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    user_id: String,
    status: String,
    refresh_required: bool,
    lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    last_checked_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn settle_and_check(
    world: &World,
    truths: &HashMap<String, (Truth, String)>,
    scenario: Scenario,
    faults_stopped: Instant,
) -> Result<String, Vec<Failure>> {
    let mut db = world.db().await;
    // Every credential reaches its truth once the system recovers.
    let mut settled_after = None;
    while faults_stopped.elapsed() < SETTLE {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT user_id, status, refresh_required, lease_expires_at, last_checked_at FROM im1_credentials",
        )
        .fetch_all(&mut db)
        .await
        .unwrap();
        let done = rows.iter().all(|r| match truths[&r.user_id].0 {
            Truth::Revoked => r.status == "invalid",
            Truth::Valid | Truth::Flaky => r.status == "valid",
        });
        if done {
            settled_after = Some(faults_stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One lease after the faults stopped, no claim may be left standing.
    let wait = (LEASE + Duration::from_secs(1)).saturating_sub(faults_stopped.elapsed());
    tokio::time::sleep(wait).await;
    let mut breaches = Vec::new();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT user_id, status, refresh_required, lease_expires_at, last_checked_at FROM im1_credentials",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let now = chrono::Utc::now();
    if settled_after.is_none() {
        let unsettled: Vec<String> = rows
            .iter()
            .filter(|r| match truths[&r.user_id].0 {
                Truth::Revoked => r.status != "invalid",
                _ => r.status != "valid",
            })
            .take(5)
            .map(|r| format!("{} ({:?}) is {}", r.user_id, truths[&r.user_id].0, r.status))
            .collect();
        let detail: Vec<(String, Option<String>, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT user_id, last_outcome, failures, next_check_at FROM im1_credentials
              WHERE status = 'unchecked' ORDER BY user_id LIMIT 3",
        )
        .fetch_all(&mut db)
        .await
        .unwrap();
        let sweeps: Vec<(String, Option<serde_json::Value>)> =
            sqlx::query_as("SELECT coalesce(error, 'ok'), outcomes FROM im1_sweeps ORDER BY id DESC LIMIT 3")
                .fetch_all(&mut db)
                .await
                .unwrap();
        breaches.push(format!(
            "not every credential reached its truth within {SETTLE:?}: {unsettled:?}; now {now}: {detail:?}; last sweeps {sweeps:?}"
        ));
    }
    // Zero false invalidations, ever: not in the rows, not in any event.
    for r in &rows {
        let t = truths[&r.user_id].0;
        if t != Truth::Revoked && (r.status == "invalid" || r.refresh_required) {
            breaches.push(format!(
                "FALSE INVALIDATION: {} ({t:?}) is {} refresh_required={}",
                r.user_id, r.status, r.refresh_required
            ));
        }
        if r.lease_expires_at.is_some_and(|at| at > now + chrono::TimeDelta::seconds(LEASE.as_secs() as i64)) {
            breaches.push(format!("{} is claimed beyond one lease", r.user_id));
        }
        if r.last_checked_at.is_none() {
            breaches.push(format!("{} was never checked", r.user_id));
        }
    }
    let falsely_flagged: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT user_id FROM im1_credential_events WHERE to_status = 'invalid' OR refresh_required",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    for user in falsely_flagged.iter().filter(|u| truths[*u].0 != Truth::Revoked) {
        breaches.push(format!("FALSE INVALIDATION in the audit trail: {user}"));
    }
    // Every stored status has the event that recorded it.
    let missing_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM im1_credentials c
          WHERE c.status <> 'unchecked'
            AND NOT EXISTS (SELECT 1 FROM im1_credential_events e
                             WHERE e.user_id = c.user_id AND e.to_status = c.status)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    if missing_events > 0 {
        breaches.push(format!("{missing_events} credential(s) whose status has no event"));
    }
    // Duplicate checks are bounded by what killed processes held. Only where the supplier
    // answered throughout (an outage or a hang makes retries and rechecks legitimate).
    let mut excess = 0u64;
    if matches!(
        scenario,
        Scenario::Kill
            | Scenario::RollingRestart
            | Scenario::TerminateBackends
            | Scenario::PoolExhaustion
            | Scenario::Slow
    ) {
        for (t, token) in truths.values() {
            let calls: serde_json::Value = world
                .http
                .get(world.sim_url(&format!("/_sim/calls/{token}")))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .map(|t| serde_json::from_str(&t).unwrap_or_default())
                .unwrap();
            excess += calls["calls"].as_u64().unwrap_or(0).saturating_sub(expected_calls(*t));
        }
        // A killed process's claims are rechecked; a terminated connection can fail a
        // write-back after the answer came (redone, never half-written).
        let window = (CONCURRENCY + 2 * BATCH) as u64;
        let bound = match scenario {
            Scenario::Kill => world.kills * window,
            Scenario::RollingRestart => (WORKERS as u64 * 2) * window,
            _ => 10 * window,
        };
        if excess > bound {
            breaches.push(format!("{excess} duplicate supplier calls, more than the {bound} the faults can explain"));
        }
    }
    let report = format!(
        "settled {:.1?} after the faults; {} duplicate calls; {} kills",
        settled_after.unwrap_or(SETTLE),
        excess,
        world.kills
    );
    if breaches.is_empty() { Ok(report) } else { Err(breaches) }
}
