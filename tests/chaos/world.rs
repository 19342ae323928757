//! One scenario's world: a database of its own on the suite's cluster, the simulator as its
//! own process behind a relay ([`Proxy`]), the `run` workers, and what the faults did to them.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::cluster::Cluster;
use crate::proxy::Proxy;
use crate::{BIN, Failure, KEY, free_port};

/// How the workers are set up: the scenario suite's small fast world, or the soak's.
#[derive(Debug, Clone)]
pub struct Shape {
    pub workers: usize,
    pub concurrency: usize,
    pub batch: usize,
    pub lease: Duration,
    pub schedule: &'static str,
    pub recheck_interval: String,
    /// Extra settings for every worker.
    pub env: Vec<(&'static str, String)>,
}

/// A `run` worker and its admin port.
pub struct Worker {
    pub child: Child,
    pub admin_port: u16,
    pub started: Instant,
}

pub struct World {
    pub cluster: Arc<Cluster>,
    /// Credentials imported: `user(0)` to `user(population - 1)`.
    pub population: usize,
    pub db_name: String,
    pub db_url: String,
    pub shape: Shape,
    sim_port: u16,
    sim: Child,
    pub proxy: Proxy,
    pub workers: Vec<Option<Worker>>,
    pub logs: std::path::PathBuf,
    pub http: reqwest::Client,
    /// Workers killed (SIGKILL) so far.
    pub kills: u64,
    /// Times every worker's database connections were cut (backends terminated, the
    /// server crashed, connections taken): each may cost a worker the batch it was writing.
    pub cuts: u64,
    /// What went wrong while the faults ran (a worker that would not stop, `/readyz`
    /// lying), reported with the end-of-scenario invariants.
    pub breaches: Vec<Failure>,
    /// A planted defect for the workers (`CHAOS_PLANTED_DEFECT`), when proving the suite.
    pub defect: Option<&'static str>,
    /// Peak resident memory seen per worker slot (kB), read before each worker ends.
    pub peak_rss_kb: HashMap<usize, u64>,
}

/// The simulator's settings for a world: the scenario file's JSON.
pub type SimulatorScenario = serde_json::Value;

impl World {
    pub async fn new(
        cluster: Arc<Cluster>,
        label: &str,
        shape: Shape,
        population: usize,
        simulator: SimulatorScenario,
    ) -> World {
        let db_name = format!("im1_chaos_{}", label.replace('-', "_"));
        let admin_url = cluster.url("postgres");
        let mut admin = PgConnection::connect(&admin_url).await.expect("the suite's cluster is reachable");
        for statement in
            [format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"), format!("CREATE DATABASE {db_name}")]
        {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await.unwrap();
        }
        let db_url = cluster.url(&db_name);
        let logs = std::env::temp_dir().join(format!("im1-chaos-{}-{label}", std::process::id()));
        std::fs::create_dir_all(&logs).unwrap();
        let sim_port = free_port();
        let scenario_file = logs.join("scenario.json");
        std::fs::write(&scenario_file, simulator.to_string()).unwrap();
        let sim = Command::new(BIN)
            .args(["simulate", "--addr", &format!("127.0.0.1:{sim_port}"), "--scenario"])
            .arg(&scenario_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.join("simulator.log")).unwrap())
            .spawn()
            .expect("the simulator starts");
        let proxy = Proxy::start(sim_port).await;
        let world = World {
            cluster,
            population,
            db_name,
            db_url,
            shape,
            sim_port,
            sim,
            proxy,
            workers: Vec::new(),
            logs,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            kills: 0,
            cuts: 0,
            breaches: Vec::new(),
            defect: None,
            peak_rss_kb: HashMap::new(),
        };
        world.wait_for_simulator().await;
        world.command(&["migrate"], "").expect("migrate");
        world
    }

