//! The soak: a million credentials, three `run` replicas, half an hour of work with a fault
//! at random intervals (a kill, a restart, an outage, a hang, resets, a 429 storm, slow
//! answers, terminated backends, a database crash, exhausted connections), then the same
//! invariants as the scenarios, checked in SQL over the whole population.
//!
//! Reports checks per second over time, check latency (p50/p99, from the workers'
//! `im1_check_duration_seconds` histograms), peak resident memory per process, database
//! size growth and dead tuples. Run it in release: `scripts/soak`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::cluster::Cluster;
use crate::invariants::{self, Measured};
use crate::population::{REVOKED, Truth, import_line, token, truth, truth_script};
use crate::world::{Hogs, Shape, World};

/// The simulator's delay per answer in the soak, and during its slow fault (thirty times
/// longer, still under the request timeout).
const LATENCY_MS: u64 = 20;
const SLOW_MS: u64 = 600;
/// The canary's index: a valid credential (see `population::truth`).
const CANARY: usize = 3;

pub struct Options {
    pub minutes: u64,
    pub credentials: usize,
    pub seed: u64,
    /// `IM1_RECHECK_INTERVAL` for the soak: short, so the population cycles under load.
    /// Fifteen minutes asks ~1,100 checks/s for a million credentials, which three replicas on
    /// two cores keep up with (~1,500/s) with some time to spare, so the run measures a
    /// working system rather than a backlog (ten minutes would ask 1,667/s), and a pass
    /// follows the last one closely, leaving few idle minutes.
    pub recheck: String,
    pub sample_every: Duration,
}

impl Options {
    pub fn from_args(args: &[String]) -> Options {
        let value = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
        let number = |flag: &str, default: u64| {
            value(flag)
                .map_or(default, |v| v.replace('_', "").parse().unwrap_or_else(|_| panic!("{flag} {v}: not a number")))
        };
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        Options {
            minutes: number("--minutes", 30),
            credentials: number("--credentials", 1_000_000) as usize,
            seed: number("--seed", seed) | 1,
            recheck: value("--recheck").unwrap_or_else(|| "15m".to_owned()),
            sample_every: Duration::from_secs(number("--sample-every", 60)),
        }
    }
}

/// A small deterministic generator (xorshift64*): the seed in the report replays the faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Restart,
    Outage,
    Hang,
    Reset,
    Storm,
    Slow,
    TerminateBackends,
    PgRestart,
    PoolExhaustion,
}

impl Fault {
    const ALL: [Fault; 10] = [
        Fault::Kill,
        Fault::Restart,
        Fault::Outage,
        Fault::Hang,
        Fault::Reset,
        Fault::Storm,
        Fault::Slow,
        Fault::TerminateBackends,
        Fault::PgRestart,
        Fault::PoolExhaustion,
    ];

    /// How long the fault lasts (instant ones: zero).
    fn lasts(self) -> Duration {
        Duration::from_secs(match self {
            Fault::Kill | Fault::Restart | Fault::TerminateBackends => 0,
            Fault::Outage | Fault::Storm => 15,
            Fault::Slow => 20,
            Fault::Hang | Fault::Reset => 10,
            Fault::PgRestart => 5,
            // Longer than the workers' 10 s pool acquire timeout.
            Fault::PoolExhaustion => 15,
        })
    }
}

/// Cumulative counts scraped from the workers' `/metrics`, kept per process so restarts
/// (counters from zero) and kills (the last scrape before the kill) add up.
#[derive(Default)]
struct Counts {
    /// Every check counted (`im1_checks_total`), the skipped ones included.
    checks: f64,
    /// Checks turned away without a supplier call (breaker, canary, unusable token).
    skipped: f64,
    /// `le` (seconds) → cumulative count, summed over suppliers.
    buckets: BTreeMap<u64, f64>,
}

