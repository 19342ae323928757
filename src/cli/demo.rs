//! `demo`: a zero set-up tour. It finds a PostgreSQL server (DATABASE_URL, else the local
//! server on 127.0.0.1:5432, else a throwaway cluster started from the installed
//! binaries), creates its own fresh database there (never the operator's data; dropped at
//! the end unless `--keep`), starts the simulator in-process, seeds a population with a
//! realistic mix of answers, runs two sweeps with `IM1_CONFIRM_AFTER=0s` so first strikes
//! are confirmed, and prints what happened.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::CliError;
use crate::config::Settings;
use crate::shutdown::Shutdown;
use crate::simulator::{Scenario, Simulator};
use crate::store::import::ImportTx;
use crate::sweep::{Engine, SweepReport, SweepRequest, Trigger};
use crate::token::parse_import_line;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the demo database at the end (its URL is printed).
    #[arg(long)]
    pub keep: bool,
    /// How many credentials to seed.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub users: u32,
    /// Start a throwaway PostgreSQL cluster even when a server is reachable.
    #[arg(long)]
    pub throwaway_cluster: bool,
}

/// One kind of patient in the seeded population: its share, the simulator's script for
/// its token, and what the demo expects the two sweeps to make of it.
struct Kind {
    name: &'static str,
    per_thousand: u32,
    supplier: &'static str,
    script: &'static [&'static str],
}

/// The mix: mostly good tokens; some revoked in each way EMIS says so; and the supplier
/// trouble that must never flag anyone (outages, throttling, garbage, practices offline).
const POPULATION: &[Kind] = &[
    Kind { name: "EMIS: valid", per_thousand: 420, supplier: "emis", script: &["valid"] },
    Kind {
        name: "EMIS: not registered at the practice",
        per_thousand: 20,
        supplier: "emis",
        script: &["not_registered"],
    },
    Kind { name: "EMIS: linkage no longer matches", per_thousand: 15, supplier: "emis", script: &["invalid_linkage"] },
    Kind { name: "EMIS: account inactive", per_thousand: 10, supplier: "emis", script: &["account_inactive"] },
    Kind { name: "EMIS: access forbidden", per_thousand: 10, supplier: "emis", script: &["forbidden"] },
    Kind { name: "EMIS: online access restricted", per_thousand: 5, supplier: "emis", script: &["restricted_link"] },
    Kind {
        name: "EMIS: practice services disabled",
        per_thousand: 10,
        supplier: "emis",
        script: &["practice_not_enabled"],
    },
    Kind { name: "EMIS: outage, then fine", per_thousand: 20, supplier: "emis", script: &["unavailable", "valid"] },
    Kind { name: "EMIS: rate limited", per_thousand: 10, supplier: "emis", script: &["rate_limited"] },
    Kind { name: "EMIS: garbage answers", per_thousand: 10, supplier: "emis", script: &["garbage"] },
    Kind {
        name: "EMIS: revoked, then supplier down",
        per_thousand: 5,
        supplier: "emis",
        script: &["not_registered", "server_error"],
    },
    Kind { name: "TPP: valid", per_thousand: 180, supplier: "tpp", script: &["valid"] },
    Kind {
        name: "TPP: problem logging on (9)",
        per_thousand: 10,
        supplier: "tpp",
        script: &["tpp_problem_logging_on"],
    },
    Kind { name: "TPP: no access (6)", per_thousand: 10, supplier: "tpp", script: &["tpp_no_access"] },
    Kind {
        name: "TPP: service unavailable (0)",
        per_thousand: 10,
        supplier: "tpp",
        script: &["tpp_service_unavailable"],
    },
    Kind { name: "Vision: valid", per_thousand: 150, supplier: "vision", script: &["valid"] },
    Kind {
        name: "Vision: invalid credentials (-30)",
        per_thousand: 10,
        supplier: "vision",
        script: &["vision_invalid_credentials"],
    },
    Kind { name: "Vision: disabled (-19)", per_thousand: 5, supplier: "vision", script: &["vision_disabled"] },
    Kind {
        name: "Vision: access denied (-35)",
        per_thousand: 5,
        supplier: "vision",
        script: &["vision_access_denied"],
    },
    Kind {
        name: "Vision: record locked (-15)",
        per_thousand: 10,
        supplier: "vision",
        script: &["vision_record_unavailable"],
    },
    Kind { name: "Microtest (no usable token)", per_thousand: 45, supplier: "microtest", script: &[] },
];

