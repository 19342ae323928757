//! `demo`: a zero set-up tour. It finds a PostgreSQL server (DATABASE_URL, else the local
//! server on 127.0.0.1:5432, else a throwaway cluster started from the installed
//! binaries), creates its own fresh database there (never the operator's data; dropped at
//! the end unless `--keep`), starts the simulator in-process, seeds a population with a
//! realistic mix of answers, runs two sweeps with `IM1_CONFIRM_AFTER=0s` so first strikes
//! are confirmed, and prints what happened.
//!
//! The story (who the patients are and what the simulator answers for each) is in `story`,
//! finding or starting a server in `server`; this file runs the tour and prints it.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

use self::server::Server;
use self::story::seed;
use super::CliError;
use crate::config::Settings;
use crate::shutdown::Shutdown;
use crate::simulator::{Scenario, Simulator};
use crate::sweep::{Engine, SweepReport, SweepRequest, Trigger};

mod server;
mod story;

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
        let order = story::order_of(kind);
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
