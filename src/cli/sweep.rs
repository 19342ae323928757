//! `sweep [--supplier S] [--dry-run]`: one pass over every credential due when it starts.

use super::progress::{Progress, Unit};
use super::{CliError, supplier_arg};
use crate::config::Settings;
use crate::model::Supplier;
use crate::shutdown;
use crate::sweep::{SweepReport, SweepRequest, Trigger};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this supplier's credentials.
    #[arg(long, value_parser = supplier_arg)]
    pub supplier: Option<Supplier>,
    /// Check and report what would change, writing no verdict.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(mut settings: Settings, args: Args) -> Result<(), CliError> {
    if let Some(s) = args.supplier {
        if s == Supplier::Microtest {
            return Err(CliError::Input("microtest credentials are never checked (no usable token exists)".into()));
        }
        if settings.supplier(s).is_none() {
            return Err(CliError::Input(format!(
                "--supplier {s}: that supplier is not configured (set IM1_{}_URL)",
                s.as_str().to_uppercase()
            )));
        }
    }
    let pool = super::connect(&settings).await?;
    super::require_keys_in_use(&pool, settings.require_keys()?).await?;
    let engine = super::engine(&mut settings, pool, crate::clock::system(), "sweep")?;
    if engine.adapters.is_empty() {
        return Err(CliError::Input("no supplier is configured: set IM1_EMIS_URL (or another supplier's URL)".into()));
    }
    let (trigger, stop) = shutdown::channel();
    shutdown::on_signals(trigger);
    let request = SweepRequest { supplier: args.supplier, dry_run: args.dry_run, trigger: Trigger::Command };
    let due = crate::store::claims::count_due(&engine.pool, &engine.suppliers_for(&request), engine.clock.now())
        .await
        .ok()
        .map(|n| n.max(0) as u64);
    let progress = Progress::start("sweep", Unit::Checks, due, engine.progress.clone());
    let report = engine.sweep(request, stop).await;
    progress.finish().await;
    engine.safety.deregister().await;
    let report = report?;
    if !args.dry_run {
        crate::sweep::schedule::prune_events(&engine, settings.event_retention).await;
    }
    print_report(&report, args.dry_run, args.json);
    Ok(())
}

pub(super) fn print_report(report: &SweepReport, dry_run: bool, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(report).unwrap_or_default());
        return;
    }
    if dry_run {
        for c in &report.changes {
            println!(
                "would change {} ({}): {} -> {}, outcome {}{}{}",
                c.user_id,
                c.supplier,
                c.from_status,
                c.to_status,
                c.outcome.as_deref().unwrap_or("-"),
                c.reason.as_deref().map(|r| format!(", reason {r}")).unwrap_or_default(),
                if c.refresh_required { ", refresh required" } else { "" },
            );
        }
    }
    let outcomes: Vec<String> = report.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "{}{} checks in {:.1}s ({}); {} status change(s){}{}{}",
        if dry_run { "dry run, nothing written: " } else { "" },
        report.checks,
        report.seconds,
        if outcomes.is_empty() { "nothing due".to_owned() } else { outcomes.join(", ") },
        report.status_changes,
        if report.leases_lost > 0 {
            format!("; {} verdict(s) dropped (claim lost)", report.leases_lost)
        } else {
            String::new()
        },
        if report.released > 0 { format!("; {} claim(s) given back", report.released) } else { String::new() },
        if report.interrupted { "; interrupted by shutdown" } else { "" },
    );
    for s in &report.canary_failed {
        println!("{s}: a canary did not answer valid: no verdicts for {s} in this sweep (its rows skipped)");
    }
    for s in &report.stopped {
        println!("{s}: the supplier said our configuration is wrong: checks of {s} stopped for this sweep");
    }
    if let Some(held) = report.outcomes.get("held") {
        println!("{held} invalid verdict(s) held by the invalidation guard: see `guard list`");
    }
}