pub async fn run(args: Args) -> Result<(), CliError> {
    let mut server = Server::find(args.throwaway_cluster).await?;
    // The tour runs in its own task so that nothing it does (even a panic, say on a
    // closed stdout) skips the cleanup of the database and any throwaway cluster.
    let place =
        Place { url: server.database_url(), database: server.database.clone(), describe: server.describe.clone() };
    let (keep, users) = (args.keep, args.users);
    let result = match tokio::spawn(tour(place, keep, users)).await {
        Ok(result) => result,
        Err(e) => Err(anyhow!("the demo stopped unexpectedly: {e}")),
    };
    if let Err(e) = server.cleanup(args.keep).await {
        eprintln!("demo: cleanup: {e:#}");
    }
    result.map_err(CliError::Other)
}

/// Where the tour's database is.
struct Place {
    url: SecretString,
    database: String,
    describe: String,
}

async fn tour(place: Place, keep: bool, users: u32) -> anyhow::Result<()> {
    println!("im1-revalidator demo\n");
    let db = place.url;
    let pool = crate::store::connect(&db, 8).await?;
    crate::store::migrate(&pool).await?;
    println!(
        "  database   {} on {} (fresh; {})",
        place.database,
        place.describe,
        if keep { "kept at the end" } else { "dropped at the end" }
    );

    let sim = Simulator::new(Scenario::default());
    // The simulated Vision holds each request to the RP's provider id and the token's practice.
    sim.set_vision_provider_id("im1-demo");
    let running = sim.spawn("127.0.0.1:0".parse()?).await.context("starting the simulator")?;
    println!("  simulator  {} (EMIS, TPP and Vision, in-process)", running.base_url());

    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", db.expose_secret().to_owned()),
        ("IM1_ENCRYPTION_KEYS", format!("demo:{key}")),
        ("IM1_EMIS_URL", running.emis_url()),
        ("IM1_EMIS_APPLICATION_ID", "im1-demo".to_owned()),
        ("IM1_TPP_URL", running.tpp_url()),
        ("IM1_TPP_PROVIDER_ID", "im1-demo".to_owned()),
        ("IM1_VISION_URL", running.vision_url()),
        ("IM1_VISION_PROVIDER_ID", "im1-demo".to_owned()),
        ("IM1_CONFIRM_AFTER", "0s".to_owned()),
        // The demo's population is revoked far more often than any real one, on purpose:
        // at the default 10 % the invalidation guard would hold the verdicts the tour sets
        // out to show.
        ("IM1_GUARD_THRESHOLD", "0.5".to_owned()),
        // The in-process simulator takes far more than a real supplier's 50 requests a second.
        ("IM1_EMIS_RATE", "2000".to_owned()),
        ("IM1_TPP_RATE", "2000".to_owned()),
        ("IM1_VISION_RATE", "2000".to_owned()),
        // No Retry-After is waited out inside a check, so the tour stays quick.
        ("IM1_RETRY_MAX_DELAY", "200ms".to_owned()),
        ("IM1_HTTP_TIMEOUT", "2s".to_owned()),
        ("IM1_CHECK_TIMEOUT", "5s".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut settings = Settings::from_vars(&vars).map_err(|e| anyhow!("demo settings: {e}"))?;
    let engine =
        super::engine(&mut settings, pool.clone(), crate::clock::system(), "demo").map_err(|e| anyhow!("{e}"))?;

    let expected = seed(&engine, &sim, users).await?;
    println!("  seeded     {users} credentials through the import path\n");

    let first = sweep(&engine, "sweep 1").await?;
    print_sweep(&first);
    println!("\n  Revoked tokens are only suspect so far: one invalid answer is never a verdict.");
    println!("  IM1_CONFIRM_AFTER=0s makes them due again at once, so the second sweep confirms them.\n");
    let second = sweep(&engine, "sweep 2").await?;
    print_sweep(&second);

    let report = crate::safety::report::read(&pool, &settings).await.map_err(|e| anyhow!("{e}"))?;
    println!("\nCredentials by supplier and status:\n");
    print!("{}", indent(&super::status::render(&report, super::status::colour_stdout())));
    println!("\nWhat each kind of patient came to:\n");
    print!("{}", indent(&outcome_table(&pool, &expected).await?));
    println!(
        "\nOnly explicit rejections, confirmed twice, flagged users for a refresh; outages, throttling,\n\
         garbage, locked records and offline practices changed nobody's status. Microtest users are\n\
         never asked to refresh. RP backends read this from the im1_credential_status view (see the\n\
         README).\n\n\
         In production more defences stand in front of a verdict (the README's \"Verdict safety\"):\n\
         a circuit breaker, an invalidation guard that holds verdicts when a supplier suddenly calls\n\
         too many tokens invalid (raised to 50 % for this tour: its population is revoked far more\n\
         often than a real one), canary credentials, and a supplier that says our configuration is\n\
         wrong being stopped for the sweep."
    );
    if keep {
        println!("\nKept: DATABASE_URL={}", redact_password(db.expose_secret()));
    }
    running.shutdown().await;
    Ok(())
}

/// Seeds the population; returns user id → kind name.
async fn seed(engine: &Engine, sim: &Simulator, users: u32) -> anyhow::Result<HashMap<String, &'static str>> {
    let mut kinds = HashMap::new();
    let total: u32 = POPULATION.iter().map(|k| k.per_thousand).sum();
    let mut tx = ImportTx::begin(&engine.pool, &engine.keys, engine.clock.now()).await?;
    let mut batch = Vec::new();
    for i in 0..users {
        let slot = (i as u64 * 7919 % total as u64) as u32; // spread kinds through the ids
        let mut acc = 0;
        let kind = POPULATION
            .iter()
            .find(|k| {
                acc += k.per_thousand;
                slot < acc
            })
            .unwrap_or(&POPULATION[0]);
        let user_id = format!("demo-user-{i:06}");
        let token = uuid::Uuid::new_v4().to_string();
        let ods = format!("A{:05}", 81000 + i % 400);
        let line = match kind.supplier {
            "microtest" => {
                serde_json::json!({"user_id": user_id, "supplier": "microtest", "ods_code": ods, "token": {}})
            }
            "tpp" => serde_json::json!({"user_id": user_id, "supplier": "tpp", "ods_code": ods,
                                        "token": {"account_id": token, "passphrase": uuid::Uuid::new_v4().to_string()}}),
            "vision" => {
                sim.set_vision_practice(&token, &ods);
                serde_json::json!({"user_id": user_id, "supplier": "vision", "ods_code": ods,
                                   "token": {"rosu_account_id": token, "api_key": uuid::Uuid::new_v4().to_string()}})
            }
            _ => serde_json::json!({"user_id": user_id, "supplier": "emis", "ods_code": ods,
                                    "token": {"access_identity_guid": token}}),
        };
        let cred = parse_import_line(&line.to_string()).map_err(|e| {
            anyhow!("demo seed line {i}: {}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        })?;
        if !kind.script.is_empty() {
            let steps = kind
                .script
                .iter()
                .map(|s| serde_json::from_value(serde_json::Value::String((*s).to_owned())))
                .collect::<Result<Vec<_>, _>>()
                .context("demo script")?;
            sim.script(&token, steps);
        }
        kinds.insert(user_id, kind.name);
        batch.push((u64::from(i) + 1, cred));
        if batch.len() == 1000 {
            tx.add(std::mem::take(&mut batch)).await?;
        }
    }
    tx.add(batch).await?;
    tx.commit().await?;
    Ok(kinds)
}

async fn sweep(engine: &Engine, label: &str) -> anyhow::Result<SweepReport> {
    let request = SweepRequest { supplier: None, dry_run: false, trigger: Trigger::Demo };
    let progress = engine.progress.clone();
    let terminal = std::io::stdout().is_terminal();
    let label_owned = label.to_owned();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if terminal {
                print!("\r  {label_owned}: {} checked", progress.load(Ordering::Relaxed));
                let _ = std::io::stdout().flush();
            }
        }
    });
    let report = engine.sweep(request, Shutdown::never()).await;
    ticker.abort();
    if terminal {
        print!("\r");
    }
    let report = report?;
    println!("  {label}: {} checks in {:.2}s", report.checks, report.seconds);
    Ok(report)
}

