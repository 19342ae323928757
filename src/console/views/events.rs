//! The events list and its filters.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::{ago, badge, enc, time};
use crate::store::console::EventRow;

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
