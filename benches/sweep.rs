//! Sweep throughput benchmark: `cargo bench --bench sweep -- [options]`.
//!
//! Seeds N EMIS credentials into a fresh database through the real `credentials import`
//! command (timed: rows per second and peak memory end to end), starts the
//! simulator as its own process and the real `im1-revalidator sweep` as another, and
//! reports checks per second, PostgreSQL statements per check (transactions committed in
//! the bench database, read from `pg_stat_database`; every statement the sweep sends is
//! its own transaction) and the sweep process's peak resident memory (VmHWM).
//!
//! Options: `--credentials N` (default 100000), `--latency-ms MS` (simulator delay per
//! answer, default 0; the mean with `--latency-spread-ms SD`, log-normal), `--tail-share F`
//! and `--tail-ms MS` (that share of answers takes that long), `--concurrency C` (default 64), `--sweeps K` (default 1), `--batch B` (IM1_BATCH_SIZE),
//! `--explain` (print EXPLAIN ANALYZE of the claim query), `--keep`, `--import-only` (stop
//! after the import),
//! `--console` (also start `run` with the operator console on the bench database, as a
//! deployment serving it would, and no schedule of its own), `--refresh-ms MS` (with
//! `--console`: fetch the overview's live section every MS milliseconds during the sweeps,
//! as an open overview does, and report how long each fetch took; 0, the default, leaves
//! the page closed).
//! Needs a PostgreSQL server: DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

const BIN: &str = env!("CARGO_BIN_EXE_im1-revalidator");
const KEY: &str = "bench:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Options {
    credentials: u64,
    latency_ms: u64,
    latency_spread_ms: u64,
    tail_share: f64,
    tail_ms: u64,
    concurrency: usize,
    sweeps: u32,
    replicas: usize,
    batch: Option<u64>,
    explain: bool,
    keep: bool,
    import_only: bool,
    /// `--profile nhs`: the NHS-size stages in one run (see [`nhs_profile`]).
    nhs: bool,
    /// Vision credentials seeded besides the EMIS ones (the realistic-latency stage's).
    vision: u64,
    /// Export traces to an in-process OTLP sink, sampling each check with this probability.
    trace_ratio: Option<f64>,
    console: bool,
    refresh_ms: u64,
}

