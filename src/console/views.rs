//! The console's pages, server-rendered with maud (every interpolation is HTML-escaped).
//! Each takes data already read; none reads the database. No token, ciphertext or key
//! is ever in that data: the store's console queries do not select them.

use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use super::auth::Principal;
use super::chart;
use crate::safety::report::{Report, SupplierStatus};
use crate::store::canaries::CanaryRow;
use crate::store::console::{CredentialDetail, EventRow, MinuteCounts};
use crate::store::guard::{GuardState, HeldVerdict, Resolved};

/// Percent-encodes a query value (user ids may hold any printable character).
pub fn enc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true).replace('T', " ")
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "—".to_owned(), time)
}

/// How long ago (or ahead) `t` is, to the nearest unit.
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, future) = if secs < 0 { (-secs, true) } else { (secs, false) };
    let text = match n {
        0..=59 => format!("{n}s"),
        60..=3599 => format!("{}m", n / 60),
        3600..=86_399 => format!("{}h {}m", n / 3600, (n % 3600) / 60),
        _ => format!("{}d", n / 86_400),
    };
    if future { format!("in {text}") } else { format!("{text} ago") }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Held,
    Credentials,
    Canaries,
    Events,
    None,
}

/// The page around every screen: navigation, who is signed in, and the sign-out form.
pub fn page(title: &str, who: Option<&Principal>, nav: Nav, refresh: Option<u64>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                @if let Some(secs) = refresh {
                    // Without JavaScript the overview reloads itself; with it, only the
                    // live section is fetched (console.js) and this never fires.
                    noscript { meta http-equiv="refresh" content=(secs * 3); }
                }
                title { (title) " · im1-revalidator console" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header.top {
                    span.brand { "im1-revalidator" }
                    @if let Some(who) = who {
                        nav {
                            @for (item, href, label) in [
                                (Nav::Overview, "/overview", "Overview"),
                                (Nav::Held, "/held", "Held verdicts"),
                                (Nav::Credentials, "/credentials", "Credential lookup"),
                                (Nav::Canaries, "/canaries", "Canaries"),
                                (Nav::Events, "/events", "Events"),
                            ] {
                                a href=(href) class=[(item == nav).then_some("active")] { (label) }
                            }
                        }
                        span.who {
                            span data-user=(who.name) { (who.name) } " · "
                            span.role data-role=(who.role.as_str()) { (who.role.as_str()) }
                            @if who.session {
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(who.csrf);
                                    button.link type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn login(csrf: &str, message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message { p.flash.bad role="alert" { (m) } }
        form.card.login method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            label { "User name" input type="text" name="name" autocomplete="username" required autofocus; }
            label { "Password" input type="password" name="password" autocomplete="current-password" required; }
            button type="submit" { "Sign in" }
        }
    }
}

pub fn message(kind: &str, text: &str) -> Markup {
    html! { p class={"flash " (kind)} role="status" { (text) } }
}

/// A page-sized refusal or error (never internal error text).
pub fn problem(text: &str, back: Option<&str>) -> Markup {
    html! {
        (message("bad", text))
        @if let Some(back) = back { p { a href=(back) { "Back" } } }
    }
}

fn badge(kind: &str, text: &str) -> Markup {
    html! { span class={"badge " (kind)} { (text) } }
}

fn breaker_badge(state: Option<&str>) -> Markup {
    match state {
        Some("open") => badge("bad", "open"),
        Some("half_open") => badge("warn", "half-open"),
        Some(s) => badge("good", s),
        None => html! { "—" },
    }
}

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
    // Calls over the last five whole minutes and the current one, per minute.
    let recent: i64 = o
        .minutes
        .iter()
        .filter(|m| m.supplier == name && o.now - m.minute < chrono::TimeDelta::minutes(6))
        .map(|m| m.calls)
        .sum();
    let per_minute = recent as f64 / 6.0;
    let canaries: Vec<&CanaryRow> = o.canaries.iter().filter(|c| c.supplier.as_str() == name).collect();
    let holding = s.guard.as_deref() == Some("holding");
    let open = s.breaker.as_deref() == Some("open");
    html! {
        section class=(if holding || open { "card alert" } else { "card" }) data-supplier=(name) {
            h2 { (name) @if !s.configured && name != "microtest" { " " (badge("muted", "not configured here")) } }
            {
                dl {
                    dt { "Supplier calls per minute" } dd { (format!("{per_minute:.1}")) }
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

/// One supplier on the held-verdicts screen.
pub struct HeldSupplier {
    pub state: GuardState,
    pub by_practice: Vec<(String, i64)>,
    pub first: Vec<HeldVerdict>,
}

fn evidence_cells(e: &Value) -> Markup {
    let field = |k: &str| e.get(k).map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
    html! {
        td { (field("http_status").unwrap_or_default()) }
        td { code { (field("code").unwrap_or_default()) } }
        td.msg { (field("message").or_else(|| field("detail")).unwrap_or_default()) }
    }
}

pub fn held(suppliers: &[HeldSupplier], who: &Principal) -> Markup {
    html! {
        @if suppliers.iter().all(|s| s.state.held_verdicts == 0 && s.state.held_since.is_none()) {
            (message("good", "No supplier's guard is holding and no verdict is held."))
        }
        @for s in suppliers {
            @let name = &s.state.supplier;
            section.card data-held-supplier=(name) {
                h2 {
                    (name) " "
                    @match s.state.held_since {
                        Some(since) => { (badge("bad", "HOLDING")) " since " (time(since)) }
                        None => (badge("good", "clear")),
                    }
                    " · " (s.state.held_verdicts) " held"
                }
                @if let Some(ev) = &s.state.evidence { p.meta { "Tripped by: " code { (ev.to_string()) } } }
                @if !s.by_practice.is_empty() {
                    table {
                        thead { tr { th { "practice (ODS code)" } th.num { "held" } @if who.may_act() { th { "" } } } }
                        tbody {
                            @for (ods, n) in &s.by_practice {
                                tr data-ods=(ods) {
                                    td { (ods) } td.num { (n) }
                                    @if who.may_act() {
                                        td.row-actions {
                                            a.button href={"/held/confirm?action=release&supplier=" (enc(name)) "&ods=" (enc(ods))} { "Release…" }
                                            " "
                                            a.button.secondary href={"/held/confirm?action=discard&supplier=" (enc(name)) "&ods=" (enc(ods))} { "Discard…" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if who.may_act() {
                        p {
                            a.button href={"/held/confirm?action=release&supplier=" (enc(name))} { "Release all of " (name) "…" }
                            " "
                            a.button.secondary href={"/held/confirm?action=discard&supplier=" (enc(name))} { "Discard all of " (name) "…" }
                        }
                    } @else {
                        p.meta { "Your role (viewer) may read but not release or discard." }
                    }
                    h3 { "Oldest " (s.first.len()) " held verdicts, with the supplier's evidence" }
                    table {
                        thead { tr { th { "user" } th { "ODS" } th { "reason" } th { "held" } th { "HTTP" } th { "code" } th { "message" } } }
                        tbody {
                            @for h in &s.first {
                                tr {
                                    td { a href={"/credentials?user=" (enc(&h.user_id))} { (h.user_id) } }
                                    td { (h.ods_code) } td { (h.reason) } td { (time(h.held_at)) }
                                    (evidence_cells(&h.evidence))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The confirmation of a release or discard: what it will do, counted now.
pub fn confirm(action: &str, supplier: &str, ods: Option<&str>, preview: &Resolved, held: i64, csrf: &str) -> Markup {
    let scope = match ods {
        Some(ods) => format!("{supplier} practice {ods}"),
        None => format!("all of {supplier}"),
    };
    html! {
        section.card.confirm {
            @if action == "release" {
                p.big {
                    "Releasing " strong { (scope) } " applies " strong data-applied { (preview.applied) } " held verdict(s) and flags "
                    strong.bad data-flagged { (preview.newly_flagged) } " user(s) for refresh."
                }
                p.meta {
                    (preview.stale) " are stale (their credential changed since) and will be dropped unapplied. "
                    "Two strikes still apply: a released first strike only makes the credential suspect. "
                    @if preview.guard_cleared { "No held verdict will remain, so the guard will be cleared." }
                    @else { (preview.remaining) " held verdict(s) of " (supplier) " will remain; the guard keeps holding." }
                }
            } @else {
                p.big {
                    "Discarding " strong { (scope) } " drops " strong data-discarded { (held) } " held verdict(s) and flags "
                    strong data-flagged { "0" } " users: standings are unchanged and the credentials are checked again on schedule."
                }
            }
            form method="post" action={"/held/" (action)} {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="supplier" value=(supplier);
                @if let Some(ods) = ods { input type="hidden" name="ods" value=(ods); }
                button type="submit" class=[(action == "discard").then_some("secondary")] {
                    @if action == "release" { "Release and flag " (preview.newly_flagged) " user(s)" } @else { "Discard " (held) " held verdict(s)" }
                }
                " " a href={"/held?supplier=" (enc(supplier))} { "Cancel" }
            }
        }
    }
}

pub fn resolved(action: &str, supplier: &str, ods: Option<&str>, r: &Resolved) -> Markup {
    let scope = ods.map_or_else(|| supplier.to_owned(), |o| format!("{supplier} practice {o}"));
    html! {
        @if action == "release" {
            (message("good", &format!(
                "{scope}: {} held verdict(s) applied, {} user(s) newly flagged for refresh, {} stale.",
                r.applied, r.newly_flagged, r.stale)))
        } @else {
            (message("good", &format!("{scope}: {} held verdict(s) discarded; standings unchanged.", r.discarded)))
        }
        p data-remaining { (supplier) ": " (r.remaining) " held verdict(s) remaining; guard "
            @if r.guard_cleared { strong { "clear" } } @else { strong { "still holding" } } "." }
        p { a href={"/held?supplier=" (enc(supplier))} { "Back to held verdicts" } " · " a href="/events?kind=guard" { "See the events" } }
    }
}

pub fn lookup_form(user: &str) -> Markup {
    html! {
        form.card.search method="get" action="/credentials" {
            label { "User id " input type="search" name="user" value=(user) required; }
            button type="submit" { "Look up" }
        }
    }
}

pub fn credential(
    c: &CredentialDetail,
    events: &[EventRow],
    who: &Principal,
    now: DateTime<Utc>,
    note: Option<Markup>,
) -> Markup {
    let status_kind = match c.status.as_str() {
        "valid" => "good",
        "invalid" => "bad",
        _ => "muted",
    };
    html! {
        @if let Some(note) = note { (note) }
        section.card data-credential=(c.user_id) {
            h2 { (c.user_id) " " (badge(status_kind, &c.status)) @if c.refresh_required { " " (badge("bad", "refresh required")) } @if c.canary { " " (badge("muted", "canary")) } }
            dl.two {
                dt { "Supplier · practice" } dd { (c.supplier) " · " (c.ods_code) }
                dt { "Status · reason" } dd data-status { (c.status) @if let Some(r) = &c.reason { " · " (r) } }
                dt { "Last outcome" } dd data-outcome { (c.last_outcome.as_deref().unwrap_or("—")) " · checked " (opt_time(c.last_checked_at)) }
                dt { "Last verified valid" } dd { (opt_time(c.last_verified_at)) }
                dt { "Strike" } dd {
                    @match (c.strike_at, &c.strike_reason) {
                        (Some(at), Some(r)) => { "first invalid answer (" (r) ") at " (time(at)) ", awaiting confirmation" }
                        _ => { "none" }
                    }
                }
                dt { "Consecutive checks without a verdict" } dd { (c.failures) }
                dt { "Next check" } dd { (time(c.next_check_at)) " (" (ago(c.next_check_at, now)) ")"
                    @if let Some(p) = c.priority_requested_at { " · priority check requested " (ago(p, now)) }
                    @if let Some(l) = c.lease_expires_at.filter(|l| *l > now) { " · being checked (claim until " (time(l)) ")" } }
                dt { "Refresh lifecycle" } dd {
                    @if c.refresh_required { "the user is asked to refresh at next login" } @else { "no refresh asked" }
                    " · " (c.refresh_attempts) " refresh attempt(s)"
                    @if let Some(s) = c.refresh_suppressed_until.filter(|s| *s > now) { " · prompts suppressed until " (time(s)) }
                }
                @if let Some(r) = &c.held_reason {
                    dt { "Held by the guard" } dd { (badge("bad", r)) " since " (opt_time(c.held_at)) " · " a href={"/held?supplier=" (enc(&c.supplier))} { "review" } }
                }
                dt { "Invalidated" } dd { (opt_time(c.invalidated_at)) }
                dt { "Stored · updated" } dd { (time(c.created_at)) " · " (time(c.updated_at)) " · key id " (c.key_id.as_deref().unwrap_or("—")) }
            }
            @if who.may_act() && c.status != "unsupported" {
                div.actions {
                    form.inline method="post" action="/credentials/check" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        input type="hidden" name="user" value=(c.user_id);
                        button type="submit" { "Check now" }
                    }
                    form.inline method="post" action="/credentials/recheck" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        input type="hidden" name="user" value=(c.user_id);
                        button.secondary type="submit" { "Recheck (make due now)" }
                    }
                }
            }
        }
        h2 { "Timeline" }
        (timeline(events, now))
    }
}

fn timeline(events: &[EventRow], now: DateTime<Utc>) -> Markup {
    html! {
        @if events.is_empty() { p.meta { "No events kept for this credential." } }
        ol.timeline {
            @for e in events {
                li data-kind=(e.kind) {
                    span.when title=(time(e.at)) { (time(e.at)) " · " (ago(e.at, now)) }
                    " " span.kind { (e.kind) } " "
                    @if e.from_status.as_deref() != Some(e.to_status.as_str()) {
                        (e.from_status.as_deref().unwrap_or("—")) " → " strong { (e.to_status) }
                    } @else { (e.to_status) }
                    @if let Some(o) = &e.outcome { " · " (o) }
                    @if let Some(r) = &e.reason { " · " (r) }
                    @if e.refresh_required { " · " (badge("bad", "refresh required")) }
                    @if e.evidence.as_object().is_some_and(|m| !m.is_empty()) { br; code.evidence { (e.evidence.to_string()) } }
                }
            }
        }
    }
}

pub fn canaries(rows: &[CanaryRow], who: &Principal, now: DateTime<Utc>) -> Markup {
    html! {
        p.meta { "Canaries are credentials known to be good; each sweep probes a supplier's canaries first, and a failing one stops that supplier's verdicts for the sweep." }
        @if rows.is_empty() { p { "No canaries." } } @else {
            table {
                thead { tr { th { "user" } th { "supplier" } th { "ODS" } th { "added" } th { "last probe" } th { "outcome" } th { "note" } th {} } }
                tbody {
                    @for r in rows {
                        tr data-canary=(r.user_id) {
                            td { a href={"/credentials?user=" (enc(&r.user_id))} { (r.user_id) } }
                            td { (r.supplier.as_str()) } td { (r.ods_code) } td { (time(r.added_at)) }
                            td { @match r.last_probed_at { Some(t) => { (ago(t, now)) }, None => { "never" } } }
                            td { @match r.last_outcome.as_deref() { Some("valid") => (badge("good", "valid")), Some(o) => (badge("bad", o)), None => { "—" } } }
                            td { (r.note.as_deref().unwrap_or("")) }
                            td { @if who.may_act() {
                                form.inline method="post" action="/canaries/remove" {
                                    input type="hidden" name="csrf" value=(who.csrf);
                                    input type="hidden" name="user" value=(r.user_id);
                                    button.secondary type="submit" { "Remove" }
                                }
                            } }
                        }
                    }
                }
            }
        }
        @if who.may_act() {
            h2 { "Add a canary" }
            form.card method="post" action="/canaries/add" {
                input type="hidden" name="csrf" value=(who.csrf);
                label { "User id of a stored EMIS, TPP or Vision credential " input type="text" name="user" required; }
                label { "Note (whose account it is) " input type="text" name="note" maxlength="500"; }
                button type="submit" { "Add" }
            }
        }
    }
}

pub struct EventQuery<'a> {
    pub supplier: &'a str,
    pub kind: &'a str,
    pub reason: &'a str,
    pub user: &'a str,
}

pub const KINDS: &[&str] = &["check", "import", "refresh_outcome", "guard", "erasure", "operator"];
pub const REASONS: &[&str] = &[
    "token_rejected",
    "access_revoked",
    "not_registered",
    "access_restricted",
    "refresh_exhausted",
    "valid",
    "suspect",
    "invalid",
    "transient",
    "practice_unavailable",
    "supplier_config_error",
    "held",
    "skipped",
];

pub fn events(rows: &[EventRow], q: &EventQuery<'_>, next: Option<String>, now: DateTime<Utc>) -> Markup {
    let select = |name: &str, current: &str, options: &[&str]| {
        html! {
            select name=(name) {
                option value="" { "any" }
                @for o in options { option value=(o) selected[*o == current] { (o) } }
            }
        }
    };
    html! {
        form.card.filters method="get" action="/events" {
            label { "Supplier " (select("supplier", q.supplier, &["emis", "tpp", "vision", "microtest"])) }
            label { "Kind " (select("kind", q.kind, KINDS)) }
            label { "Reason or outcome " (select("reason", q.reason, REASONS)) }
            label { "User id " input type="search" name="user" value=(q.user); }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() { p { "No events match." } } @else {
            table.events {
                thead { tr { th { "when" } th { "user" } th { "supplier" } th { "ODS" } th { "kind" } th { "status" } th { "outcome" } th { "reason" } th { "evidence" } } }
                tbody {
                    @for e in rows {
                        tr data-kind=(e.kind) {
                            td title=(time(e.at)) { (ago(e.at, now)) }
                            td { a href={"/credentials?user=" (enc(&e.user_id))} { (e.user_id) } }
                            td { (e.supplier) } td { (e.ods_code) } td { (e.kind) }
                            td { (e.from_status.as_deref().unwrap_or("—")) " → " (e.to_status) @if e.refresh_required { " " (badge("bad", "refresh")) } }
                            td { (e.outcome.as_deref().unwrap_or("")) } td { (e.reason.as_deref().unwrap_or("")) }
                            td { code.evidence { (e.evidence.to_string()) } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next { p { a href=(next) { "Older events →" } } }
    }
}

pub fn not_found() -> Markup {
    html! { (message("bad", "There is no such page.")) p { a href="/overview" { "Overview" } } }
}

/// The stylesheet and the script, embedded in the binary.
pub const CSS: &str = include_str!("assets/console.css");
pub const JS: &str = include_str!("assets/console.js");
