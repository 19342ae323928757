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
//! `--explain` (print EXPLAIN ANALYZE of the claim query), `--keep`,
//! `--console` (also start `run` with the operator console on the bench database, as a
//! deployment serving it would, and no schedule of its own), `--refresh-ms MS` (with
//! `--console`: fetch the overview's live section every MS milliseconds during the sweeps,
//! as an open overview does, and report how long each fetch took; 0, the default, leaves
//! the page closed).
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
    console: bool,
    refresh_ms: u64,
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
        console: false,
        refresh_ms: 0,
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
            "--keep" => o.keep = true,
            "--console" => o.console = true,
            "--refresh-ms" => o.refresh_ms = value(),
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
    // reqwest (the console reader's client) is built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
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

    // The console: `run` with IM1_SCHEDULE=off, signed in through a trusted header, and a
    // reader fetching the overview's live section every `refresh_ms`.
    let console_port = free_port()?;
    let _console = if o.console {
        let child = Command::new(BIN)
            .arg("run")
            .env("DATABASE_URL", &url)
            .env("IM1_ENCRYPTION_KEYS", KEY)
            .env("IM1_EMIS_URL", format!("http://127.0.0.1:{port}/emis"))
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
            .stdout(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let mut peak_kib = 0u64;
        let status = loop {
            if let Some(kib) = vm_hwm(pid) {
                peak_kib = peak_kib.max(kib);
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
             {statements} statements = {:.4} per check; peak RSS {:.1} MiB; outcomes {}",
            checks as f64 / seconds,
            statements as f64 / checks.max(1) as f64,
            peak_kib as f64 / 1024.0,
            report["outcomes"]
        );
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
