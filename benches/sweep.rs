//! Sweep throughput benchmark: `cargo bench --bench sweep -- [options]`.
//!
//! Seeds N EMIS credentials into a fresh database (through the import path), starts the
//! simulator as its own process and the real `im1-revalidator sweep` as another, and
//! reports checks per second, PostgreSQL statements per check (transactions committed in
//! the bench database, read from `pg_stat_database`; every statement the sweep sends is
//! its own transaction) and the sweep process's peak resident memory (VmHWM).
//!
//! Options: `--credentials N` (default 100000), `--latency-ms MS` (simulator delay per
//! answer, default 0), `--concurrency C` (default 64), `--sweeps K` (default 1), `--batch B` (IM1_BATCH_SIZE),
//! `--explain` (print EXPLAIN ANALYZE of the claim query), `--keep`, `--trace-ratio R` (export
//! traces over OTLP/HTTP to a sink in this process that decodes and counts them, sampling each
//! check with probability R: `OTEL_TRACES_SAMPLER=parentbased_traceidratio`; `1` is
//! `always_on`; absent, tracing is off).
//! Needs a PostgreSQL server: DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use im1_revalidator::crypto::Keyring;
use im1_revalidator::store::import::ImportTx;
use im1_revalidator::token::parse_import_line;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

const BIN: &str = env!("CARGO_BIN_EXE_im1-revalidator");
const KEY: &str = "bench:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Options {
    credentials: u64,
    latency_ms: u64,
    concurrency: usize,
    sweeps: u32,
    batch: Option<u64>,
    explain: bool,
    keep: bool,
    trace_ratio: Option<f64>,
}

