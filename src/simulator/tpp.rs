//! The simulated TPP SystmOne API (im1-wire.md, TPP section), at `POST /tpp`: one URL
//! for every message, named by the `type` header.
//!
//! - `type: Authenticate` answers the `accountId` attribute by its script or the default
//!   [`Behaviour`]: `AuthenticateReply` with a `suid` header on success, `<Error
//!   errorCode=".."/>` bodies (mostly with HTTP 200, as TPP sends them) otherwise.
//! - `type: Logoff` with a `suid` header answers `LogoffReply` (counted); without one, an
//!   `Error` errorCode 3. A suid issued by `tpp_logoff_fails` gets an HTTP 500 instead.
//! - Any other or missing `type`, or a body that is not an `Authenticate` with an
//!   `accountId`, gets an `Error` errorCode 1 with HTTP 200.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::{Behaviour, HUGE_BODY, Simulator, Step, foreign_behaviour, respond};
use crate::model::Supplier;
use crate::suppliers::xml;

const XML: &str = "text/xml; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// Default `Retry-After` of `rate_limited` and `unavailable`, in seconds.
const RATE_LIMITED_RETRY_AFTER: u64 = 10;
const UNAVAILABLE_RETRY_AFTER: u64 = 30;
/// Marks the suids whose Logoff fails.
const FAILING_SUID: &str = "sim-logoff-fails-";

/// TPP calls since start or the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TppCalls {
    /// `type: Authenticate`: one per check.
    pub authenticate: u64,
    /// `type: Logoff`.
    pub logoff: u64,
}

#[derive(Debug, Default)]
pub(super) struct TppState {
    authenticate: AtomicU64,
    logoff: AtomicU64,
    /// Numbers the suids and patient ids of successful answers.
    next_session: AtomicU64,
}

impl TppState {
    pub(super) fn calls(&self) -> TppCalls {
        TppCalls {
            authenticate: self.authenticate.load(Ordering::Relaxed),
            logoff: self.logoff.load(Ordering::Relaxed),
        }
    }

    pub(super) fn reset_calls(&self) {
        self.authenticate.store(0, Ordering::Relaxed);
        self.logoff.store(0, Ordering::Relaxed);
    }
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new().route("/tpp", post(message))
}

/// What an `Authenticate` body says, as far as the simulator cares.
struct AuthenticateRequest {
    account_id: String,
    unit_id: String,
    uuid: String,
}

fn read_authenticate(body: &[u8]) -> Option<AuthenticateRequest> {
    let root = xml::parse(body).ok().filter(|r| r.is(None, "Authenticate"))?;
    let account_id = root.attribute("accountId").filter(|a| !a.is_empty())?.to_owned();
    let unit_id = root.attribute("unitId").unwrap_or_default().to_owned();
    let uuid = root.attribute("uuid").unwrap_or_default().to_owned();
    Some(AuthenticateRequest { account_id, unit_id, uuid })
}

async fn message(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    match headers.get("type").and_then(|v| v.to_str().ok()).map(str::trim) {
        Some("Authenticate") => authenticate(sim, body).await,
        Some("Logoff") => logoff(sim, headers).await,
        _ => {
            if !sim.pause(0).await || sim.in_outage(Supplier::Tpp) {
                return outage();
            }
            error(StatusCode::OK, 1, "The message type is missing or not recognised.", "")
        }
    }
}

async fn authenticate(sim: Simulator, body: Bytes) -> Response {
    let tpp = &sim.inner.tpp;
    tpp.authenticate.fetch_add(1, Ordering::Relaxed);
    let request = read_authenticate(&body);
    if let Some(request) = &request {
        sim.count_token(&request.account_id);
    }
    if !sim.pause(0).await || sim.in_outage(Supplier::Tpp) {
        return outage();
    }
    let Some(request) = request else {
        return error(StatusCode::OK, 1, "The request could not be read.", "");
    };
    if sim.inject_error() {
        return outage();
    }
    let step = sim.next_step(&request.account_id);
    if let Some(delay) = step.delay_ms
        && !sim.wait(std::time::Duration::from_millis(delay)).await
    {
        return outage();
    }
    answer(&sim, step, &request).await
}

async fn logoff(sim: Simulator, headers: HeaderMap) -> Response {
    sim.inner.tpp.logoff.fetch_add(1, Ordering::Relaxed);
    if !sim.pause(0).await || sim.in_outage(Supplier::Tpp) {
        return outage();
    }
    let Some(suid) = headers.get("suid").and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty()) else {
        return error(StatusCode::OK, 3, "You are not authenticated.", "");
    };
    if suid.starts_with(FAILING_SUID) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, 0, "The service is unavailable.", "");
    }
    respond(StatusCode::OK, XML, format!(r#"<LogoffReply uuid="{}"/>"#, uuid::Uuid::new_v4()), None)
}

/// 503 without `Retry-After`: outages, injected errors, answers cut short by shutdown.
fn outage() -> Response {
    respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "Service Unavailable", None)
}

