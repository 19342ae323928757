//! `status [--json]`: counts per supplier and status, refresh-required counts, last sweep.

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
}

#[derive(Debug, Default, serde::Serialize)]
pub struct SupplierStatus {
    /// Credentials per status (every status present, zeros included).
    pub statuses: BTreeMap<String, i64>,
    pub refresh_required: i64,
    /// Whether this process's configuration checks the supplier.
    pub configured: bool,
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
    Ok(Report { suppliers, last_sweep: store::sweeps::last_success(pool).await? })
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