    async fn wait_for_simulator(&self) {
        for _ in 0..1200 {
            if self.http.get(self.sim_url("/_sim/calls")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the simulator never answered");
    }

    pub fn sim_pid(&self) -> u32 {
        self.sim.id()
    }

    /// The simulator's control API (direct, not through the relay).
    pub fn sim_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.sim_port)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let shape = &self.shape;
        let mut env = vec![
            ("DATABASE_URL", self.db_url.clone()),
            ("IM1_ENCRYPTION_KEYS", KEY.to_owned()),
            // The suppliers are reached through the relay, which can reset connections.
            ("IM1_EMIS_URL", format!("http://127.0.0.1:{}/emis", self.proxy.port)),
            ("IM1_EMIS_APPLICATION_ID", "chaos".to_owned()),
            ("IM1_EMIS_RATE", "100000".to_owned()),
            ("IM1_EMIS_BURST", "100000".to_owned()),
            ("IM1_EMIS_MAX_IN_FLIGHT", "1000".to_owned()),
            ("IM1_CONFIRM_AFTER", "0s".to_owned()),
            ("IM1_RETRY_ATTEMPTS", "2".to_owned()),
            ("IM1_RETRY_MAX_DELAY", "50ms".to_owned()),
            ("IM1_HTTP_TIMEOUT", "2s".to_owned()),
            ("IM1_CHECK_TIMEOUT", "5s".to_owned()),
            ("IM1_CONCURRENCY", shape.concurrency.to_string()),
            ("IM1_BATCH_SIZE", shape.batch.to_string()),
            ("IM1_LEASE", format!("{}s", shape.lease.as_secs())),
            ("IM1_SHUTDOWN_GRACE", format!("{}s", crate::SHUTDOWN_GRACE.as_secs())),
            // The breaker would (rightly) stop calls during an outage; the suite wants to
            // see what happens to the answers themselves, so it only opens on near-total
            // failure over a short window.
            ("IM1_BREAKER_WINDOW", "5s".to_owned()),
            ("IM1_BREAKER_COOLDOWN", "2s".to_owned()),
            // A fifth of this population is revoked, far more than any real one: at the
            // default 10 % the guard would (rightly) hold every verdict.
            ("IM1_GUARD_THRESHOLD", "0.5".to_owned()),
            ("IM1_SCHEDULE", shape.schedule.to_owned()),
            ("IM1_RECHECK_INTERVAL", shape.recheck_interval.clone()),
            ("RUST_LOG", "info".to_owned()),
        ];
        env.extend(shape.env.iter().cloned());
        env
    }

    fn binary(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(self.env());
        command
    }

    /// Runs a one-off command to completion, `stdin` written from a thread so a large
    /// input never deadlocks against the command's output.
    pub fn command(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut child = self
            .binary(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_owned();
        let feeder = std::thread::spawn(move || input.write_all(stdin.as_bytes()));
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        feeder.join().unwrap().map_err(|e| e.to_string())?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() { Ok(text) } else { Err(text) }
    }

    pub fn start_worker(&mut self, slot: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("worker-{slot}.log")))
            .unwrap();
        let admin_port = free_port();
        let child = self
            .binary(&["run"])
            .env("IM1_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .envs(self.defect.map(|d| ("CHAOS_PLANTED_DEFECT", d)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("a worker starts");
        if self.workers.len() <= slot {
            self.workers.resize_with(slot + 1, || None);
        }
        self.workers[slot] = Some(Worker { child, admin_port, started: Instant::now() });
    }

    pub fn start_workers(&mut self) {
        for slot in 0..self.shape.workers {
            self.start_worker(slot);
        }
    }

    /// Resident memory high-water mark of a live worker, remembered per slot.
    pub fn note_rss(&mut self, slot: usize) {
        let Some(worker) = self.workers.get(slot).and_then(Option::as_ref) else { return };
        if let Some(kb) = peak_rss_kb(worker.child.id()) {
            let peak = self.peak_rss_kb.entry(slot).or_default();
            *peak = (*peak).max(kb);
        }
    }

    /// SIGKILL: the worker dies holding whatever it had claimed.
    pub fn kill(&mut self, slot: usize) {
        self.note_rss(slot);
        if let Some(mut worker) = self.workers[slot].take() {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
            self.kills += 1;
        }
    }

    /// SIGTERM, the graceful path: the worker must exit 0 within its shutdown grace (plus
    /// a margin for start-up and the last writes); anything else is a breach. Returns how
    /// long it took.
    ///
    /// A graceful exit gives back every claim it did not finish: none may be left leased
    /// to the process (they would block other workers for a lease).
    pub async fn terminate(&mut self, slot: usize) -> Option<Duration> {
        self.note_rss(slot);
        let pid = self.workers[slot].as_ref()?.child.id();
        let process_id = self.process_id(pid).await;
        let mut worker = self.workers[slot].take()?;
        let asked = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let limit = crate::SHUTDOWN_GRACE + Duration::from_secs(5);
        let status = wait_at_most(&mut worker.child, limit).await;
        match status {
            Some(s) if s.success() => {
                if let Some(process_id) = process_id
                    && let Some(left) = self.claims_held_by(process_id).await
                    && left > 0
                {
                    self.breaches.push(format!(
                        "worker {slot} exited gracefully leaving {left} claim(s) leased to itself, blocking others for a lease"
                    ));
                }
                Some(asked.elapsed())
            }
            Some(s) => {
                self.breaches.push(format!("worker {slot} exited {s} after SIGTERM, not 0"));
                Some(asked.elapsed())
            }
            None => {
                self.breaches.push(format!("worker {slot} did not exit within {limit:?} of SIGTERM (hang)"));
                let _ = worker.child.kill();
                let _ = worker.child.wait();
                None
            }
        }
    }