fn options() -> Options {
    let mut o = Options {
        credentials: 100_000,
        latency_ms: 0,
        latency_spread_ms: 0,
        tail_share: 0.0,
        tail_ms: 0,
        concurrency: 64,
        sweeps: 1,
        replicas: 1,
        batch: None,
        explain: false,
        keep: false,
        import_only: false,
        nhs: false,
        vision: 0,
        trace_ratio: None,
        console: false,
        refresh_ms: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse::<u64>().ok()).expect("a number after the option");
        match a.as_str() {
            "--credentials" => o.credentials = value(),
            "--latency-ms" => o.latency_ms = value(),
            "--latency-spread-ms" => o.latency_spread_ms = value(),
            "--tail-ms" => o.tail_ms = value(),
            "--concurrency" => o.concurrency = value() as usize,
            "--sweeps" => o.sweeps = value() as u32,
            "--replicas" => o.replicas = value().max(1) as usize,
            "--batch" => o.batch = Some(value()),
            "--vision" => o.vision = value(),
            "--explain" => o.explain = true,
            "--trace-ratio" => {
                o.trace_ratio = Some(args.next().and_then(|v| v.parse().ok()).expect("a ratio after --trace-ratio"))
            }
            "--keep" => o.keep = true,
            "--import-only" => o.import_only = true,
            "--tail-share" => {
                o.tail_share = args.next().and_then(|v| v.parse::<f64>().ok()).expect("a share after --tail-share")
            }
            "--profile" => match args.next().as_deref() {
                Some("nhs") => o.nhs = true,
                other => panic!("unknown profile {other:?} (known: nhs)"),
            },
            "--console" => o.console = true,
            "--refresh-ms" => o.refresh_ms = value(),
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    if o.nhs {
        // The NHS profile's defaults; --credentials and --vision still choose the size.
        if !std::env::args().any(|a| a == "--credentials") {
            o.credentials = 10_000_000;
        }
        if o.vision == 0 {
            o.vision = 300_000;
        }
        o.keep = true;
        o.explain = true;
    }
    o
}

/// The benchmark's database and its server.
struct Bench {
    url: String,
    db: String,
    pool: PgPool,
    /// To the server's maintenance database, to drop the bench database at the end.
    admin: sqlx::PgConnection,
    /// `--trace-ratio`: the sampling ratio and the sink the sweeps export to.
    trace_ratio: Option<f64>,
    sink: Option<std::sync::Arc<Sink>>,
}

/// How the simulator answers during one stage.
#[derive(Clone, Copy)]
struct Latency {
    mean_ms: u64,
    spread_ms: u64,
    tail_share: f64,
    tail_ms: u64,
}

impl Latency {
    const NONE: Latency = Latency { mean_ms: 0, spread_ms: 0, tail_share: 0.0, tail_ms: 0 };

    /// The mean answer time asked for, tail included.
    fn expected_mean_ms(&self) -> f64 {
        (1.0 - self.tail_share) * self.mean_ms as f64 + self.tail_share * self.tail_ms as f64
    }

    fn describe(&self) -> String {
        let tail = self.tail_share > 0.0;
        match (self.mean_ms, self.spread_ms) {
            (0, _) if !tail => "at once".to_owned(),
            (m, 0) if !tail => format!("{m} ms"),
            (m, sd) => format!("{m} ± {sd} ms, {:.0} % at {} ms", self.tail_share * 100.0, self.tail_ms),
        }
    }
}

/// One stage: `replicas` sweep processes at once over what is due.
struct Stage {
    name: &'static str,
    latency: Latency,
    concurrency: usize,
    replicas: usize,
    /// `sweep --supplier`: only that supplier's rows.
    supplier: Option<&'static str>,
    batch: Option<u64>,
}

/// What a stage measured.
struct Measured {
    name: &'static str,
    due: i64,
    checks: u64,
    seconds: f64,
    peak_mib: f64,
    statements_per_check: f64,
    notes: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`: a benchmark
    // is never a test, so it only announces itself there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("sweep benchmark: run with `cargo bench --bench sweep -- [options]`");
        return Ok(());
    }
    let o = options();
    // reqwest (the console reader's client) is built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut bench = Bench::create().await?;
    if let Some(ratio) = o.trace_ratio {
        bench.trace_ratio = Some(ratio);
        bench.sink = Some(otlp_sink().await?);
        println!("tracing on: each check sampled with probability {ratio}, exported to an in-process OTLP sink");
    }
    println!(
        "bench: {} EMIS credentials{}, database {}",
        o.credentials,
        if o.vision > 0 { format!(" and {} Vision", o.vision) } else { String::new() },
        bench.db
    );
    seed(&bench.url, o.credentials, o.vision).await?;
    sqlx::query("VACUUM ANALYZE im1_credentials").execute(&bench.pool).await?;
    if o.import_only {
        return bench.finish(o.keep).await;
    }
    if o.explain {
        explain(&bench.pool).await?;
    }
    if o.nhs {
        nhs_profile(&bench).await?;
        return bench.finish(true).await;
    }

    let stage = Stage {
        name: "sweep",
        latency: Latency {
            mean_ms: o.latency_ms,
            spread_ms: o.latency_spread_ms,
            tail_share: o.tail_share,
            tail_ms: o.tail_ms,
        },
        concurrency: o.concurrency,
        replicas: o.replicas,
        supplier: None,
        batch: o.batch,
    };
    // The console: `run` with IM1_SCHEDULE=off, signed in through a trusted header, and a
    // reader fetching the overview's live section every `refresh_ms`.
    let console_port = free_port()?;
    let _console = if o.console {
        let child = Command::new(BIN)
            .arg("run")
            .env("DATABASE_URL", &bench.url)
            .env("IM1_ENCRYPTION_KEYS", KEY)
            // No sweeps of its own (IM1_SCHEDULE=off): its supplier URL is never called.
            .env("IM1_EMIS_URL", format!("http://127.0.0.1:{}/emis", free_port()?))
            .env("IM1_EMIS_APPLICATION_ID", "bench")
            .env("IM1_EMIS_RATE", "100000")
            .env("IM1_EMIS_BURST", "100000")
            .env("IM1_EMIS_MAX_IN_FLIGHT", "10000")
            .env("IM1_SCHEDULE", "off")
            .env("IM1_ADMIN_ADDR", format!("127.0.0.1:{}", free_port()?))
            .env("IM1_CONSOLE_ADDR", format!("127.0.0.1:{console_port}"))
            .env("IM1_CONSOLE_TRUSTED_HEADER", "x-bench-user")
            .env("IM1_CONSOLE_REFRESH", "1s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        let console = Kill(child);
        wait_for_port(console_port).await?;
        println!(
            "console: run serving it on port {console_port}; overview refreshed every {} ms (0: not open)",
            o.refresh_ms
        );
        Some(console)
    } else {
        None
    };
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(o.console && o.refresh_ms > 0));
    let reader = tokio::spawn({
        let reading = reading.clone();
        let every = Duration::from_millis(o.refresh_ms.max(1));
        async move {
            let client = reqwest::Client::new();
            let mut took = Vec::new();
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let answer = client
                    .get(format!("http://127.0.0.1:{console_port}/overview/live"))
                    .header("x-bench-user", "bench")
                    .send()
                    .await;
                if let Ok(r) = answer
                    && r.status().is_success()
                    && r.text().await.is_ok_and(|t| t.contains("data-breaker"))
                {
                    took.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
            }
            took
        }
    });

    for n in 1..=o.sweeps {
        let m = run_stage(&bench, &stage).await?;
        println!(
            "sweep {n}: {} checks in {:.2}s = {:.0} checks/s; {:.4} statements per check; peak RSS {:.1} MiB",
            m.checks,
            m.seconds,
            m.checks as f64 / m.seconds,
            m.statements_per_check,
            m.peak_mib
        );
        for note in &m.notes {
            println!("  {note}");
        }
        if n < o.sweeps {
            make_all_due(&bench.pool).await?;
        }
    }
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut took = reader.await?;
    if !took.is_empty() {
        took.sort_by(f64::total_cmp);
        println!(
            "console: {} overview refreshes during the sweeps, median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            took.len(),
            took[took.len() / 2],
            took[(took.len() * 95 / 100).min(took.len() - 1)],
            took[took.len() - 1]
        );
    }
    bench.finish(o.keep).await
}

/// Issue 18's stages on one database, printed as a table; the database is kept.
///
/// 1. Every credential (10M EMIS + 300k Vision by default), simulator answering at once,
///    `IM1_CONCURRENCY=64`.
/// 2. The Vision credentials only (`sweep --supplier vision`), the simulator answering in
///    300 ± 100 ms (log-normal) with 1 % of answers at 5 s, `IM1_CONCURRENCY=1024`.
/// 3. Every credential again, three replicas at once: combined throughput, duplicate
///    checks, lock waits.
///
/// Then three full sweeps' worth of churn is measured as dead tuples and sizes.
async fn nhs_profile(bench: &Bench) -> anyhow::Result<()> {
    let fast = Stage {
        name: "all, at once, 1 replica",
        latency: Latency::NONE,
        concurrency: 64,
        replicas: 1,
        supplier: None,
        batch: None,
    };
    let realistic = Stage {
        name: "Vision, 300±100 ms + 1 % at 5 s, C=1024",
        latency: Latency { mean_ms: 300, spread_ms: 100, tail_share: 0.01, tail_ms: 5000 },
        concurrency: 1024,
        replicas: 1,
        supplier: Some("vision"),
        batch: None,
    };
    let replicas = Stage { name: "all, at once, 3 replicas", replicas: 3, ..fast };
    let mut table = Vec::new();
    table.push(run_stage(bench, &fast).await?);
    sqlx::query("UPDATE im1_credentials SET next_check_at = '-infinity' WHERE supplier = 'vision'")
        .execute(&bench.pool)
        .await?;
    table.push(run_stage(bench, &realistic).await?);
    make_all_due(&bench.pool).await?;
    table.push(run_stage(bench, &replicas).await?);

    println!("\n| stage | due | checks | seconds | checks/s | statements/check | peak RSS (MiB) | notes |");
    println!("|---|---|---|---|---|---|---|---|");
    for m in &table {
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.4} | {:.1} | {} |",
            m.name,
            m.due,
            m.checks,
            m.seconds,
            m.checks as f64 / m.seconds,
            m.statements_per_check,
            m.peak_mib,
            m.notes.join("; ")
        );
    }
    bloat(&bench.pool).await
}

/// Dead tuples, sizes and events per credential after the sweeps.
async fn bloat(pool: &PgPool) -> anyhow::Result<()> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_live_tup, n_dead_tup, pg_total_relation_size(relid), pg_indexes_size(relid)
           FROM pg_stat_user_tables
          WHERE relname IN ('im1_credentials') OR relname LIKE 'im1_credential_events%'
          ORDER BY relname",
    )
    .fetch_all(pool)
    .await?;
    println!("\n| table | live tuples | dead tuples | total size (MiB) | index size (MiB) |");
    println!("|---|---|---|---|---|");
    for (table, live, dead, total, indexes) in rows {
        println!("| {table} | {live} | {dead} | {:.1} | {:.1} |", total as f64 / 1048576.0, indexes as f64 / 1048576.0);
    }
    let (credentials, events): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM im1_credentials), (SELECT count(*) FROM im1_credential_events)")
            .fetch_one(pool)
            .await?;
    println!("events per credential: {:.3}", events as f64 / credentials.max(1) as f64);
    Ok(())
}

/// Makes every credential due again, as a fresh cycle would.
async fn make_all_due(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("UPDATE im1_credentials SET next_check_at = '-infinity'").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE im1_credentials").execute(pool).await?;
    Ok(())
}

impl Bench {
    async fn create() -> anyhow::Result<Bench> {
        let server =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin_options: PgConnectOptions = server.parse()?;
        let db = format!("im1_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let mut admin = admin_options.connect().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut admin).await?;
        let url = format!(
            "postgres://{}@{}:{}/{db}",
            admin_options.get_username(),
            admin_options.get_host(),
            admin_options.get_port()
        );
        let pool = PgPool::connect(&url).await?;
        im1_revalidator::store::migrate(&pool).await?;
        Ok(Bench { url, db, pool, admin, trace_ratio: None, sink: None })
    }

    /// Reports the database's size, then drops it unless `keep`.
    async fn finish(mut self, keep: bool) -> anyhow::Result<()> {
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&self.pool).await?;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials").fetch_one(&self.pool).await?;
        println!(
            "database size {:.1} MiB ({:.0} bytes per credential)",
            size as f64 / 1048576.0,
            size as f64 / rows.max(1) as f64
        );
        self.pool.close().await;
        if keep {
            println!("kept database {} (DATABASE_URL={})", self.db, self.url);
        } else {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", self.db)))
                .execute(&mut self.admin)
                .await?;
        }
        self.admin.close().await?;
        Ok(())
    }
}

/// Starts the simulator as its own process, answering with `latency`.
async fn start_simulator(db: &str, latency: Latency) -> anyhow::Result<(Kill, u16)> {
    let port = free_port()?;
    let scenario = std::env::temp_dir().join(format!("{db}-{port}.json"));
    std::fs::write(
        &scenario,
        serde_json::json!({
            "latency_ms": latency.mean_ms,
            "latency_spread_ms": latency.spread_ms,
            "tail_share": latency.tail_share,
            "tail_ms": latency.tail_ms,
            "count_by_token": false,
        })
        .to_string(),
    )?;
    let sim = Kill(
        Command::new(BIN)
            .args(["simulate", "--addr", &format!("127.0.0.1:{port}"), "--scenario"])
            .arg(&scenario)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_for_port(port).await?;
    std::fs::remove_file(&scenario).ok();
    Ok((sim, port))
}

/// Runs one stage's sweep processes against a fresh simulator and measures them.
async fn run_stage(bench: &Bench, stage: &Stage) -> anyhow::Result<Measured> {
    let (_sim, port) = start_simulator(&bench.db, stage.latency).await?;
    let pool = &bench.pool;
    let due: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM im1_credentials WHERE next_check_at <= now() AND status <> 'unsupported'
            AND ($1::text IS NULL OR supplier = $1)",
    )
    .bind(stage.supplier)
    .fetch_one(pool)
    .await?;
    let before = commits(pool, &bench.db).await?;
    let mut children = Vec::with_capacity(stage.replicas);
    for _ in 0..stage.replicas {
        let mut command = Command::new(BIN);
        command.args(["sweep", "--json"]);
        if let Some(supplier) = stage.supplier {
            command.args(["--supplier", supplier]);
        }
        let child = command
            .env("DATABASE_URL", &bench.url)
            .env("IM1_ENCRYPTION_KEYS", KEY)
            .env("IM1_EMIS_URL", format!("http://127.0.0.1:{port}/emis"))
            .env("IM1_EMIS_APPLICATION_ID", "bench")
            .env("IM1_VISION_URL", format!("http://127.0.0.1:{port}/vision"))
            .env("IM1_VISION_PROVIDER_ID", "bench")
            .env("IM1_CONCURRENCY", stage.concurrency.to_string())
            .env("IM1_HTTP_TIMEOUT", "10s")
            // Every defence is on (breaker, guard, retries, shared-state sync, throttle);
            // the rate limits are set high enough not to bind, so the figure is the cost of
            // the machinery, not of a limit.
            .env("IM1_EMIS_RATE", "100000")
            .env("IM1_EMIS_BURST", "100000")
            .env("IM1_EMIS_MAX_IN_FLIGHT", "10000")
            .env("IM1_VISION_RATE", "100000")
            .env("IM1_VISION_BURST", "100000")
            .env("IM1_VISION_MAX_IN_FLIGHT", "10000")
            .env(
                "IM1_BATCH_SIZE",
                stage.batch.map_or_else(|| im1_revalidator::config::DEFAULT_BATCH_SIZE.to_string(), |b| b.to_string()),
            )
            .env("RUST_LOG", "warn")
            .envs(trace_env(bench.trace_ratio, bench.sink.as_ref()))
            .stdout(Stdio::piped())
            .spawn()?;
        children.push(child);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let in_flight = tokio::spawn(sample_in_flight(port, stop.clone()));
    let lock_waits = tokio::spawn(sample_lock_waits(pool.clone(), bench.db.clone(), stop.clone()));
    let started = Instant::now();
    let measured = measure_all(&mut children).await?;
    let wall = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (in_flight, lock_waits) = (in_flight.await?, lock_waits.await?);

    let mut checks = 0;
    let mut seconds: f64 = 0.0;
    let mut peak_kib = 0;
    for (child, (status, peak)) in children.iter_mut().zip(measured) {
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().expect("piped"), &mut out)?;
        anyhow::ensure!(status.success(), "sweep failed: {status}");
        let report: serde_json::Value = serde_json::from_str(&out)?;
        checks += report["checks"].as_u64().unwrap_or(0);
        seconds = seconds.max(report["seconds"].as_f64().unwrap_or(wall));
        peak_kib = peak_kib.max(peak);
    }
    // Statistics reach pg_stat_database within a second of each transaction.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let statements = commits(pool, &bench.db).await? - before;
    let mut notes = Vec::new();
    let cpu = f64::from_bits(CPU_SECONDS.load(std::sync::atomic::Ordering::Relaxed));
    notes.push(format!("sweep CPU {cpu:.2}s = {:.1} µs per check", cpu * 1e6 / checks.max(1) as f64));
    if let Some(sink) = &bench.sink {
        // The sweep processes export what is queued before they exit.
        let (requests, spans) = sink.take();
        notes.push(format!("traces: {spans} spans received in {requests} export requests"));
    }
    if stage.latency.mean_ms > 0 {
        let mean_ms = stage.latency.expected_mean_ms();
        let ideal = stage.concurrency as f64 * stage.replicas as f64 / (mean_ms / 1000.0);
        notes.push(format!(
            "simulator {}: ideal C ÷ mean latency ({mean_ms:.0} ms) = {ideal:.0} checks/s, achieved {:.1} %",
            stage.latency.describe(),
            100.0 * checks as f64 / seconds / ideal
        ));
        notes.push(slot_use(&in_flight, stage.concurrency * stage.replicas));
    }
    if stage.replicas > 1 {
        notes.push(format!(
            "{} replicas: {} duplicate checks ({checks} checks of {due} due)",
            stage.replicas,
            checks as i64 - due
        ));
        notes.push(lock_use(&lock_waits));
    }
    Ok(Measured {
        name: stage.name,
        due,
        checks,
        seconds,
        peak_mib: peak_kib as f64 / 1024.0,
        statements_per_check: statements as f64 / checks.max(1) as f64,
        notes,
    })
}

/// Samples, every 100 ms until `stop`, how many of the bench database's backends wait on a
/// lock (claim contention between replicas).
async fn sample_lock_waits(pool: PgPool, db: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Vec<i64> {
    let mut samples = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let waiting: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'")
                .bind(&db)
                .fetch_one(&pool)
                .await;
        if let Ok(n) = waiting {
            samples.push(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples
}

fn lock_use(samples: &[i64]) -> String {
    if samples.is_empty() {
        return "lock waits: no samples".to_owned();
    }
    let with = samples.iter().filter(|&&n| n > 0).count();
    format!(
        "lock waits in {:.1} % of {} samples (at most {} backends at once)",
        100.0 * with as f64 / samples.len() as f64,
        samples.len(),
        samples.iter().max().copied().unwrap_or(0)
    )
}

/// Samples, every 100 ms until `stop`, how many requests the simulator is serving: the
/// sweep's busy check slots, seen from the supplier's side.
async fn sample_in_flight(port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Vec<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut samples = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut answer = String::new();
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let request = "GET /_sim/in-flight HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n";
            if stream.write_all(request.as_bytes()).await.is_ok() {
                let _ = stream.read_to_string(&mut answer).await;
            }
        }
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        if let Ok(counts) = serde_json::from_str::<serde_json::Value>(body) {
            samples.push(["emis", "tpp", "vision"].iter().filter_map(|s| counts[s].as_u64()).sum());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples
}

/// How full the check slots were, leaving out the first and last 10 % of samples (the
/// sweep filling its slots and draining them).
fn slot_use(samples: &[u64], concurrency: usize) -> String {
    let trim = samples.len() / 10;
    let steady = &samples[trim..samples.len() - trim];
    if steady.is_empty() {
        return "slot use: too few samples".to_owned();
    }
    let mean = steady.iter().sum::<u64>() as f64 / steady.len() as f64;
    let idle = steady.iter().filter(|&&n| (n as f64) < 0.95 * concurrency as f64).count();
    format!(
        "slot use over {} samples (steady state): mean {mean:.0} of {concurrency} in flight ({:.1} %); \
         {:.1} % of samples had more than 5 % of slots idle",
        steady.len(),
        100.0 * mean / concurrency as f64,
        100.0 * idle as f64 / steady.len() as f64
    )
}

/// The CPU seconds the children of the last [`measure_all`] used, to the last 20 ms poll.
static CPU_SECONDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Waits for every child, sampling each one's peak resident memory; returns each exit
/// status and peak in KiB.
async fn measure_all(children: &mut [Child]) -> anyhow::Result<Vec<(std::process::ExitStatus, u64)>> {
    let mut peaks = vec![0u64; children.len()];
    let mut cpu = vec![0f64; children.len()];
    let mut statuses = vec![None; children.len()];
    while statuses.iter().any(Option::is_none) {
        for (i, child) in children.iter_mut().enumerate() {
            if statuses[i].is_some() {
                continue;
            }
            if let Some(kib) = vm_hwm(child.id()) {
                peaks[i] = peaks[i].max(kib);
            }
            if let Some(seconds) = cpu_seconds(child.id()) {
                cpu[i] = cpu[i].max(seconds);
            }
            statuses[i] = child.try_wait()?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_cpu: f64 = cpu.iter().sum();
    CPU_SECONDS.store(total_cpu.to_bits(), std::sync::atomic::Ordering::Relaxed);
    Ok(statuses.into_iter().flatten().zip(peaks).collect())
}

/// Seeds through the real import command, end to end: a JSON-lines file of `n` EMIS
/// credentials, imported by `im1-revalidator credentials import FILE` (validation,
/// AES-GCM, COPY into staging, duplicate detection, one set-based insert with events).
async fn seed(url: &str, n: u64, vision: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let file = std::env::temp_dir().join(format!("im1-bench-import-{}.jsonl", uuid::Uuid::new_v4().simple()));
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&file)?);
        for i in 0..n {
            writeln!(
                out,
                r#"{{"user_id":"bench-{i:08}","supplier":"emis","ods_code":"A{:05}","token":{{"access_identity_guid":"{}"}}}}"#,
                i % 7000,
                uuid::Uuid::new_v4()
            )?;
        }
        for i in 0..vision {
            writeln!(
                out,
                r#"{{"user_id":"bench-vision-{i:08}","supplier":"vision","ods_code":"V{:05}","token":{{"rosu_account_id":"{}","api_key":"{}"}}}}"#,
                i % 2000,
                uuid::Uuid::new_v4(),
                uuid::Uuid::new_v4()
            )?;
        }
        out.flush()?;
    }
    let n = n + vision;
    let bytes = std::fs::metadata(&file)?.len();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["credentials", "import"])
        .arg(&file)
        .env("DATABASE_URL", url)
        .env("IM1_ENCRYPTION_KEYS", KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let (status, peak_kib) = measure_all(std::slice::from_mut(&mut child)).await?.remove(0);
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&file).ok();
    anyhow::ensure!(status.success(), "import failed: {status}");
    println!(
        "import: {n} lines ({:.0} MiB) in {seconds:.1}s = {:.0} rows/s end to end; peak RSS {:.1} MiB",
        bytes as f64 / 1048576.0,
        n as f64 / seconds,
        peak_kib as f64 / 1024.0
    );
    Ok(())
}

async fn explain(pool: &PgPool) -> anyhow::Result<()> {
    let plan: Vec<(String,)> = sqlx::query_as(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
         WITH due AS (
             SELECT user_id FROM im1_credentials
              WHERE supplier = 'emis' AND status <> 'unsupported'
                AND next_check_at <= now() AND (lease_expires_at IS NULL OR lease_expires_at <= now())
              ORDER BY next_check_at LIMIT 1000 FOR UPDATE SKIP LOCKED)
         UPDATE im1_credentials c SET lease_expires_at = now() + interval '2 minutes',
                lease_owner = gen_random_uuid(), fence = c.fence + 1
           FROM due WHERE c.user_id = due.user_id
         RETURNING c.user_id",
    )
    .fetch_all(pool)
    .await?;
    println!("EXPLAIN of the claim query:");
    for (line,) in plan {
        println!("  {line}");
    }
    // The write-back's shape: sorted input driving a nested loop over the primary key, so
    // rows are updated (locked) in user_id order.
    let plan: Vec<(String,)> = sqlx::query_as(
        "EXPLAIN (COSTS OFF)
         UPDATE im1_credentials c SET failures = c.failures
           FROM (SELECT * FROM UNNEST($1::text[], $2::int8[]) AS v(user_id, fence) ORDER BY user_id) v
          WHERE c.user_id = v.user_id AND c.fence = v.fence",
    )
    .bind((0..1000).map(|i| format!("bench-{:08}", i * 97)).collect::<Vec<_>>())
    .bind(vec![0i64; 1000])
    .fetch_all(pool)
    .await?;
    println!("EXPLAIN of the write-back's update:");
    for (line,) in plan {
        println!("  {line}");
    }
    // Undo the bench claim so the sweep sees every row.
    sqlx::query("UPDATE im1_credentials SET lease_expires_at = NULL, lease_owner = NULL").execute(pool).await?;
    Ok(())
}

async fn commits(pool: &PgPool, db: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
        .bind(db)
        .fetch_one(pool)
        .await?)
}

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its `)`).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("the simulator did not start")
}

/// Kills the child process when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spans and export requests an OTLP/HTTP sink received.
#[derive(Default)]
struct Sink {
    counts: std::sync::Mutex<(u64, u64)>,
    addr: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Sink {
    /// (requests, spans) since the last call.
    fn take(&self) -> (u64, u64) {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

/// An OTLP/HTTP receiver that decodes each export (as a collector would) and counts spans.
async fn otlp_sink() -> anyhow::Result<std::sync::Arc<Sink>> {
    use prost::Message;
    let sink = std::sync::Arc::new(Sink::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    sink.addr.set(listener.local_addr()?).ok();
    let state = sink.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                let spans: usize =
                    request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                let mut counts = state.counts.lock().unwrap();
                counts.0 += 1;
                counts.1 += spans as u64;
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(sink)
}

/// The sweep's OTEL_* environment for `--trace-ratio`.
fn trace_env(ratio: Option<f64>, sink: Option<&std::sync::Arc<Sink>>) -> Vec<(String, String)> {
    let (Some(ratio), Some(sink)) = (ratio, sink) else { return Vec::new() };
    let addr = sink.addr.get().expect("the sink is bound");
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{addr}"))];
    if ratio >= 1.0 {
        env.push(("OTEL_TRACES_SAMPLER".to_owned(), "always_on".to_owned()));
    } else {
        env.push(("OTEL_TRACES_SAMPLER".to_owned(), "parentbased_traceidratio".to_owned()));
        env.push(("OTEL_TRACES_SAMPLER_ARG".to_owned(), ratio.to_string()));
    }
    env
}
