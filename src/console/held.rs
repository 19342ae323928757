//! Held verdicts: per supplier and practice, largest first, with their evidence; release or
//! discard behind a confirmation that counts the users it will flag.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::auth::Principal;
use super::views::Nav;
use super::{ConsoleState, db_error, refusal, refuse, screen, views};
use crate::model::Supplier;
use crate::store;

#[derive(Deserialize)]
pub(super) struct HeldQuery {
    #[serde(default)]
    supplier: String,
}

/// A supplier whose guard can hold (not Microtest), from a form or query.
fn checkable(value: &str) -> Option<Supplier> {
    value.parse::<Supplier>().ok().filter(|s| *s != Supplier::Microtest)
}

fn ods(value: &str) -> Result<Option<&str>, ()> {
    let v = value.trim();
    if v.is_empty() {
        Ok(None)
    } else if crate::token::validate_ods_code(v).is_ok() {
        Ok(Some(v))
    } else {
        Err(())
    }
}

pub(super) async fn held(State(state): State<ConsoleState>, who: Principal, Query(q): Query<HeldQuery>) -> Response {
    let only = checkable(&q.supplier);
    let read = async {
        let mut out = Vec::new();
        for st in store::guard::states(&state.pool).await? {
            let Some(supplier) = checkable(&st.supplier) else { continue };
            if only.is_some_and(|o| o != supplier) {
                continue;
            }
            let by_practice = store::guard::held_by_practice(&state.pool, supplier).await?;
            let first = store::guard::held(&state.pool, supplier, None, 50).await?;
            out.push(views::HeldSupplier { state: st, by_practice, first });
        }
        Ok::<_, sqlx::Error>(out)
    };
    match read.await {
        Ok(suppliers) => screen(&state, "Held verdicts", &who, Nav::Held, views::held(&suppliers, &who)),
        Err(e) => db_error(&who, e),
    }
}

#[derive(Deserialize)]
pub(super) struct ConfirmQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    supplier: String,
    #[serde(default)]
    ods: String,
}

pub(super) async fn held_confirm(
    State(state): State<ConsoleState>,
    who: Principal,
    Query(q): Query<ConfirmQuery>,
) -> Response {
    if !who.may_act() {
        return refusal(StatusCode::FORBIDDEN, Some(&who), "Your role (viewer) may read but not act.");
    }
    let (Some(supplier), Ok(ods), action @ ("release" | "discard")) =
        (checkable(&q.supplier), ods(&q.ods), q.action.as_str())
    else {
        return refusal(
            StatusCode::BAD_REQUEST,
            Some(&who),
            "Choose a supplier (emis, tpp or vision), a valid ODS code and release or discard.",
        );
    };
    let now = state.clock.now();
    let read = async {
        let preview = store::guard::preview_release(&state.pool, supplier, ods, now, &state.rules).await?;
        let held: i64 = store::guard::held_by_practice(&state.pool, supplier)
            .await?
            .into_iter()
            .filter(|(o, _)| ods.is_none_or(|x| x == o))
            .map(|(_, n)| n)
            .sum();
        Ok::<_, sqlx::Error>((preview, held))
    };
    match read.await {
        Ok((preview, held)) => {
            let title = if action == "release" { "Confirm release" } else { "Confirm discard" };
            screen(
                &state,
                title,
                &who,
                Nav::Held,
                views::confirm(action, supplier.as_str(), ods, &preview, held, &who.csrf),
            )
        }
        Err(e) => db_error(&who, e),
    }
}

#[derive(Deserialize)]
pub(super) struct ResolveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    supplier: String,
    #[serde(default)]
    ods: String,
}

pub(super) async fn held_release(
    State(state): State<ConsoleState>,
    who: Principal,
    Form(f): Form<ResolveForm>,
) -> Response {
    resolve(state, who, f, "release").await
}

pub(super) async fn held_discard(
    State(state): State<ConsoleState>,
    who: Principal,
    Form(f): Form<ResolveForm>,
) -> Response {
    resolve(state, who, f, "discard").await
}

async fn resolve(state: ConsoleState, who: Principal, f: ResolveForm, action: &'static str) -> Response {
    if let Some(refused) = refuse(&who, &f.csrf) {
        return refused;
    }
    let (Some(supplier), Ok(ods)) = (checkable(&f.supplier), ods(&f.ods)) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            Some(&who),
            "Choose a supplier (emis, tpp or vision) and a valid ODS code.",
        );
    };
    let now = state.clock.now();
    let actor = who.actor();
    let done = match action {
        "release" => store::guard::release_as(&state.pool, supplier, ods, now, &state.rules, Some(&actor)).await,
        _ => store::guard::discard_as(&state.pool, supplier, ods, now, Some(&actor)).await,
    };
    match done {
        Ok(r) => {
            tracing::info!(
                supplier = supplier.as_str(),
                ods_code = ods,
                by = %actor,
                applied = r.applied,
                newly_flagged = r.newly_flagged,
                stale = r.stale,
                discarded = r.discarded,
                remaining = r.remaining,
                guard_clear = r.guard_cleared,
                "guard verdicts {action}d from the console"
            );
            let title = if action == "release" { "Released" } else { "Discarded" };
            screen(&state, title, &who, Nav::Held, views::resolved(action, supplier.as_str(), ods, &r))
        }
        Err(e) => db_error(&who, e),
    }
}
