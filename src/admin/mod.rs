//! The admin port (bound only by `run`): `/healthz`, `/readyz`, `/metrics`, and the RP
//! API under `/v1` ([`api`]).

pub mod api;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::SecretString;
use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::crypto::Keyring;
use crate::metrics::{DatabaseSnapshot, Metrics};
use crate::policy::Rules;
use crate::sweep::schedule::Liveness;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub liveness: Arc<Liveness>,
    pub clock: SharedClock,
    /// Twice this is how long a checked credential may go unverified before it counts
    /// in `im1_credentials_unverified`.
    pub recheck_interval: Duration,
    /// `IM1_API_TOKENS`: bearer tokens the RP API accepts; empty turns the API off (404).
    pub api_tokens: Arc<[SecretString]>,
    /// Encrypts tokens written through the API's PUT.
    pub keys: Arc<Keyring>,
    /// The verdict rules (the loop guard counts reported refresh outcomes).
    pub rules: Rules,
}

/// Longest silence from the scheduler loop before `/healthz` fails.
const LIVENESS_WINDOW: Duration = Duration::from_secs(120);

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api::routes())
        // Unknown paths answer in the API's error shape too.
        .fallback(|| async { api::ApiError::not_found() })
        .with_state(state)
}

/// Process alive and scheduler ticking; never the database or a supplier.
async fn healthz(State(state): State<AdminState>) -> Response {
    if state.liveness.alive(LIVENESS_WINDOW) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "scheduler not ticking\n").into_response()
    }
}

/// Database reachable and every migration applied.
async fn readyz(State(state): State<AdminState>) -> Response {
    let check = tokio::time::timeout(Duration::from_secs(5), crate::store::ready(&state.pool));
    let ready = crate::defects::readiness(check).await;
    match ready {
        Ok(true) => (StatusCode::OK, "ready\n").into_response(),
        Ok(false) => {
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable or migrations not applied\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database did not answer in time\n").into_response(),
    }
}

/// `/metrics`: OpenMetrics when the scraper asks for it (Prometheus does), the classic
/// Prometheus text format otherwise (curl, promtool).
async fn metrics(State(state): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    let stale_before = state.clock.now() - crate::clock::delta(state.recheck_interval * 2);
    match tokio::time::timeout(Duration::from_secs(5), DatabaseSnapshot::read(&state.pool, stale_before)).await {
        Ok(Ok(snapshot)) => state.metrics.set_database_gauges(&snapshot),
        // Process metrics are still worth serving when the database is away.
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: could not read database gauges"),
        Err(_) => tracing::warn!("metrics: database gauges timed out"),
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.encode_text())
            .into_response()
    }
}

/// Serves the admin router until `shutdown`, within the default [`server::Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    server::serve_with(listener, router, server::Limits::default(), shutdown).await
}
