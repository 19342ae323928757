//! The `/_sim` control endpoints listed in [`super`]: counts, call logs, scripts, the default
//! step, latency, outages, EMIS session expiry and reset. Each calls a [`Simulator`] method.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;

use super::{CallCounts, Simulator, Step};
use crate::model::Supplier;

pub(super) fn control_routes() -> Router<Simulator> {
    Router::new()
        .route("/_sim/calls", get(get_calls))
        .route("/_sim/calls/{token}", get(get_token_calls))
        .route("/_sim/calls/log/{supplier}", get(get_call_log))
        .route("/_sim/token-calls", get(get_all_token_calls))
        .route("/_sim/tokens/{token}", put(put_script).delete(delete_script))
        .route("/_sim/default", get(get_default).put(put_default))
        .route("/_sim/latency", get(get_latency).put(put_latency))
        .route("/_sim/in-flight", get(get_in_flight))
        .route("/_sim/outage/{supplier}", post(start_outage).delete(end_outage))
        .route("/_sim/emis/expire-sessions", post(expire_sessions))
        .route("/_sim/reset", post(reset))
}

/// A control call's error, answered as `{"error": "..."}`.
#[derive(Debug)]
struct ControlError(StatusCode, String);

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError(StatusCode::BAD_REQUEST, e.to_string()))
}

fn parse_supplier(name: &str) -> Result<Supplier, ControlError> {
    name.parse::<Supplier>().map_err(|e| ControlError(StatusCode::NOT_FOUND, format!("supplier {e}")))
}

async fn get_calls(State(sim): State<Simulator>) -> axum::Json<CallCounts> {
    axum::Json(sim.calls())
}

async fn get_token_calls(State(sim): State<Simulator>, Path(token): Path<String>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "calls": sim.token_calls(&token) }))
}

async fn get_all_token_calls(State(sim): State<Simulator>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "tokens": sim.all_token_calls() }))
}

/// The body of `GET /_sim/calls/log/{supplier}`.
#[derive(Debug, Serialize)]
struct CallLogBody {
    supplier: Supplier,
    times: Vec<f64>,
    max_in_flight: u64,
}

async fn get_call_log(
    State(sim): State<Simulator>,
    Path(supplier): Path<String>,
) -> Result<axum::Json<CallLogBody>, ControlError> {
    let supplier = parse_supplier(&supplier)?;
    let max_in_flight = sim.max_in_flight(supplier);
    Ok(axum::Json(CallLogBody { supplier, times: sim.call_times(supplier), max_in_flight }))
}

async fn put_script(
    State(sim): State<Simulator>,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ControlError> {
    sim.script(&token, parse_body(&body)?);
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_script(State(sim): State<Simulator>, Path(token): Path<String>) -> StatusCode {
    sim.script(&token, Vec::new());
    StatusCode::NO_CONTENT
}

async fn get_default(State(sim): State<Simulator>) -> axum::Json<Step> {
    axum::Json(sim.default_step())
}

async fn put_default(State(sim): State<Simulator>, body: Bytes) -> Result<StatusCode, ControlError> {
    sim.set_default_step(parse_body(&body)?);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /_sim/in-flight`: requests each supplier is serving right now (a benchmark samples
/// it to see how many of the service's check slots are busy).
async fn get_in_flight(State(sim): State<Simulator>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "emis": sim.in_flight(Supplier::Emis),
        "tpp": sim.in_flight(Supplier::Tpp),
        "vision": sim.in_flight(Supplier::Vision),
    }))
}

/// The body of `GET|PUT /_sim/latency`.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Latency {
    latency_ms: u64,
}

async fn get_latency(State(sim): State<Simulator>) -> axum::Json<Latency> {
    axum::Json(Latency { latency_ms: sim.latency_ms() })
}

async fn put_latency(State(sim): State<Simulator>, body: Bytes) -> Result<StatusCode, ControlError> {
    let Latency { latency_ms } = parse_body(&body)?;
    sim.set_latency_ms(latency_ms);
    Ok(StatusCode::NO_CONTENT)
}

async fn start_outage(State(sim): State<Simulator>, Path(supplier): Path<String>) -> Result<StatusCode, ControlError> {
    sim.set_outage(parse_supplier(&supplier)?, true);
    Ok(StatusCode::NO_CONTENT)
}

async fn end_outage(State(sim): State<Simulator>, Path(supplier): Path<String>) -> Result<StatusCode, ControlError> {
    sim.set_outage(parse_supplier(&supplier)?, false);
    Ok(StatusCode::NO_CONTENT)
}

async fn expire_sessions(State(sim): State<Simulator>) -> StatusCode {
    sim.expire_emis_sessions();
    StatusCode::NO_CONTENT
}

async fn reset(State(sim): State<Simulator>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}
