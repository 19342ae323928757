//! `spawn_app()`: a database, a simulator, an engine on a manual clock, and helpers to
//! import, sweep and read rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use im1_revalidator::clock::ManualClock;
use im1_revalidator::config::Settings;
use im1_revalidator::shutdown::Shutdown;
use im1_revalidator::simulator::{RunningSimulator, Scenario, Simulator, Step};
use im1_revalidator::store::import::{ImportStats, ImportTx};
use im1_revalidator::store::status::StatusRow;
use im1_revalidator::sweep::{Engine, SweepReport, SweepRequest, Trigger};
use im1_revalidator::token::parse_import_line;
use sqlx::PgPool;

/// A fixed key for tests (base64 of 32 bytes).
pub const KEY_A: &str = "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const KEY_B: &str = "b:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap()
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct TestApp {
    pub pool: PgPool,
    pub clock: ManualClock,
    pub sim: Simulator,
    pub running: RunningSimulator,
    pub vars: HashMap<String, String>,
}

impl TestApp {
    /// Settings as the environment would give them, pointing at this app's simulator.
    pub fn settings(&self) -> Settings {
        Settings::from_vars(&self.vars).expect("test settings are valid")
    }

    /// A sweep engine, as one process would have it (each call is a new process id).
    pub fn engine(&self) -> Engine {
        self.engine_with(&self.vars)
    }

    pub fn engine_with(&self, vars: &HashMap<String, String>) -> Engine {
        let mut settings = Settings::from_vars(vars).expect("test settings are valid");
        let mut engine =
            im1_revalidator::cli::engine(&mut settings, self.pool.clone(), Arc::new(self.clock.clone()), "test")
                .expect("engine builds");
        engine.progress = Arc::new(AtomicU64::new(0));
        engine
    }

    pub async fn sweep(&self) -> SweepReport {
        sweep_with(&self.engine()).await
    }

    /// Imports JSON lines through the same path as `credentials import`.
    pub async fn import(&self, lines: &[serde_json::Value]) -> ImportStats {
        let settings = self.settings();
        let keys = settings.keys.as_ref().expect("keys configured");
        let mut tx = ImportTx::begin(&self.pool, keys, self.clock.now_utc()).await.unwrap();
        let batch = lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, parse_import_line(&l.to_string()).expect("valid test line")))
            .collect();
        let dups = tx.add(batch).await.unwrap();
        assert!(dups.is_empty());
        tx.commit().await.unwrap()
    }

    /// Imports one EMIS credential whose token the simulator answers with `script`.
    pub async fn emis_user(&self, user: &str, script: &[&str]) -> String {
        let token = format!("guid-{user}");
        if !script.is_empty() {
            self.sim.script(&token, steps(script));
        }
        self.import(&[emis_line(user, &token)]).await;
        token
    }

    pub async fn row(&self, user: &str) -> StatusRow {
        im1_revalidator::store::status::row(&self.pool, user).await.unwrap().expect("row exists")
    }

    pub async fn events(&self, user: &str) -> Vec<Event> {
        sqlx::query_as::<_, Event>(
            "SELECT kind, to_status, outcome, evidence \
             FROM im1_credential_events WHERE user_id = $1 ORDER BY id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub fn advance(&self, by: TimeDelta) {
        self.clock.advance(by);
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct Event {
    pub kind: String,
    pub to_status: String,
    pub outcome: Option<String>,
    pub evidence: serde_json::Value,
}

pub async fn sweep_with(engine: &Engine) -> SweepReport {
    engine
        .sweep(SweepRequest { supplier: None, dry_run: false, trigger: Trigger::Command }, Shutdown::never())
        .await
        .expect("sweep completes")
}

pub fn steps(script: &[&str]) -> Vec<Step> {
    script.iter().map(|s| serde_json::from_value(serde_json::json!(s)).expect("known behaviour")).collect()
}

pub fn emis_line(user: &str, token: &str) -> serde_json::Value {
    serde_json::json!({"user_id": user, "supplier": "emis", "ods_code": "A81001",
                       "token": {"access_identity_guid": token}})
}

/// Extension so tests read the manual clock like the code does.
pub trait NowUtc {
    fn now_utc(&self) -> DateTime<Utc>;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        im1_revalidator::clock::Clock::now(self)
    }
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    install_crypto();
    let sim = Simulator::new(Scenario::default());
    let running = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("simulator starts");
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", "postgres://unused@127.0.0.1/unused"),
        ("IM1_ENCRYPTION_KEYS", KEY_A),
        ("IM1_EMIS_APPLICATION_ID", "test-app"),
        ("IM1_HTTP_TIMEOUT", "2s"),
        ("IM1_CHECK_TIMEOUT", "5s"),
        ("IM1_CONCURRENCY", "16"),
        // Rate limits that never bind and no retries, unless a test asks: most tests count
        // the simulator's calls exactly. The safety tests set their own.
        ("IM1_EMIS_RATE", "100000"),
        ("IM1_EMIS_BURST", "100000"),
        ("IM1_EMIS_MAX_IN_FLIGHT", "1000"),
        ("IM1_TPP_RATE", "100000"),
        ("IM1_TPP_BURST", "100000"),
        ("IM1_TPP_MAX_IN_FLIGHT", "1000"),
        ("IM1_VISION_RATE", "100000"),
        ("IM1_VISION_BURST", "100000"),
        ("IM1_VISION_MAX_IN_FLIGHT", "1000"),
        ("IM1_RETRY_ATTEMPTS", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([("IM1_EMIS_URL".to_owned(), running.emis_url())])
    .collect();
    TestApp { pool, clock: ManualClock::new(t0()), sim, running, vars }
}

/// The database URL of a `#[sqlx::test]` pool, for running the binary against it.
pub fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("postgres")
    )
}