impl Counts {
    fn parse(text: &str) -> Counts {
        let mut counts = Counts::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            if series.starts_with("im1_checks_total{") {
                counts.checks += value;
                if series.contains("outcome=\"skipped\"") {
                    counts.skipped += value;
                }
            } else if series.starts_with("im1_check_duration_seconds_bucket{")
                && let Some(le) = series.split("le=\"").nth(1).and_then(|r| r.split('"').next())
            {
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
                *counts.buckets.entry(le.to_bits()).or_default() += value;
            }
        }
        counts
    }

    fn add_delta(&mut self, now: &Counts, before: &Counts) {
        self.checks += now.checks - before.checks;
        self.skipped += now.skipped - before.skipped;
        for (le, n) in &now.buckets {
            *self.buckets.entry(*le).or_default() += n - before.buckets.get(le).copied().unwrap_or(0.0);
        }
    }

    fn minus(&self, earlier: &Counts) -> Counts {
        let mut d = Counts::default();
        d.add_delta(self, earlier);
        d
    }

    fn clone_counts(&self) -> Counts {
        Counts { checks: self.checks, skipped: self.skipped, buckets: self.buckets.clone() }
    }

    /// The `q` quantile, interpolated linearly inside its bucket (as Prometheus's
    /// `histogram_quantile` does).
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = *self.buckets.get(&f64::INFINITY.to_bits())?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, n) in &self.buckets {
            let le = f64::from_bits(*le);
            if *n >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (le - lower) * (rank - below) / (n - below).max(f64::MIN_POSITIVE));
            }
            (lower, below) = (le, *n);
        }
        None
    }
}

#[derive(Default)]
struct Sampler {
    /// The whole soak's totals.
    total: Counts,
    /// Each worker process's last scrape.
    last: HashMap<u32, Counts>,
    /// Peak resident memory per worker slot (over its incarnations) and the simulator, kB.
    peak_rss: BTreeMap<String, u64>,
}

impl Sampler {
    /// Scrapes one worker and adds what it did since its last scrape.
    async fn scrape(&mut self, world: &World, slot: usize) {
        let Some(worker) = world.workers.get(slot).and_then(Option::as_ref) else { return };
        let pid = worker.child.id();
        if let Some(kb) = crate::world::peak_rss_kb(pid) {
            let peak = self.peak_rss.entry(format!("worker {slot}")).or_default();
            *peak = (*peak).max(kb);
        }
        let url = format!("http://127.0.0.1:{}/metrics", worker.admin_port);
        let Ok(response) = world.http.get(url).timeout(Duration::from_secs(10)).send().await else { return };
        let Ok(text) = response.text().await else { return };
        let now = Counts::parse(&text);
        let before = self.last.remove(&pid).unwrap_or_default();
        self.total.add_delta(&now, &before);
        self.last.insert(pid, now);
    }

    async fn scrape_all(&mut self, world: &World) {
        for slot in 0..world.workers.len() {
            self.scrape(world, slot).await;
        }
        if let Some(kb) = crate::world::peak_rss_kb(world.sim_pid()) {
            let peak = self.peak_rss.entry("simulator".to_owned()).or_default();
            *peak = (*peak).max(kb);
        }
    }
}

/// Table sizes and tuple counts, from the statistics views (reset by a crash restart).
#[derive(Debug, Default, Clone, sqlx::FromRow)]
struct DbStats {
    db_bytes: i64,
    credentials_bytes: i64,
    credentials_dead: i64,
    events_bytes: i64,
    events_live: i64,
    events_dead: i64,
    autovacuums: i64,
}

async fn db_stats(world: &World) -> Option<DbStats> {
    let mut db = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&world.db_url)).await.ok()?.ok()?;
    sqlx::query_as(
        "SELECT pg_database_size(current_database()) AS db_bytes,
                pg_total_relation_size('im1_credentials') AS credentials_bytes,
                coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'im1_credentials'), 0) AS credentials_dead,
                pg_total_relation_size('im1_credential_events') AS events_bytes,
                coalesce((SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'im1_credential_events'), 0) AS events_live,
                coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'im1_credential_events'), 0) AS events_dead,
                coalesce((SELECT sum(autovacuum_count) FROM pg_stat_user_tables), 0)::int8 AS autovacuums",
    )
    .fetch_one(&mut db)
    .await
    .ok()
}

