//! `status [--json]`: counts per supplier and status, refresh-required counts, each
//! supplier's breaker and guard, canaries, the live processes and the last sweep.

use super::CliError;
use crate::config::Settings;
use crate::safety::report::{Report, read};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, args: Args) -> Result<(), CliError> {
    let pool = super::connect(&settings).await?;
    let report = read(&pool, &settings).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", render(&report, colour_stdout()));
    }
    Ok(())
}

/// Whether stdout is a terminal that wants colour (not piped, `NO_COLOR` unset).
pub fn colour_stdout() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

const RED: &str = "\x1b[31;1m";
const YELLOW: &str = "\x1b[33m";
const GREEN: &str = "\x1b[32m";

/// The colour a `status` cell deserves: trouble in red, attention in yellow, health in
/// green; counts of zero and plain numbers stay plain.
fn status_colour(header: &str, cell: &str) -> Option<&'static str> {
    let nonzero = cell.parse::<i64>().is_ok_and(|n| n > 0);
    match header {
        "invalid" | "refresh required" if nonzero => Some(YELLOW),
        "held" if nonzero => Some(RED),
        "breaker" if cell.starts_with("open") => Some(RED),
        "breaker" if cell == "half-open" => Some(YELLOW),
        "breaker" if cell == "closed" => Some(GREEN),
        "guard" if cell.starts_with("HOLDING") => Some(RED),
        "guard" if cell == "clear" => Some(GREEN),
        _ => None,
    }
}

/// The aligned tables; `colour` adds ANSI colours (only for a terminal).
pub fn render(report: &Report, colour: bool) -> String {
    let table = |rows: &[Vec<String>]| {
        if colour { table_styled(rows, status_colour) } else { table(rows) }
    };
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
    table_styled(rows, |_, _| None)
}

/// [`table`], with each body cell wrapped in the ANSI style `style(column header, cell)`
/// gives it, after padding, so colours never upset the alignment.
pub fn table_styled(rows: &[Vec<String>], style: impl Fn(&str, &str) -> Option<&'static str>) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let padded =
                    if i == 0 { format!("{cell:<w$}", w = widths[i]) } else { format!("{cell:>w$}", w = widths[i]) };
                let header = rows.first().and_then(|h| h.get(i)).map_or("", String::as_str);
                match style(header, cell).filter(|_| !std::ptr::eq(row, &rows[0])) {
                    Some(code) => format!("{code}{padded}\x1b[0m"),
                    None => padded,
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::safety::report::SupplierStatus;

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn colour_marks_trouble_and_never_moves_a_column() {
        let mut suppliers = BTreeMap::new();
        suppliers.insert(
            "emis".to_owned(),
            SupplierStatus {
                statuses: [("valid", 10), ("invalid", 2)].iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                refresh_required: 2,
                configured: true,
                breaker: Some("open".to_owned()),
                breaker_open_until: None,
                guard: Some("holding".to_owned()),
                guard_held_since: Some(chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()),
                held_verdicts: 5,
                ..SupplierStatus::default()
            },
        );
        let report = Report { suppliers, last_sweep: None, processes: vec![] };
        let plain = render(&report, false);
        let coloured = render(&report, true);
        assert!(!plain.contains('\x1b'));
        assert!(coloured.contains(RED) && coloured.contains(YELLOW), "{coloured}");
        assert_eq!(strip_ansi(&coloured), plain, "colour only wraps padded cells");
        assert!(plain.contains("HOLDING since"));
    }
}