/// Adapter tests: port 0 on loopback.
pub fn localhost() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Adapter tests: a plain HTTP client, as an adapter gets one.
pub fn adapter_http() -> im1_revalidator::suppliers::HttpClient {
    install_crypto();
    im1_revalidator::suppliers::HttpClient::new(reqwest::Client::builder().build().expect("client builds"))
}

/// Adapter tests: a simulator on loopback with `scenario`.
pub async fn start(scenario: Scenario) -> (Simulator, RunningSimulator) {
    let sim = Simulator::new(scenario);
    let running = sim.spawn(localhost()).await.expect("simulator binds");
    (sim, running)
}

pub fn transient() -> im1_revalidator::suppliers::Outcome {
    im1_revalidator::suppliers::Outcome::transient()
}

pub fn retry_after(secs: u64) -> im1_revalidator::suppliers::Outcome {
    im1_revalidator::suppliers::Outcome::Transient { retry_after: Some(std::time::Duration::from_secs(secs)) }
}

/// The built binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_im1-revalidator");

/// Runs the built binary with only `PATH` and `env` in its environment, `stdin` on its
/// standard input, and waits for it off the async runtime.
pub async fn run_binary(args: &[&str], env: Vec<(String, String)>, stdin: String) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.args(&args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // A command that never reads its input may already have exited.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

/// Exit code, stdout and stderr of a finished command.
pub fn outcome(out: &std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `run` against this test's database and simulator on a free admin port, its output
/// captured.
pub fn spawn_run(pool: &PgPool, app: &TestApp, schedule: &str) -> (u16, std::process::Child) {
    spawn_run_with(pool, app, schedule, &[])
}

/// [`spawn_run`] with more environment.
pub fn spawn_run_with(
    pool: &PgPool,
    app: &TestApp,
    schedule: &str,
    extra: &[(&str, &str)],
) -> (u16, std::process::Child) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", database_url(pool))
        .env("IM1_ENCRYPTION_KEYS", KEY_A)
        .env("IM1_EMIS_URL", app.running.emis_url())
        .env("IM1_EMIS_APPLICATION_ID", "app")
        .env("IM1_SCHEDULE", schedule)
        .env("IM1_ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (port, child)
}

/// Polls `url` until it answers `want` (the process is starting up; no fixed sleep).
pub async fn wait_for_status(client: &reqwest::Client, url: &str, want: u16) -> String {
    for _ in 0..400 {
        if let Ok(r) = client.get(url).send().await
            && r.status().as_u16() == want
        {
            return r.text().await.unwrap_or_default();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{url} never answered {want}");
}

/// The binary's environment for this test's database (`url`) and simulator (EMIS), plus
/// `extra` (later entries win).
pub fn binary_env(url: String, app: &TestApp, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), url),
        ("IM1_ENCRYPTION_KEYS".into(), KEY_A.into()),
        ("IM1_EMIS_URL".into(), app.running.emis_url()),
        ("IM1_EMIS_APPLICATION_ID".into(), "app".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Sends SIGTERM to a `run` process and waits for it to exit, off the async runtime.
pub async fn stop_run(mut child: std::process::Child) -> std::process::Output {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    tokio::task::spawn_blocking(move || {
        let _ = child.stdin.take();
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap()
}