struct Sample {
    at: Duration,
    /// Checks that called the supplier (skipped ones apart).
    checks_per_s: f64,
    skipped_per_s: f64,
    calls_per_s: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    live: usize,
    db: Option<DbStats>,
    fault: Option<Fault>,
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(seconds: Option<f64>) -> String {
    seconds.map_or("–".to_owned(), |s| format!("{:.0}", s * 1000.0))
}

/// The fault in progress, with what must be undone at its end.
struct Active {
    fault: Fault,
    until: Instant,
    /// Pool exhaustion's connections, held until the fault ends.
    hogs: Option<Hogs>,
}

pub async fn run(cluster: Arc<Cluster>, options: Options) -> bool {
    let mut rng = Rng(options.seed);
    let n = options.credentials;
    println!(
        "soak: {n} credentials, 3 replicas, {} min, seed {}, recheck every {}",
        options.minutes, options.seed, options.recheck
    );
    // Revoked and flaky tokens are scripted; the valid majority answers the default.
    let mut tokens = serde_json::Map::new();
    for i in (0..n).filter(|i| truth(*i) != Truth::Valid) {
        tokens.insert(token(i), truth_script(truth(i)));
    }
    let simulator = serde_json::json!({"latency_ms": LATENCY_MS, "count_by_token": false, "tokens": tokens});
    let shape = Shape {
        workers: 3,
        concurrency: 16,
        batch: 100,
        lease: Duration::from_secs(30),
        schedule: "*/15 * * * * *",
        recheck_interval: options.recheck.clone(),
        env: Vec::new(),
    };
    let mut world = World::new(cluster.clone(), "soak", shape, n, simulator).await;
    let import_started = Instant::now();
    let file: String = (0..n).map(import_line).collect();
    if let Err(e) = world.command(&["credentials", "import"], &file) {
        println!("soak: import failed: {e}");
        return false;
    }
    drop(file);
    let import_took = import_started.elapsed();
    println!("soak: imported in {import_took:.0?} ({:.0} rows/s)", n as f64 / import_took.as_secs_f64());
    // A canary, as a deployment would have: probed at every sweep's start, faults included.
    if let Err(e) = world.command(&["credentials", "canary", "add", &crate::population::user(CANARY)], "") {
        println!("soak: canary add failed: {e}");
        return false;
    }
    {
        let mut db = world.db().await;
        let _ = sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pgstattuple").execute(&mut db).await;
    }
    let db_start = db_stats(&world).await.unwrap_or_default();

    world.start_workers();
    let mut sampler = Sampler::default();
    let mut samples: Vec<Sample> = Vec::new();
    let mut faults: Vec<(Duration, Fault)> = Vec::new();
    let started = Instant::now();
    let end = started + Duration::from_secs(options.minutes * 60);
    let mut next_sample = started + options.sample_every;
    let mut next_fault = started + Duration::from_secs(rng.range(30, 90));
    let mut active: Option<Active> = None;
    let mut window_start = (Instant::now(), sampler.total.clone_counts(), world.total_calls().await);
    while Instant::now() < end || active.is_some() {
        let now = Instant::now();
        if active.as_ref().is_some_and(|a| now >= a.until) {
            end_fault(&mut world, active.take().unwrap()).await;
        }
        // An exhausted pool stays exhausted: connections the workers make are cut again.
        if let Some(hogs) = active.as_mut().and_then(|a| a.hogs.as_mut()) {
            hogs.starve(&world).await;
        }
        if active.is_none() && now >= next_fault && now < end {
            let fault = Fault::ALL[rng.range(0, Fault::ALL.len() as u64 - 1) as usize];
            faults.push((started.elapsed(), fault));
            println!("soak: {:>5.0?} fault: {fault:?}", started.elapsed());
            active = start_fault(&mut world, &mut sampler, &mut rng, fault).await;
            next_fault = Instant::now() + fault.lasts() + Duration::from_secs(rng.range(45, 150));
        }
        // A worker that died by itself is a breach (noted by check_alive); it is replaced
        // so the soak carries on.
        world.check_alive();
        for slot in 0..world.shape.workers {
            if world.workers.get(slot).is_none_or(Option::is_none) {
                world.start_worker(slot);
            }
        }
        if now >= next_sample {
            next_sample += options.sample_every;
            sampler.scrape_all(&world).await;
            let calls = world.total_calls().await;
            let secs = window_start.0.elapsed().as_secs_f64();
            let window = sampler.total.minus(&window_start.1);
            let sample = Sample {
                at: started.elapsed(),
                checks_per_s: (window.checks - window.skipped) / secs,
                skipped_per_s: window.skipped / secs,
                calls_per_s: calls.saturating_sub(window_start.2) as f64 / secs,
                p50: window.quantile(0.5),
                p99: window.quantile(0.99),
                live: world.workers.iter().flatten().count(),
                db: db_stats(&world).await,
                fault: active.as_ref().map(|a| a.fault),
            };
            println!(
                "soak: {:>5.0?} {:.0} checks/s ({:.0} skipped/s), {:.0} calls/s, p50 {} ms, p99 {} ms{}",
                sample.at,
                sample.checks_per_s,
                sample.skipped_per_s,
                sample.calls_per_s,
                ms(sample.p50),
                ms(sample.p99),
                sample.fault.map(|f| format!(" (during {f:?})")).unwrap_or_default()
            );
            samples.push(sample);
            window_start = (Instant::now(), sampler.total.clone_counts(), calls);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let faults_stopped = Instant::now();
    println!("soak: faults over; waiting for every credential to settle");
    let settle = settle(&world, &options).await;
    sampler.scrape_all(&world).await;
    let (checks_total, skipped_total) = (sampler.total.checks, sampler.total.skipped);
    let db_end = db_stats(&world).await.unwrap_or_default();
    let bloat = bloat(&world).await;
    let invariants = final_invariants(&world).await;
    let (mut breaches, logs, _) = world.teardown().await;
    breaches.extend(invariants.iter().filter(|m| !m.holds()).map(ToString::to_string));
    if settle.is_none() {
        breaches.push("the population did not settle after the faults".to_owned());
    }

    // The report, in the shape docs/reliability.md keeps it.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Soak: {n} credentials, 3 replicas, {} min, seed {}\n\nImport: {import_took:.0?} ({:.0} rows/s). \
         Checks made: {checks_total:.0} ({skipped_total:.0} of them skipped without a call); settled {} after the faults stopped.\n",
        options.minutes,
        options.seed,
        n as f64 / import_took.as_secs_f64(),
        settle.map_or("not".to_owned(), |d| format!("{d:.0?}")),
    );
    let _ = writeln!(
        out,
        "| minute | checks/s | skipped/s | supplier calls/s | p50 ms | p99 ms | workers | database MiB | credentials dead tuples | events rows | events dead tuples | fault |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for s in &samples {
        // The statistics are unreadable while the database is down or starved.
        let db = s.db.as_ref().map_or_else(
            || "– | – | – | –".to_owned(),
            |db| format!("{:.0} | {} | {} | {}", mib(db.db_bytes), db.credentials_dead, db.events_live, db.events_dead),
        );
        let _ = writeln!(
            out,
            "| {:.1} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {db} | {} |",
            s.at.as_secs_f64() / 60.0,
            s.checks_per_s,
            s.skipped_per_s,
            s.calls_per_s,
            ms(s.p50),
            ms(s.p99),
            s.live,
            s.fault.map(|f| format!("{f:?}")).unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "\nCheck latency over the whole soak: p50 {} ms, p99 {} ms.\n",
        ms(sampler.total.quantile(0.5)),
        ms(sampler.total.quantile(0.99))
    );
    let _ = writeln!(out, "Peak resident memory (VmHWM): {}.\n", {
        let peaks: Vec<String> =
            sampler.peak_rss.iter().map(|(p, kb)| format!("{p} {:.0} MiB", *kb as f64 / 1024.0)).collect();
        peaks.join(", ")
    });
    let _ = writeln!(
        out,
        "Database: {:.0} MiB after import, {:.0} MiB at the end (credentials {:.0} → {:.0} MiB, events {:.0} → {:.0} MiB); \
         {} autovacuum runs. {bloat}\n",
        mib(db_start.db_bytes),
        mib(db_end.db_bytes),
        mib(db_start.credentials_bytes),
        mib(db_end.credentials_bytes),
        mib(db_start.events_bytes),
        mib(db_end.events_bytes),
        db_end.autovacuums,
    );
    let _ = writeln!(out, "Faults ({}):", faults.len());
    for (at, fault) in &faults {
        let _ = writeln!(out, "- {:.1} min: {fault:?}", at.as_secs_f64() / 60.0);
    }
    let _ = writeln!(out, "\nInvariants:");
    for m in &invariants {
        let _ = writeln!(out, "- {m} {}", if m.holds() { "✓" } else { "✗" });
    }
    for b in &breaches {
        let _ = writeln!(out, "- BREACH: {b}");
    }
    let _ = writeln!(out, "\n(total {:.0?})", faults_stopped.duration_since(started) + settle.unwrap_or_default());
    println!("{out}");
    if breaches.is_empty() {
        crate::world::discard_logs(&logs);
    } else {
        println!("soak: worker logs kept in {}", logs.display());
    }
    breaches.is_empty()
}

async fn start_fault(world: &mut World, sampler: &mut Sampler, rng: &mut Rng, fault: Fault) -> Option<Active> {
    let slot = rng.range(0, world.shape.workers as u64 - 1) as usize;
    let mut hogs = None;
    match fault {
        Fault::Kill => {
            sampler.scrape(world, slot).await;
            world.kill(slot);
            world.start_worker(slot);
        }
        Fault::Restart => {
            sampler.scrape(world, slot).await;
            world.terminate(slot).await;
            world.start_worker(slot);
        }
        Fault::Outage => {
            let _ = world.http.post(world.sim_url("/_sim/outage/emis")).send().await;
        }
        Fault::Hang => world.set_default(&serde_json::json!("hang")).await,
        Fault::Reset => world.proxy.resetting(true),
        Fault::Storm => {
            world.set_default(&serde_json::json!({"behaviour": "rate_limited", "retry_after_secs": 5})).await
        }
        Fault::Slow => world.set_latency(SLOW_MS).await,
        Fault::TerminateBackends => world.terminate_backends().await,
        Fault::PgRestart => {
            if let Err(e) = world.cluster.stop("immediate") {
                world.breaches.push(format!("could not stop PostgreSQL: {e}"));
            }
        }
        Fault::PoolExhaustion => {
            let (mut taken, _) = Hogs::take(world).await;
            taken.starve(world).await;
            hogs = Some(taken);
        }
    }
    (fault.lasts() > Duration::ZERO).then(|| Active { fault, until: Instant::now() + fault.lasts(), hogs })
}

async fn end_fault(world: &mut World, active: Active) {
    match active.fault {
        Fault::Outage => {
            let _ = world.http.delete(world.sim_url("/_sim/outage/emis")).send().await;
        }
        Fault::Hang | Fault::Storm => world.set_default(&serde_json::json!("valid")).await,
        Fault::Slow => world.set_latency(LATENCY_MS).await,
        Fault::Reset => world.proxy.resetting(false),
        Fault::PgRestart => {
            if let Err(e) = world.cluster.start() {
                world.breaches.push(format!("could not start PostgreSQL again: {e}"));
            }
        }
        // Hogs held by a terminated backend are already gone; the rest go now.
        Fault::PoolExhaustion => drop(active.hogs),
        Fault::Kill | Fault::Restart | Fault::TerminateBackends => {}
    }
}

/// A row due for more than two minutes and claimed by nobody: the system is not keeping up.
const OVERDUE: &str =
    "next_check_at < now() - interval '2 minutes' AND (lease_expires_at IS NULL OR lease_expires_at <= now())";

/// Waits until every revoked credential is confirmed invalid, every credential has been
/// checked, and nothing due has waited more than two minutes. Returns how long it took.
async fn settle(world: &World, options: &Options) -> Option<Duration> {
    let since = Instant::now();
    let limit = Duration::from_secs(20 * 60).max(Duration::from_secs(options.minutes * 60) / 2);
    let query = format!(
        "SELECT count(*) FILTER (WHERE {REVOKED} AND status <> 'invalid')
              + count(*) FILTER (WHERE last_checked_at IS NULL)
              + count(*) FILTER (WHERE {OVERDUE})
           FROM im1_credentials"
    );
    while since.elapsed() < limit {
        if let Ok(mut db) = PgConnection::connect(&world.db_url).await
            && let Ok(0) = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(query.clone())).fetch_one(&mut db).await
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    None
}

/// Exact dead tuples and free space (pgstattuple) at the end.
async fn bloat(world: &World) -> String {
    let mut db = world.db().await;
    let mut out = Vec::new();
    for table in ["im1_credentials", "im1_credential_events"] {
        let row: Result<(i64, f64, f64), _> =
            sqlx::query_as("SELECT dead_tuple_count, dead_tuple_percent, free_percent FROM pgstattuple($1::regclass)")
                .bind(table)
                .fetch_one(&mut db)
                .await;
        match row {
            Ok((dead, dead_pct, free_pct)) => {
                out.push(format!("{table}: {dead} dead tuples ({dead_pct:.1} %), {free_pct:.1} % free space"))
            }
            Err(e) => out.push(format!("{table}: pgstattuple failed ({e})")),
        }
    }
    format!("At the end (pgstattuple) {}.", out.join("; "))
}

/// The invariants of every scenario, and one of the soak's own: nothing due left waiting.
async fn final_invariants(world: &World) -> Vec<Measured> {
    let mut db = world.db().await;
    let mut measured = invariants::database(world, &mut db).await;
    let waiting = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) OVER (), format('%s due since %s', user_id, next_check_at)
           FROM im1_credentials WHERE {OVERDUE} ORDER BY next_check_at LIMIT 3"
    )))
    .fetch_all(&mut db)
    .await
    .expect("the overdue query runs");
    measured.push(Measured::of("credentials due for more than two minutes", waiting));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials").fetch_one(&mut db).await.unwrap_or(-1);
    measured.push(Measured {
        name: "credentials imported but not stored",
        count: world.population as i64 - stored,
        examples: Vec::new(),
        progress: false,
    });
    measured
}
