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
//! after the import).
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
    batch: Option<u64>,
    explain: bool,
    keep: bool,
    import_only: bool,
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
        batch: None,
        explain: false,
        keep: false,
        import_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse::<u64>().ok()).expect("a number after the option");
        match a.as_str() {
            "--credentials" => o.credentials = value(),
            "--latency-ms" => o.latency_ms = value(),
            "--latency-spread-ms" => o.latency_spread_ms = value(),
            "--tail-ms" => o.tail_ms = value(),
            "--tail-share" => {
                o.tail_share = args.next().and_then(|v| v.parse::<f64>().ok()).expect("a share after --tail-share")
            }
            "--concurrency" => o.concurrency = value() as usize,
            "--sweeps" => o.sweeps = value() as u32,
            "--batch" => o.batch = Some(value()),
            "--explain" => o.explain = true,
            "--keep" => o.keep = true,
            "--import-only" => o.import_only = true,
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
    seed(&url, o.credentials).await?;
    sqlx::query("VACUUM ANALYZE im1_credentials").execute(&pool).await?;
    if o.import_only {
        finish(pool, conn, &db, o.keep).await?;
        return Ok(());
    }

    if o.explain {
        explain(&pool).await?;
    }

    let port = free_port()?;
    let scenario = std::env::temp_dir().join(format!("{db}.json"));
    std::fs::write(
        &scenario,
        serde_json::json!({
            "latency_ms": o.latency_ms,
            "latency_spread_ms": o.latency_spread_ms,
            "tail_share": o.tail_share,
            "tail_ms": o.tail_ms,
            "count_by_token": false,
        })
        .to_string(),
    )?;
    let mut sim = Kill(
        Command::new(BIN)
            .args(["simulate", "--addr", &format!("127.0.0.1:{port}"), "--scenario"])
            .arg(&scenario)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_for_port(port).await?;

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
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = tokio::spawn(sample_in_flight(port, stop.clone()));
        let (status, peak_kib) = measure(&mut child).await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let in_flight = sampler.await?;
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
            // The mean answer time the simulator was asked for, tail included.
            let mean_ms = (1.0 - o.tail_share) * o.latency_ms as f64 + o.tail_share * o.tail_ms as f64;
            let ideal = o.concurrency as f64 / (mean_ms / 1000.0);
            println!(
                "  ideal concurrency/mean latency ({mean_ms:.0} ms) = {ideal:.0} checks/s; achieved {:.1} %",
                100.0 * checks as f64 / seconds / ideal
            );
            println!("  {}", slot_use(&in_flight, o.concurrency));
        }
        if n < o.sweeps {
            sqlx::query("UPDATE im1_credentials SET next_check_at = '-infinity'").execute(&pool).await?;
            sqlx::query("VACUUM ANALYZE im1_credentials").execute(&pool).await?;
        }
    }
    sim.0.kill().ok();
    std::fs::remove_file(&scenario).ok();
    finish(pool, conn, &db, o.keep).await
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

/// Reports the database's size, then drops it unless `keep`.
async fn finish(pool: PgPool, mut conn: sqlx::PgConnection, db: &str, keep: bool) -> anyhow::Result<()> {
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&pool).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials").fetch_one(&pool).await?;
    println!(
        "database size {:.1} MiB ({:.0} bytes per credential)",
        size as f64 / 1048576.0,
        size as f64 / rows.max(1) as f64
    );
    pool.close().await;
    if keep {
        println!("kept database {db}");
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db} WITH (FORCE)"))).execute(&mut conn).await?;
    }
    conn.close().await?;
    Ok(())
}

/// Waits for `child`, sampling its peak resident memory; returns its exit status and the
/// peak in KiB.
async fn measure(child: &mut Child) -> anyhow::Result<(std::process::ExitStatus, u64)> {
    let pid = child.id();
    let mut peak_kib = 0u64;
    loop {
        if let Some(kib) = vm_hwm(pid) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            return Ok((status, peak_kib));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seeds through the real import command, end to end: a JSON-lines file of `n` EMIS
/// credentials, imported by `im1-revalidator credentials import FILE` (validation,
/// AES-GCM, COPY into staging, duplicate detection, one set-based insert with events).
async fn seed(url: &str, n: u64) -> anyhow::Result<()> {
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
        out.flush()?;
    }
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
    let (status, peak_kib) = measure(&mut child).await?;
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
