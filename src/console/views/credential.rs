//! One credential: its standing, lifecycle and event timeline, never its token.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::{ago, badge, enc, opt_time, time};
use crate::console::auth::Principal;
use crate::store::console::{CredentialDetail, EventRow};

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
            @if c.status != "unsupported" {
                div.actions {
                    form.inline method="post" action="/credentials/check" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        input type="hidden" name="user" value=(c.user_id);
                        button type="submit" { "Check now" }
                    }
                    @if who.may_act() {
                        form.inline method="post" action="/credentials/recheck" {
                            input type="hidden" name="csrf" value=(who.csrf);
                            input type="hidden" name="user" value=(c.user_id);
                            button.secondary type="submit" { "Recheck (make due now)" }
                        }
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
