//! The overview: per supplier, checks per minute with the last hour's chart, breaker and guard,
//! canaries, live processes, and the last and next sweep.

use chrono::{DateTime, Utc};
use maud::{Markup, PreEscaped, html};

use super::{ago, badge, breaker_badge, enc, time};
use crate::console::chart;
use crate::safety::report::{Report, SupplierStatus};
use crate::store::canaries::CanaryRow;
use crate::store::console::MinuteCounts;

/// What the overview needs (all read up front).
pub struct Overview {
    pub report: Report,
    pub minutes: Vec<MinuteCounts>,
    pub canaries: Vec<CanaryRow>,
    pub next_sweep: Option<DateTime<Utc>>,
    pub schedule: String,
    pub now: DateTime<Utc>,
}

/// The overview's live section (also served alone, for the in-place refresh).
pub fn overview_live(o: &Overview) -> Markup {
    html! {
        p.meta {
            "Updated " time datetime=(o.now.to_rfc3339()) { (time(o.now)) } ". Last successful sweep: "
            @match &o.report.last_sweep {
                Some(s) => { strong { (ago(s.finished_at, o.now)) } " (" (s.checks) " checks, " (s.trigger) ")" }
                None => { strong { "never" } }
            }
            ". Next sweep: "
            @match o.next_sweep {
                Some(t) => { strong { (ago(t, o.now)) } " (" (o.schedule) ")" }
                None => { strong { "none scheduled" } " (" (o.schedule) ")" }
            }
            "."
        }
        div.grid {
            // The checked suppliers first; Microtest (never checked) last.
            @for (name, s) in o.report.suppliers.iter().filter(|(n, _)| n.as_str() != "microtest") {
                (supplier_card(name, s, o))
            }
        }
        @if let Some(m) = o.report.suppliers.get("microtest") {
            p.meta { "Microtest: " (m.statuses.get("unsupported").copied().unwrap_or(0)) " stored, never checked (Microtest has no usable token)." }
        }
        h2 { "Live processes" }
        @if o.report.processes.is_empty() {
            p.meta { "No live process (none has heartbeated in the last few seconds)." }
        } @else {
            table {
                thead { tr { th { "command" } th { "host" } th { "pid" } th { "version" } th { "started" } th { "heartbeat" } } }
                tbody {
                    @for p in &o.report.processes {
                        tr { td { (p.command) } td { (p.hostname) } td { (p.pid) } td { (p.version) }
                             td { (ago(p.started_at, o.now)) } td { (ago(p.heartbeat_at, o.now)) } }
                    }
                }
            }
        }
    }
}

fn supplier_card(name: &str, s: &SupplierStatus, o: &Overview) -> Markup {
    let bars = chart::bars(&o.minutes, name, o.now);
    // Checks and calls over the last five whole minutes and the current one, per minute.
    let recent = |count: fn(&MinuteCounts) -> i64| {
        let sum: i64 = o
            .minutes
            .iter()
            .filter(|m| m.supplier == name && o.now - m.minute < chrono::TimeDelta::minutes(6))
            .map(count)
            .sum();
        sum as f64 / 6.0
    };
    let (checks_per_minute, calls_per_minute) = (recent(|m| m.checks), recent(|m| m.calls));
    let canaries: Vec<&CanaryRow> = o.canaries.iter().filter(|c| c.supplier.as_str() == name).collect();
    let holding = s.guard.as_deref() == Some("holding");
    let open = s.breaker.as_deref() == Some("open");
    html! {
        section class=(if holding || open { "card alert" } else { "card" }) data-supplier=(name) {
            h2 { (name) @if !s.configured && name != "microtest" { " " (badge("muted", "not configured here")) } }
            {
                dl {
                    dt { "Checks per minute" } dd data-checks-per-minute=(name) { (format!("{checks_per_minute:.1}")) }
                    dt { "Supplier calls per minute" } dd { (format!("{calls_per_minute:.1}")) " (retries included)" }
                    dt { "Circuit breaker" }
                    dd data-breaker=(name) {
                        (breaker_badge(s.breaker.as_deref()))
                        @if let Some(until) = s.breaker_open_until { " until " (time(until)) }
                        @if let Some(w) = &s.breaker_window { " · window: " (w.calls) " calls, " (w.transient) " transient" }
                    }
                    dt { "Invalidation guard" }
                    dd data-guard=(name) {
                        @if holding { (badge("bad", "HOLDING")) } @else { (badge("good", "clear")) }
                        @if let Some(since) = s.guard_held_since { " since " (time(since)) }
                        @if let Some(w) = &s.guard_window { " · window: " (w.answers) " answers, " (w.invalid) " invalid" }
                    }
                    dt { "Held verdicts" }
                    dd data-held=(name) {
                        @if s.held_verdicts > 0 { a href={"/held?supplier=" (enc(name))} { strong { (s.held_verdicts) } " — review" } } @else { "0" }
                    }
                    dt { "Credentials" }
                    dd {
                        @for (status, n) in &s.statuses { @if *n > 0 { span.count { (status) " " strong { (n) } } " " } }
                        @if s.refresh_required > 0 { span.count { "refresh required " strong { (s.refresh_required) } } }
                        @if s.statuses.values().all(|n| *n == 0) { "none stored" }
                    }
                    dt { "Canaries" }
                    dd {
                        @if canaries.is_empty() { "none" }
                        @for c in &canaries {
                            span.count {
                                a href={"/credentials?user=" (enc(&c.user_id))} { (c.user_id) } ": "
                                @match c.last_outcome.as_deref() {
                                    Some("valid") => (badge("good", "valid")),
                                    Some(other) => (badge("bad", other)),
                                    None => (badge("muted", "never probed")),
                                }
                                @if let Some(at) = c.last_probed_at { " " (ago(at, o.now)) }
                            }
                        }
                    }
                }
                figure {
                    (chart::svg(&bars))
                    figcaption.legend {
                        span.key { span.swatch.valid {} "valid" }
                        span.key { span.swatch.invalid {} "invalid" }
                        span.key { span.swatch.transient {} "transient calls" }
                    }
                }
            }
        }
    }
}

/// The overview page's body around its live section (already rendered, see
/// [`overview_live`]).
pub fn overview(live: &str, refresh_secs: u64) -> Markup {
    html! {
        div #live data-src="/overview/live" data-refresh=(refresh_secs) { (PreEscaped(live)) }
    }
}
