//! Held verdicts and their evidence, the confirmation that counts the users an action will flag,
//! and what an action did.

use maud::{Markup, html};
use serde_json::Value;

use super::{badge, enc, message, time};
use crate::console::auth::Principal;
use crate::store::guard::{GuardState, HeldVerdict, Resolved};

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
                // What the operator saw: a release that would now flag more is refused.
                input type="hidden" name="confirmed" value=(preview.newly_flagged);
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
