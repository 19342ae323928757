//! The latest changes across all credentials, filtered by supplier, kind and reason.

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::auth::Principal;
use super::views::Nav;
use super::{ConsoleState, db_error, screen, views};
use crate::store;

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    supplier: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    before: Option<i64>,
}

const EVENTS_PAGE: i64 = 100;

pub(super) async fn events(
    State(state): State<ConsoleState>,
    who: Principal,
    Query(q): Query<EventsQuery>,
) -> Response {
    let known = |v: &str, list: &[&str]| Some(v.to_owned()).filter(|v| list.contains(&v.as_str()));
    let filter = store::console::EventFilter {
        user_id: Some(q.user.trim().to_owned()).filter(|u| !u.is_empty()),
        supplier: known(&q.supplier, &["emis", "tpp", "vision", "microtest"]),
        kind: known(&q.kind, views::KINDS),
        reason: known(&q.reason, views::REASONS),
        before_id: q.before,
    };
    match store::console::events(&state.pool, &filter, EVENTS_PAGE).await {
        Ok(rows) => {
            let next = (rows.len() as i64 == EVENTS_PAGE).then(|| {
                format!(
                    "/events?supplier={}&kind={}&reason={}&user={}&before={}",
                    views::enc(filter.supplier.as_deref().unwrap_or("")),
                    views::enc(filter.kind.as_deref().unwrap_or("")),
                    views::enc(filter.reason.as_deref().unwrap_or("")),
                    views::enc(filter.user_id.as_deref().unwrap_or("")),
                    rows.last().map_or(0, |r| r.id)
                )
            });
            let query = views::EventQuery {
                supplier: filter.supplier.as_deref().unwrap_or(""),
                kind: filter.kind.as_deref().unwrap_or(""),
                reason: filter.reason.as_deref().unwrap_or(""),
                user: filter.user_id.as_deref().unwrap_or(""),
            };
            screen(&state, "Events", &who, Nav::Events, views::events(&rows, &query, next, state.clock.now()))
        }
        Err(e) => db_error(&who, e),
    }
}
