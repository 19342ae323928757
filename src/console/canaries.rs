//! Canary credentials: listed with their last probe; operators add and remove them.

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::Markup;

use super::auth::Principal;
use super::views::Nav;
use super::{ConsoleState, UserForm, db_error, html, refuse, views};
use crate::store;

async fn canaries_page(state: &ConsoleState, who: &Principal, note: Option<Markup>, status: StatusCode) -> Response {
    match store::canaries::list(&state.pool, None).await {
        Ok(rows) => {
            let body = maud::html! { @if let Some(n) = note { (n) } (views::canaries(&rows, who, state.clock.now())) };
            html(status, views::page("Canaries", Some(who), Nav::Canaries, None, body))
        }
        Err(e) => db_error(who, e),
    }
}

pub(super) async fn canaries(State(state): State<ConsoleState>, who: Principal) -> Response {
    canaries_page(&state, &who, None, StatusCode::OK).await
}

pub(super) async fn canary_add(State(state): State<ConsoleState>, who: Principal, Form(f): Form<UserForm>) -> Response {
    if let Some(refused) = refuse(&who, &f.csrf) {
        return refused;
    }
    let user = f.user.trim();
    let note = Some(f.note.trim()).filter(|n| !n.is_empty());
    let now = state.clock.now();
    let run = async {
        let mut tx = state.pool.begin().await?;
        let added = store::canaries::add(&mut *tx, user, note, now).await?;
        if added {
            let detail = serde_json::json!({ "note": note });
            store::console::record_action(&mut *tx, user, "canary_add", &who.actor(), detail, now).await?;
        }
        tx.commit().await?;
        Ok::<_, store::canaries::AddError>(added)
    };
    let (status, text, kind) = match run.await {
        Ok(true) => {
            tracing::info!(user_id = %user, by = %who.actor(), "console: canary added");
            (StatusCode::OK, "Added as a canary.".to_owned(), "good")
        }
        Ok(false) => (StatusCode::OK, "Already a canary; nothing more was done.".to_owned(), "good"),
        Err(store::canaries::AddError::UnknownUser) => {
            (StatusCode::BAD_REQUEST, "No credential is stored for this user id.".to_owned(), "bad")
        }
        Err(store::canaries::AddError::Unsupported) => (
            StatusCode::BAD_REQUEST,
            "A Microtest credential is never checked, so it cannot be a canary.".to_owned(),
            "bad",
        ),
        Err(store::canaries::AddError::InvalidNote(why)) => {
            (StatusCode::BAD_REQUEST, format!("The note {why}."), "bad")
        }
        Err(store::canaries::AddError::Database(e)) => return db_error(&who, e),
    };
    canaries_page(&state, &who, Some(views::message(kind, &text)), status).await
}

pub(super) async fn canary_remove(
    State(state): State<ConsoleState>,
    who: Principal,
    Form(f): Form<UserForm>,
) -> Response {
    if let Some(refused) = refuse(&who, &f.csrf) {
        return refused;
    }
    let now = state.clock.now();
    let run = async {
        let mut tx = state.pool.begin().await?;
        let removed = store::canaries::remove(&mut *tx, &f.user).await?;
        if removed {
            store::console::record_action(&mut *tx, &f.user, "canary_remove", &who.actor(), serde_json::json!({}), now)
                .await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(removed)
    };
    match run.await {
        Ok(removed) => {
            if removed {
                tracing::info!(user_id = %f.user, by = %who.actor(), "console: canary removed");
            }
            let text = if removed {
                "Removed; the credential itself is kept."
            } else {
                "It was not a canary; nothing was done."
            };
            canaries_page(&state, &who, Some(views::message("good", text)), StatusCode::OK).await
        }
        Err(e) => db_error(&who, e),
    }
}