    /// The service's id for a live worker (its `im1_processes` row), when it has
    /// registered and the database answers.
    pub async fn process_id(&self, pid: u32) -> Option<uuid::Uuid> {
        let lookup = async {
            let mut db = PgConnection::connect(&self.db_url).await.ok()?;
            sqlx::query_scalar("SELECT process_id FROM im1_processes WHERE pid = $1 ORDER BY started_at DESC LIMIT 1")
                .bind(pid as i32)
                .fetch_optional(&mut db)
                .await
                .ok()?
        };
        tokio::time::timeout(Duration::from_secs(5), lookup).await.ok()?
    }

    /// Credentials whose live lease belongs to `process_id`, when the database answers.
    async fn claims_held_by(&self, process_id: uuid::Uuid) -> Option<i64> {
        let count = async {
            let mut db = PgConnection::connect(&self.db_url).await.ok()?;
            sqlx::query_scalar(
                "SELECT count(*) FROM im1_credentials WHERE lease_owner = $1 AND lease_expires_at > now()",
            )
            .bind(process_id)
            .fetch_one(&mut db)
            .await
            .ok()
        };
        tokio::time::timeout(Duration::from_secs(5), count).await.ok()?
    }

    /// The service ids of the workers alive now.
    pub async fn live_process_ids(&self) -> Vec<uuid::Uuid> {
        let mut ids = Vec::new();
        for worker in self.workers.iter().flatten() {
            ids.extend(self.process_id(worker.child.id()).await);
        }
        ids
    }

    /// Workers that ended without being asked to, each a breach.
    pub fn check_alive(&mut self) {
        for (slot, worker) in self.workers.iter_mut().enumerate() {
            if let Some(w) = worker
                && let Ok(Some(status)) = w.child.try_wait()
            {
                self.breaches.push(format!(
                    "worker {slot} exited by itself ({status}) {:.0?} after it started; it should have reconnected",
                    w.started.elapsed()
                ));
                *worker = None;
            }
        }
    }

    /// Each live worker's `/readyz` answer (HTTP status, or the failure to get one).
    pub async fn readiness(&self) -> Vec<(usize, Result<u16, String>)> {
        let mut answers = Vec::new();
        for (slot, worker) in self.workers.iter().enumerate() {
            let Some(worker) = worker else { continue };
            let url = format!("http://127.0.0.1:{}/readyz", worker.admin_port);
            let answer = self
                .http
                .get(url)
                .timeout(Duration::from_secs(8))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string());
            answers.push((slot, answer));
        }
        answers
    }

    /// Scripts a token's answers in the simulator.
    pub async fn script(&self, token: &str, steps: &serde_json::Value) {
        self.http
            .put(self.sim_url(&format!("/_sim/tokens/{token}")))
            .header("content-type", "application/json")
            .body(steps.to_string())
            .send()
            .await
            .expect("the simulator takes the script");
    }

    /// The simulator's answer for tokens without a script.
    pub async fn set_default(&self, step: &serde_json::Value) {
        self.http
            .put(self.sim_url("/_sim/default"))
            .header("content-type", "application/json")
            .body(step.to_string())
            .send()
            .await
            .expect("the simulator takes the default");
    }

