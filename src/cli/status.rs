//! `status [--json]`: counts per supplier and status, refresh-required counts, each
//! supplier's breaker and guard, canaries, the live processes and the last sweep.

use std::collections::BTreeMap;

use super::CliError;
use crate::config::Settings;
use crate::model::{Status, Supplier};
use crate::store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub json: bool,
}

/// Everything `status` shows.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub suppliers: BTreeMap<String, SupplierStatus>,
    pub last_sweep: Option<store::sweeps::LastSweep>,
    /// Processes sharing the suppliers' rate limits (recent heartbeat).
    pub processes: Vec<store::safety::LiveProcess>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct SupplierStatus {
    /// Credentials per status (every status present, zeros included).
    pub statuses: BTreeMap<String, i64>,
    pub refresh_required: i64,
    /// Whether this process's configuration checks the supplier.
    pub configured: bool,
    /// `closed`, `open` or `half_open` (none for Microtest).
    pub breaker: Option<String>,
    pub breaker_open_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Calls and transient calls in the breaker's window.
    pub breaker_window: Option<store::safety::Counts>,
    /// `clear` or `holding` (none for Microtest).
    pub guard: Option<String>,
    pub guard_held_since: Option<chrono::DateTime<chrono::Utc>>,
    pub guard_evidence: Option<serde_json::Value>,
    /// Token answers and invalid ones in the guard's window.
    pub guard_window: Option<store::safety::Counts>,
    pub held_verdicts: i64,
    pub canaries: i64,
}

pub async fn run(settings: Settings, args: Args) -> Result<(), CliError> {
    let pool = super::connect(&settings).await?;
    let report = read(&pool, &settings).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

pub async fn read(pool: &sqlx::PgPool, settings: &Settings) -> Result<Report, CliError> {
    let mut suppliers: BTreeMap<String, SupplierStatus> = BTreeMap::new();
    for s in Supplier::ALL {
        let entry = suppliers.entry(s.as_str().to_owned()).or_default();
        entry.configured = *s != Supplier::Microtest && settings.supplier(*s).is_some();
        for st in Status::ALL {
            entry.statuses.insert(st.as_str().to_owned(), 0);
        }
    }
    for c in store::status::counts(pool).await? {
        let entry = suppliers.entry(c.supplier.clone()).or_default();
        entry.statuses.insert(c.status, c.count);
        entry.refresh_required += c.refresh_required;
    }
    let now = crate::clock::system().now();
    let config = crate::safety::Config::from_settings(settings);
    let windows = store::safety::Windows {
        breaker_from: now - crate::sweep::delta(config.breaker.window),
        guard_from: now - crate::sweep::delta(config.guard.window),
        alive_after: now - crate::sweep::delta(crate::safety::PROCESS_TTL),
    };
    for state in store::safety::read(pool, now, windows).await?.suppliers {
        let entry = suppliers.entry(state.supplier.as_str().to_owned()).or_default();
        let breaker = crate::safety::Breaker::from_row(&state.breaker_state, state.breaker_open_until).at(now);
        entry.breaker = Some(breaker.as_str().to_owned());
        entry.breaker_open_until = state.breaker_open_until.filter(|_| state.breaker_state == "open");
        entry.breaker_window = Some(state.breaker_window);
        entry.guard = Some(if state.guard_held_since.is_some() { "holding" } else { "clear" }.to_owned());
        entry.guard_held_since = state.guard_held_since;
        entry.guard_evidence = state.guard_evidence;
        entry.guard_window = Some(state.guard_window);
        entry.held_verdicts = state.held_verdicts;
    }
    for canary in store::canaries::list(pool, None).await? {
        suppliers.entry(canary.supplier.as_str().to_owned()).or_default().canaries += 1;
    }
    Ok(Report {
        suppliers,
        last_sweep: store::sweeps::last_success(pool).await?,
        processes: store::safety::live_processes(pool, windows.alive_after).await?,
    })
}

/// The aligned table.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let headers = ["supplier", "unchecked", "valid", "invalid", "unsupported", "refresh required", "configured"];
    let mut rows: Vec<Vec<String>> = vec![headers.iter().map(|h| h.to_string()).collect()];
    for (name, s) in &report.suppliers {
        let n = |k: &str| s.statuses.get(k).copied().unwrap_or(0).to_string();
        rows.push(vec![
            name.clone(),
            n("unchecked"),
            n("valid"),
            n("invalid"),
            n("unsupported"),
            s.refresh_required.to_string(),
            if s.configured { "yes".into() } else { "no".into() },
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let mut safety: Vec<Vec<String>> = vec![
        ["supplier", "breaker", "window calls", "transient", "guard", "window checks", "invalid", "held", "canaries"]
            .iter()
            .map(|h| h.to_string())
            .collect(),
    ];
    for (name, s) in report.suppliers.iter().filter(|(_, s)| s.breaker.is_some()) {
        let breaker = match (s.breaker.as_deref(), s.breaker_open_until) {
            (Some("open"), Some(until)) => format!("open until {}", until.format("%H:%M:%S")),
            (Some(b), _) => b.replace('_', "-"),
            (None, _) => "-".to_owned(),
        };
        let bw = s.breaker_window.unwrap_or_default();
        let gw = s.guard_window.unwrap_or_default();
        let guard = match s.guard_held_since {
            Some(since) => format!("HOLDING since {}", since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            None => "clear".to_owned(),
        };
        safety.push(vec![
            name.clone(),
            breaker,
            bw.calls.to_string(),
            bw.transient.to_string(),
            guard,
            gw.answers.to_string(),
            gw.invalid.to_string(),
            s.held_verdicts.to_string(),
            s.canaries.to_string(),
        ]);
    }
    out.push_str(&table(&safety));
    if report.suppliers.values().any(|s| s.guard_held_since.is_some()) {
        out.push_str("the invalidation guard is holding verdicts: see `guard list` and docs/runbook.md\n");
    }
    out.push('\n');
    out.push_str(&format!("live processes: {}", report.processes.len()));
    for p in &report.processes {
        out.push_str(&format!(" [{} on {} pid {}]", p.command, p.hostname, p.pid));
    }
    out.push('\n');
    match &report.last_sweep {
        Some(s) => out.push_str(&format!(
            "last successful sweep: finished {} ({} checks, {})\n",
            s.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            s.checks,
            s.trigger
        )),
        None => out.push_str("last successful sweep: none yet\n"),
    }
    out
}

/// Left-aligns the first column and right-aligns the rest.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(
                |(i, cell)| {
                    if i == 0 { format!("{cell:<w$}", w = widths[i]) } else { format!("{cell:>w$}", w = widths[i]) }
                },
            )
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