fn options() -> Options {
    let mut o = Options {
        credentials: 100_000,
        latency_ms: 0,
        concurrency: 64,
        sweeps: 1,
        batch: None,
        explain: false,
        keep: false,
        trace_ratio: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse::<u64>().ok()).expect("a number after the option");
        match a.as_str() {
            "--credentials" => o.credentials = value(),
            "--latency-ms" => o.latency_ms = value(),
            "--concurrency" => o.concurrency = value() as usize,
            "--sweeps" => o.sweeps = value() as u32,
            "--batch" => o.batch = Some(value()),
            "--explain" => o.explain = true,
            "--trace-ratio" => {
                o.trace_ratio = Some(args.next().and_then(|v| v.parse().ok()).expect("a ratio after --trace-ratio"))
            }
            "--keep" => o.keep = true,
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    o
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
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin: PgConnectOptions = server.parse()?;
    let db = format!("im1_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let mut conn = admin.connect().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await?;
    let url = format!("postgres://{}@{}:{}/{db}", admin.get_username(), admin.get_host(), admin.get_port());
    let pool = PgPool::connect(&url).await?;
    im1_revalidator::store::migrate(&pool).await?;

    println!(
        "bench: {} credentials, simulator latency {} ms, concurrency {}",
        o.credentials, o.latency_ms, o.concurrency
    );
    let seeded = Instant::now();
    seed(&pool, o.credentials).await?;
    sqlx::query("VACUUM ANALYZE im1_credentials").execute(&pool).await?;
    println!(
        "seeded in {:.1}s ({:.0} rows/s through the import path)",
        seeded.elapsed().as_secs_f64(),
        o.credentials as f64 / seeded.elapsed().as_secs_f64()
    );

    if o.explain {
        explain(&pool).await?;
    }

    let port = free_port()?;
    let scenario = std::env::temp_dir().join(format!("{db}.json"));
    std::fs::write(&scenario, format!(r#"{{"latency_ms": {}, "count_by_token": false}}"#, o.latency_ms))?;
    let mut sim = Kill(
        Command::new(BIN)
            .args(["simulate", "--addr", &format!("127.0.0.1:{port}"), "--scenario"])
            .arg(&scenario)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_for_port(port).await?;
    let sink = match o.trace_ratio {
        Some(_) => Some(otlp_sink().await?),
        None => None,
    };
    if let Some(ratio) = o.trace_ratio {
        println!("tracing on: each check sampled with probability {ratio}, exported to an in-process OTLP sink");
    }

    for n in 1..=o.sweeps {
        let before = commits(&pool, &db).await?;
        let started = Instant::now();
        let mut child = Command::new(BIN)
            .args(["sweep", "--json"])
            .env("DATABASE_URL", &url)
            .env("IM1_ENCRYPTION_KEYS", KEY)
            .env("IM1_EMIS_URL", format!("http://127.0.0.1:{port}/emis"))
            .env("IM1_EMIS_APPLICATION_ID", "bench")
            .env("IM1_CONCURRENCY", o.concurrency.to_string())
            .env("IM1_HTTP_TIMEOUT", "10s")
            // Every defence is on (breaker, guard, retries, shared-state sync, throttle);
            // the rate limit is set high enough not to bind, so the figure is the cost of
            // the machinery, not of a limit.
            .env("IM1_EMIS_RATE", "100000")
            .env("IM1_EMIS_BURST", "100000")
            .env("IM1_EMIS_MAX_IN_FLIGHT", "10000")
            .env(
                "IM1_BATCH_SIZE",
                o.batch.map_or_else(|| im1_revalidator::config::DEFAULT_BATCH_SIZE.to_string(), |b| b.to_string()),
            )
            .env("RUST_LOG", "warn")
            .envs(trace_env(o.trace_ratio, sink.as_ref()))
            .stdout(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let mut peak_kib = 0u64;
        let mut cpu = 0f64;
        let status = loop {
            if let Some(kib) = vm_hwm(pid) {
                peak_kib = peak_kib.max(kib);
            }
            if let Some(seconds) = cpu_seconds(pid) {
                cpu = cpu.max(seconds);
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let wall = started.elapsed().as_secs_f64();
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().expect("piped"), &mut out)?;
        anyhow::ensure!(status.success(), "sweep failed: {status}");
        let report: serde_json::Value = serde_json::from_str(&out)?;
        let checks = report["checks"].as_u64().unwrap_or(0);
        let seconds = report["seconds"].as_f64().unwrap_or(wall);
        // Statistics reach pg_stat_database within a second of each transaction.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let statements = commits(&pool, &db).await? - before;
        println!(
            "sweep {n}: {checks} checks in {seconds:.2}s = {:.0} checks/s (process wall {wall:.2}s); \
             {statements} statements = {:.4} per check; peak RSS {:.1} MiB; sweep CPU {cpu:.2}s \
             = {:.1} µs per check (to the last 20 ms poll); outcomes {}",
            checks as f64 / seconds,
            statements as f64 / checks.max(1) as f64,
            peak_kib as f64 / 1024.0,
            cpu * 1e6 / checks.max(1) as f64,
            report["outcomes"]
        );
        if let Some(sink) = &sink {
            // The sweep process exports what is queued before it exits.
            let (requests, spans) = sink.take();
            println!("  traces: {spans} spans received in {requests} export requests");
        }
        if o.latency_ms > 0 {
            let ideal = o.concurrency as f64 / (o.latency_ms as f64 / 1000.0);
            println!(
                "  ideal concurrency/latency = {ideal:.0} checks/s; achieved {:.1} %",
                100.0 * checks as f64 / seconds / ideal
            );
        }
        if n < o.sweeps {
            sqlx::query("UPDATE im1_credentials SET next_check_at = '-infinity'").execute(&pool).await?;
            sqlx::query("VACUUM ANALYZE im1_credentials").execute(&pool).await?;
        }
    }
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&pool).await?;
    println!("database size {:.1} MiB", size as f64 / 1048576.0);

    sim.0.kill().ok();
    std::fs::remove_file(&scenario).ok();
    pool.close().await;
    if o.keep {
        println!("kept database {db}");
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db} WITH (FORCE)"))).execute(&mut conn).await?;
    }
    conn.close().await?;
    Ok(())
}

/// Seeds through the real import path (validation, encryption, batched upserts).
async fn seed(pool: &PgPool, n: u64) -> anyhow::Result<()> {
    let keys = Keyring::parse(KEY).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut tx = ImportTx::begin(pool, &keys, chrono::Utc::now() - chrono::TimeDelta::minutes(1)).await?;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        let line = format!(
            r#"{{"user_id":"bench-{i:08}","supplier":"emis","ods_code":"A{:05}","token":{{"access_identity_guid":"{}"}}}}"#,
            i % 7000,
            uuid::Uuid::new_v4()
        );
        batch.push((i + 1, parse_import_line(&line).map_err(|e| anyhow::anyhow!("{e:?}"))?));
        if batch.len() == 1000 {
            tx.add(std::mem::take(&mut batch)).await?;
        }
    }
    tx.add(batch).await?;
    tx.commit().await?;
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
