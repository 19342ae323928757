//! Held verdicts: per supplier and practice, largest first, with their evidence; release or
//! discard behind a confirmation that counts the users it will flag.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::auth::Principal;
use super::views::Nav;
use super::{ConsoleState, db_error, html, refusal, refuse, screen, views};
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
        let held = held_in_scope(&state.pool, supplier, ods).await?;
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
    /// The number of users the confirmation said a release would flag.
    #[serde(default)]
    confirmed: String,
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
    if action == "release"
        && let Some(refused) = check_confirmed(&state, &who, supplier, ods, &f.confirmed, now).await
    {
        return refused;
    }
    let actor = who.actor();
    let done = match action {
        "release" => store::guard::release_as(&state.pool, supplier, ods, now, &state.rules, Some(&actor)).await,
        _ => store::guard::discard_as(&state.pool, supplier, ods, now, Some(&actor)).await,
    };
    match done {
        Ok(r) => {
            r.log(supplier, ods, if action == "release" { "released" } else { "discarded" }, &actor);
            let title = if action == "release" { "Released" } else { "Discarded" };
            screen(&state, title, &who, Nav::Held, views::resolved(action, supplier.as_str(), ods, &r))
        }
        Err(e) => db_error(&who, e),
    }
}

/// A release applies what its confirmation showed, or less: when verdicts held since the
/// operator confirmed would make it flag more users than the confirmation said (a sweep
/// kept running while they read it), nothing is done and the fresh confirmation is shown
/// instead (409). A release without a confirmation is refused. A second submit of the
/// same form finds less to flag, so it passes and changes nothing.
///
/// The check and the release are two statements: verdicts held in the milliseconds
/// between them are released too. That window is far smaller than the reading time it
/// closes, and those verdicts keep two strikes like every released one.
async fn check_confirmed(
    state: &ConsoleState,
    who: &Principal,
    supplier: Supplier,
    ods: Option<&str>,
    confirmed: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Response> {
    let Ok(confirmed) = confirmed.trim().parse::<u64>() else {
        return Some(refusal(
            StatusCode::BAD_REQUEST,
            Some(who),
            "A release needs its confirmation: start it from the held verdicts page; nothing was done.",
        ));
    };
    let preview = match store::guard::preview_release(&state.pool, supplier, ods, now, &state.rules).await {
        Ok(preview) => preview,
        Err(e) => return Some(db_error(who, e)),
    };
    if preview.newly_flagged <= confirmed {
        return None;
    }
    tracing::warn!(
        supplier = supplier.as_str(),
        ods_code = ods,
        by = %who.actor(),
        confirmed,
        would_flag = preview.newly_flagged,
        "console: release refused: more verdicts were held since it was confirmed"
    );
    let held = match held_in_scope(&state.pool, supplier, ods).await {
        Ok(held) => held,
        Err(e) => return Some(db_error(who, e)),
    };
    let body = maud::html! {
        (views::message(
            "bad",
            &format!(
                "More verdicts were held since you confirmed: this release would now flag {} user(s), not {confirmed}. \
                 Nothing was done; read the new numbers and confirm again.",
                preview.newly_flagged
            ),
        ))
        (views::confirm("release", supplier.as_str(), ods, &preview, held, &who.csrf))
    };
    Some(html(StatusCode::CONFLICT, views::page("Confirm release", Some(who), Nav::Held, None, body)))
}

/// The supplier's held verdicts, at one practice or all of them.
async fn held_in_scope(pool: &sqlx::PgPool, supplier: Supplier, ods: Option<&str>) -> sqlx::Result<i64> {
    let by_practice = store::guard::held_by_practice(pool, supplier).await?;
    Ok(by_practice.into_iter().filter(|(o, _)| ods.is_none_or(|x| x == o)).map(|(_, n)| n).sum())
}