/// A TPP `Error` body. `uuid` echoes the request's; TPP's is not always a UUID.
fn error(status: StatusCode, code: i64, message: &str, uuid: &str) -> Response {
    let uuid = if uuid.is_empty() { "sim-not-a-uuid".to_owned() } else { xml::escape(uuid).into_owned() };
    let body = format!(
        r#"<Error errorCode="{code}" userFriendlyMessage="{message}" technicalMessage="{message} (simulated)" uuid="{uuid}"/>"#,
        message = xml::escape(message),
    );
    respond(status, XML, body, None)
}

/// A successful `AuthenticateReply`, with a `suid` header when `suid` is given.
fn reply(sim: &Simulator, request: &AuthenticateRequest, suid: Option<&str>) -> Response {
    let n = sim.inner.tpp.next_session.fetch_add(1, Ordering::Relaxed);
    let body = format!(
        concat!(
            r#"<AuthenticateReply uuid="{uuid}" patientId="sim-{n:016x}" onlineUserId="sim-user-{n:016x}">"#,
            r#"<User><Person patientId="sim-{n:016x}"><PersonName><Title>Mx</Title><FirstName>Sim</FirstName>"#,
            r#"<Surname>Patient</Surname></PersonName></Person></User>"#,
            r#"<Registration unitId="{unit}" unitName="Simulated Surgery"/>"#,
            r#"</AuthenticateReply>"#
        ),
        uuid = xml::escape(&request.uuid),
        n = n,
        unit = xml::escape(&request.unit_id),
    );
    let mut response = respond(StatusCode::OK, XML, body, None);
    if let Some(prefix) = suid
        && let Ok(value) = HeaderValue::from_str(&format!("{prefix}{n:016x}"))
    {
        response.headers_mut().insert("suid", value);
    }
    response
}

/// Renders one behaviour as TPP would answer an `Authenticate`.
async fn answer(sim: &Simulator, step: Step, request: &AuthenticateRequest) -> Response {
    use Behaviour as B;
    let ok = StatusCode::OK;
    let uuid = request.uuid.as_str();
    match step.behaviour {
        B::Valid => reply(sim, request, Some("sim-suid-")),
        B::TppValidWithoutSuid => reply(sim, request, None),
        B::TppLogoffFails => reply(sim, request, Some(FAILING_SUID)),
        B::TppProblemLoggingOn => error(ok, 9, "There was a problem logging on.", uuid),
        B::TppNoAccess => error(ok, 6, "You do not have access to this service.", uuid),
        B::TppInvalidProvider => error(ok, 5, "The provider id is not valid.", uuid),
        B::TppServiceUnavailable => error(ok, 0, "The service is currently unavailable.", uuid),
        B::TppNotAuthenticated => error(ok, 3, "You are not authenticated.", uuid),
        B::TppUnknownCode => error(ok, 42, "Something unexpected happened.", uuid),
        B::TppErrorHttp500 => error(StatusCode::INTERNAL_SERVER_ERROR, 9, "There was a problem logging on.", uuid),
        B::TppWrongRoot => respond(ok, XML, format!(r#"<Acknowledgement uuid="{}"/>"#, xml::escape(uuid)), None),
        B::OkWithoutSession => respond(ok, XML, Body::empty(), None),
        B::RateLimited => respond(
            StatusCode::TOO_MANY_REQUESTS,
            TEXT,
            "Too many requests",
            Some(step.retry_after_secs.unwrap_or(RATE_LIMITED_RETRY_AFTER)),
        ),
        B::Unavailable => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "Service Unavailable",
            Some(step.retry_after_secs.unwrap_or(UNAVAILABLE_RETRY_AFTER)),
        ),
        B::ServerError => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            HTML,
            "<html><body><h1>500 Internal Server Error</h1></body></html>",
            None,
        ),
        B::Garbage => respond(ok, XML, Bytes::from_static(b"\x00\xff<AuthenticateReply not xml at all"), None),
        B::NotFound => respond(StatusCode::NOT_FOUND, TEXT, Body::empty(), None),
        B::HugeBody => respond(ok, XML, vec![b' '; HUGE_BODY], None),
        B::ProxyHtml => respond(
            StatusCode::FORBIDDEN,
            HTML,
            "<html><head><title>403 Forbidden</title></head><body><h1>403 Forbidden</h1></body></html>",
            None,
        ),
        B::Hang => {
            sim.hang().await;
            outage()
        }
        other => foreign_behaviour(other, Supplier::Tpp),
    }
}