fn print_sweep(report: &SweepReport) {
    let outcomes: Vec<String> = report.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("    outcomes: {}", outcomes.join(", "));
    println!(
        "    status changes: {}; users newly asked to refresh: {}",
        report.status_changes, report.newly_refresh_required
    );
}

/// Per kind of patient: how many, and the statuses and outcomes they ended with.
async fn outcome_table(pool: &sqlx::PgPool, expected: &HashMap<String, &'static str>) -> anyhow::Result<String> {
    #[derive(sqlx::FromRow)]
    struct Row {
        user_id: String,
        status: String,
        reason: Option<String>,
        last_outcome: Option<String>,
        refresh_required: bool,
    }
    let rows: Vec<Row> =
        sqlx::query_as("SELECT user_id, status, reason, last_outcome, refresh_required FROM im1_credential_status")
            .fetch_all(pool)
            .await?;
    let mut by_kind: std::collections::BTreeMap<(usize, &str), HashMap<String, u64>> = Default::default();
    for Row { user_id: user, status, reason, last_outcome: outcome, refresh_required: refresh } in rows {
        let kind = expected.get(&user).copied().unwrap_or("?");
        let order = POPULATION.iter().position(|k| k.name == kind).unwrap_or(usize::MAX);
        let key = format!(
            "{}{} / last outcome {}{}",
            status,
            reason.map(|r| format!(" ({r})")).unwrap_or_default(),
            outcome.unwrap_or_else(|| "-".into()),
            if refresh { " / refresh required" } else { "" }
        );
        *by_kind.entry((order, kind)).or_default().entry(key).or_default() += 1;
    }
    let mut table = vec![vec!["patients".to_owned(), "count".to_owned(), "ended as".to_owned()]];
    for ((_, kind), results) in by_kind {
        let mut results: Vec<_> = results.into_iter().collect();
        results.sort();
        for (i, (result, n)) in results.into_iter().enumerate() {
            table.push(vec![if i == 0 { kind.to_owned() } else { String::new() }, n.to_string(), result]);
        }
    }
    // The last column is text: left-align it by hand.
    let w0 = table.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let w1 = table.iter().map(|r| r[1].len()).max().unwrap_or(0);
    Ok(table.iter().map(|r| format!("{:<w0$}  {:>w1$}  {}\n", r[0], r[1], r[2])).collect())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| if l.is_empty() { "\n".to_owned() } else { format!("  {l}\n") }).collect()
}

