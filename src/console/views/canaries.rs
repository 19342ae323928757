//! The canary list, with the add and remove forms for operators.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::{ago, badge, enc, time};
use crate::console::auth::Principal;
use crate::store::canaries::CanaryRow;

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