    /// Every answer the simulator serves is delayed this much from now on.
    pub async fn set_latency(&self, latency_ms: u64) {
        self.http
            .put(self.sim_url("/_sim/latency"))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "latency_ms": latency_ms }).to_string())
            .send()
            .await
            .expect("the simulator takes the latency");
    }

    /// Check calls the simulator has had, per token (tokens never called are absent).
    pub async fn token_calls(&self) -> HashMap<String, u64> {
        let body: serde_json::Value = self
            .http
            .get(self.sim_url("/_sim/token-calls"))
            .send()
            .await
            .expect("the simulator answers")
            .text()
            .await
            .map(|t| serde_json::from_str(&t).expect("the simulator's token counts are JSON"))
            .expect("the simulator's token counts");
        let tokens = body["tokens"].as_object().expect("a map of tokens");
        tokens.iter().map(|(t, n)| (t.clone(), n.as_u64().unwrap_or(0))).collect()
    }

    /// Supplier calls of every kind the simulator has had.
    pub async fn total_calls(&self) -> u64 {
        let body: serde_json::Value = match self.http.get(self.sim_url("/_sim/calls")).send().await {
            Ok(r) => r.text().await.map(|t| serde_json::from_str(&t).unwrap_or_default()).unwrap_or_default(),
            Err(_) => return 0,
        };
        fn sum(v: &serde_json::Value) -> u64 {
            match v {
                serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
                serde_json::Value::Object(m) => m.values().map(sum).sum(),
                _ => 0,
            }
        }
        sum(&body)
    }

    pub async fn db(&self) -> PgConnection {
        PgConnection::connect(&self.db_url).await.expect("the scenario's database")
    }

    /// Waits until at least `n` credentials have been checked (the workers are past their
    /// start-up and canary probes, working on rows); false (with a breach) if a minute
    /// passes first.
    pub async fn until_checked(&mut self, n: i64) -> bool {
        let mut db = self.db().await;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let checked: i64 =
                sqlx::query_scalar("SELECT count(*) FROM im1_credentials WHERE last_checked_at IS NOT NULL")
                    .fetch_one(&mut db)
                    .await
                    .expect("the scenario's database answers");
            if checked >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.breaches.push(format!("fewer than {n} credentials checked a minute after the workers started"));
        false
    }

    pub async fn terminate_backends(&self) {
        if let Ok(mut admin) = PgConnection::connect(&self.cluster.url("postgres")).await {
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&self.db_name)
            .execute(&mut admin)
            .await;
        }
    }

    /// Stops every worker gracefully (breaches noted), the simulator, and drops the
    /// database. Returns the workers' logs directory.
    pub async fn teardown(mut self) -> (Vec<Failure>, std::path::PathBuf, HashMap<usize, u64>) {
        self.check_alive();
        for slot in 0..self.workers.len() {
            self.terminate(slot).await;
        }
        let _ = self.sim.kill();
        let _ = self.sim.wait();
        if let Ok(mut admin) = PgConnection::connect(&self.cluster.url("postgres")).await {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await;
        }
        (std::mem::take(&mut self.breaches), self.logs.clone(), std::mem::take(&mut self.peak_rss_kb))
    }
}

/// Another client holding every connection the server allows.
pub struct Hogs(Vec<PgConnection>);

impl Hogs {
    /// Takes every free connection slot, and says what the server answered when it
    /// refused one more (`None`: it never refused, up to twice its limit).
    pub async fn take(world: &World) -> (Hogs, Option<String>) {
        let mut hogs = Hogs(Vec::new());
        let refused = hogs.grab(world).await;
        (hogs, refused)
    }

    async fn grab(&mut self, world: &World) -> Option<String> {
        while self.0.len() < 2 * crate::cluster::MAX_CONNECTIONS as usize {
            match PgConnection::connect(&world.db_url).await {
                Ok(c) => self.0.push(c),
                Err(e) => return Some(e.to_string()),
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Terminates every connection the workers hold and takes the slots that frees (those
    /// of backends already gone; the rest at the next call). Returns how many were cut.
    pub async fn starve(&mut self, world: &World) -> i64 {
        let Some(hog) = self.0.first_mut() else { return 0 };
        let cut = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = $1 AND application_name = 'im1-revalidator'",
        )
        .bind(&world.db_name)
        .fetch_one(hog)
        .await
        .unwrap_or(0);
        self.grab(world).await;
        cut
    }
}

/// Waits for `child` to exit, at most `limit`.
async fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// `VmHWM` (peak resident set) of a process, in kB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Deletes a world's logs once nothing in them is needed, unless `CHAOS_KEEP_LOGS` is set
/// (to read what a passing run did).
pub fn discard_logs(logs: &std::path::Path) {
    if std::env::var_os("CHAOS_KEEP_LOGS").is_some() {
        println!("  logs kept in {}", logs.display());
    } else {
        let _ = std::fs::remove_dir_all(logs);
    }
}