fn redact_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Where the demo's database lives.
struct Server {
    /// Connection options to the server's maintenance database.
    admin: PgConnectOptions,
    describe: String,
    database: String,
    cluster: Option<Cluster>,
    created: bool,
}

impl Server {
    async fn find(force_cluster: bool) -> Result<Server, CliError> {
        let database = format!("im1_demo_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut server = if let (Ok(url), false) = (std::env::var("DATABASE_URL"), force_cluster) {
            let options: PgConnectOptions =
                url.parse().map_err(|_| CliError::Input("DATABASE_URL is not a valid PostgreSQL URL".into()))?;
            let describe = format!("{}:{} (from DATABASE_URL)", options.get_host(), options.get_port());
            Server { admin: options.database("postgres"), describe, database, cluster: None, created: false }
        } else {
            let local = PgConnectOptions::new().host("127.0.0.1").port(5432).username("postgres").database("postgres");
            let reachable = !force_cluster
                && tokio::time::timeout(Duration::from_secs(3), local.connect()).await.is_ok_and(|c| c.is_ok());
            if reachable {
                Server {
                    admin: local,
                    describe: "127.0.0.1:5432 (local server)".into(),
                    database,
                    cluster: None,
                    created: false,
                }
            } else {
                let cluster = Cluster::start().await.map_err(CliError::Other)?;
                let admin = PgConnectOptions::new()
                    .host("127.0.0.1")
                    .port(cluster.port)
                    .username("postgres")
                    .database("postgres");
                let describe = format!("a throwaway cluster on 127.0.0.1:{}", cluster.port);
                Server { admin, describe, database, cluster: Some(cluster), created: false }
            }
        };
        let mut conn = server
            .admin
            .connect()
            .await
            .map_err(|e| CliError::Other(anyhow!("cannot connect to {}: {e}", server.describe)))?;
        // The name is ours: `im1_demo_` and hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", server.database)))
            .execute(&mut conn)
            .await
            .map_err(|e| CliError::Other(anyhow!("cannot create the demo database on {}: {e}", server.describe)))?;
        server.created = true;
        let _ = conn.close().await;
        Ok(server)
    }

