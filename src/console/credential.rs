//! Credential lookup by user id: standing, strikes, next check, refresh lifecycle and the
//! event timeline; "check now" and (operators) "recheck".

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::Markup;
use serde::Deserialize;

use super::auth::Principal;
use super::views::Nav;
use super::{ConsoleState, UserForm, db_error, html, refuse, refuse_forged, screen, views};
use crate::store;

#[derive(Deserialize)]
pub(super) struct UserQuery {
    #[serde(default)]
    user: String,
}

async fn credential_page(state: &ConsoleState, who: &Principal, user: &str, note: Option<Markup>) -> Response {
    let user = user.trim();
    if user.is_empty() {
        return screen(state, "Credential lookup", who, Nav::Credentials, views::lookup_form(""));
    }
    let now = state.clock.now();
    let read = async {
        let detail = store::console::credential(&state.pool, user).await?;
        let filter = store::console::EventFilter { user_id: Some(user.to_owned()), ..Default::default() };
        let events = store::console::events(&state.pool, &filter, 200).await?;
        Ok::<_, sqlx::Error>((detail, events))
    };
    match read.await {
        Ok((Some(c), events)) => {
            let body = maud::html! { (views::lookup_form(user)) (views::credential(&c, &events, who, now, note)) };
            screen(state, "Credential lookup", who, Nav::Credentials, body)
        }
        Ok((None, events)) => {
            let body = maud::html! {
                (views::lookup_form(user))
                (views::message("bad", "No credential is stored for this user id."))
                @if !events.is_empty() {
                    p.meta { "Its events are kept until retention prunes them (it may have been erased):" }
                }
            };
            html(StatusCode::NOT_FOUND, views::page("Credential lookup", Some(who), Nav::Credentials, None, body))
        }
        Err(e) => db_error(who, e),
    }
}

pub(super) async fn credential(
    State(state): State<ConsoleState>,
    who: Principal,
    Query(q): Query<UserQuery>,
) -> Response {
    credential_page(&state, &who, &q.user, None).await
}

/// "Check now" is open to viewers too: it only asks for a priority check, the one an RP
/// makes during a login, judged by the same gates and rules as any other; it writes an
/// event naming who asked.
pub(super) async fn check_now(State(state): State<ConsoleState>, who: Principal, Form(f): Form<UserForm>) -> Response {
    if let Some(refused) = refuse_forged(&who, &f.csrf) {
        return refused;
    }
    let now = state.clock.now();
    match store::console::request_check(&state.pool, &f.user, now, &who.actor()).await {
        Ok(outcome) => {
            let note = match outcome {
                store::console::Requested::Done => {
                    tracing::info!(user_id = %f.user, by = %who.actor(), "console: priority check requested");
                    views::message(
                        "good",
                        "Check requested: a running service checks it within a second or so. Reload to see the answer.",
                    )
                }
                store::console::Requested::AlreadyPending => {
                    views::message("good", "A check is already pending; nothing more was done.")
                }
                store::console::Requested::NotCheckable => {
                    views::message("bad", "No checkable credential is stored for this user id; nothing was done.")
                }
            };
            credential_page(&state, &who, &f.user, Some(note)).await
        }
        Err(e) => db_error(&who, e),
    }
}

pub(super) async fn recheck(State(state): State<ConsoleState>, who: Principal, Form(f): Form<UserForm>) -> Response {
    if let Some(refused) = refuse(&who, &f.csrf) {
        return refused;
    }
    let now = state.clock.now();
    let run = async {
        let mut tx = state.pool.begin().await?;
        let filter = store::status::RecheckFilter { supplier: None, user_id: Some(f.user.clone()) };
        let n = store::status::recheck(&mut *tx, &filter, now).await?;
        if n > 0 {
            store::console::record_action(&mut *tx, &f.user, "recheck", &who.actor(), serde_json::json!({}), now)
                .await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(n)
    };
    match run.await {
        Ok(n) => {
            let note = if n > 0 {
                tracing::info!(user_id = %f.user, by = %who.actor(), "console: credential made due now");
                views::message("good", "Made due now: the next sweep (or priority round) checks it.")
            } else {
                views::message("good", "Already due (or not checkable); nothing more was done.")
            };
            credential_page(&state, &who, &f.user, Some(note)).await
        }
        Err(e) => db_error(&who, e),
    }
}