    fn database_url(&self) -> SecretString {
        let o = &self.admin;
        let mut url = reqwest::Url::parse("postgres://localhost/").expect("static URL parses");
        let _ = url.set_host(Some(o.get_host()));
        let _ = url.set_port(Some(o.get_port()));
        let _ = url.set_username(o.get_username());
        url.set_path(&self.database);
        if let Ok(env) = std::env::var("DATABASE_URL")
            && self.cluster.is_none()
            && let Ok(parsed) = reqwest::Url::parse(&env)
        {
            // Keep password and parameters from the operator's URL; only the database differs.
            let mut with_db = parsed;
            with_db.set_path(&self.database);
            return SecretString::from(with_db.to_string());
        }
        SecretString::from(url.to_string())
    }

    async fn cleanup(&mut self, keep: bool) -> anyhow::Result<()> {
        if self.created && !keep {
            let mut conn = self.admin.connect().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database)))
                .execute(&mut conn)
                .await?;
            let _ = conn.close().await;
        }
        if let Some(cluster) = self.cluster.take() {
            if keep {
                println!(
                    "The throwaway cluster keeps running at {}; stop it with: pg_ctl -D {} stop",
                    self.describe,
                    cluster.dir.display()
                );
            } else {
                cluster.stop().await?;
            }
        }
        Ok(())
    }
}

/// A PostgreSQL cluster of our own, for machines with the binaries but no server.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    async fn start() -> anyhow::Result<Cluster> {
        let bin = find_pg_bin().ok_or_else(|| {
            anyhow!(
                "no PostgreSQL server answers at 127.0.0.1:5432 and no PostgreSQL binaries were found.\n\
                 Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL."
            )
        })?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let dir = std::env::temp_dir().join(format!("im1-demo-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        // initdb refuses to run as root: run the cluster as the `postgres` system user.
        let as_postgres = is_root();
        if as_postgres {
            let status = tokio::process::Command::new("chown").arg("postgres:postgres").arg(&dir).status().await?;
            if !status.success() {
                bail!("running as root, and cannot hand {} to the postgres user", dir.display());
            }
        }
        let cluster = Cluster { dir, bin, port, as_postgres };
        let data = cluster.dir.join("data");
        cluster
            .pg(
                &cluster.bin.join("initdb"),
                &["-D", path(&data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            )
            .await
            .context("initdb")?;
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off", port, path(&cluster.dir));
        let log = cluster.dir.join("log");
        cluster
            .pg(&cluster.bin.join("pg_ctl"), &["-D", path(&data), "-l", path(&log), "-o", &opts, "-w", "start"])
            .await
            .context("starting the throwaway cluster")?;
        Ok(cluster)
    }

    async fn pg(&self, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = if self.as_postgres {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            tokio::process::Command::new(program)
        };
        let out = cmd.args(args).output().await.with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!("{} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let stopped = self.pg(&self.bin.join("pg_ctl"), &["-D", path(&data), "-m", "fast", "-w", "stop"]).await;
        std::fs::remove_dir_all(&self.dir)?;
        stopped
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The newest installed PostgreSQL's bin directory (Debian layout), or one on PATH.
fn find_pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(PathBuf::from).find(|d| d.join("initdb").exists())
    })
}
