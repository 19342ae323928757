//! The simulated EMIS API (im1-wire.md, EMIS section), under `/emis`:
//!
//! - `POST /emis/sessions/endusersession` issues an end-user session id and remembers it.
//! - `POST /emis/sessions` checks the caller's end-user session (401 `Missing or invalid
//!   EndUserSessionId` when unknown), then answers the `AccessIdentityGuid` by its script
//!   or the default [`Behaviour`], in the body shapes real EMIS answers use.
//!
//! Both require `X-API-ApplicationId`. A `tpp_` or `vision_` behaviour is answered HTTP
//! 400 with a plain-text note.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::{Behaviour, Simulator, Step, read, write};
use crate::model::Supplier;

/// Issued end-user sessions kept at most; beyond it every session is forgotten at once
/// (clients then renew), so a client that never reuses its session cannot grow memory
/// without bound.
const MAX_SESSIONS: usize = 100_000;
/// Default `Retry-After` of `rate_limited` and `unavailable`, in seconds.
const RATE_LIMITED_RETRY_AFTER: u64 = 10;
const UNAVAILABLE_RETRY_AFTER: u64 = 30;
/// Larger than the adapters' 1 MiB read bound.
const HUGE_BODY: usize = 2 * 1024 * 1024;

const JSON: &str = "application/json; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// EMIS calls since start or the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmisCalls {
    /// `POST /sessions/endusersession`.
    pub end_user_session: u64,
    /// `POST /sessions`: one per check attempt.
    pub sessions: u64,
    /// `POST /sessions` answered 401 because the end-user session was unknown or expired.
    pub session_rejections: u64,
}

#[derive(Debug, Default)]
pub(super) struct EmisState {
    /// End-user session ids issued and not yet expired. A set rather than a generation
    /// number so that an id EMIS never issued is rejected, as EMIS would.
    sessions: RwLock<HashSet<Box<str>>>,
    end_user_session: AtomicU64,
    sessions_calls: AtomicU64,
    session_rejections: AtomicU64,
    /// Numbers the `SessionId`s of successful answers.
    next_session: AtomicU64,
}

impl EmisState {
    pub(super) fn expire_sessions(&self) {
        write(&self.sessions).clear();
    }

    pub(super) fn calls(&self) -> EmisCalls {
        EmisCalls {
            end_user_session: self.end_user_session.load(Ordering::Relaxed),
            sessions: self.sessions_calls.load(Ordering::Relaxed),
            session_rejections: self.session_rejections.load(Ordering::Relaxed),
        }
    }

    pub(super) fn reset_calls(&self) {
        for counter in [&self.end_user_session, &self.sessions_calls, &self.session_rejections] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    fn issue_session(&self) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut sessions = write(&self.sessions);
        if sessions.len() >= MAX_SESSIONS {
            sessions.clear();
        }
        sessions.insert(id.as_str().into());
        id
    }

    fn knows_session(&self, headers: &HeaderMap) -> bool {
        let Some(id) = headers.get("x-api-endusersessionid").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        read(&self.sessions).contains(id)
    }
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new().route("/emis/sessions/endusersession", post(end_user_session)).route("/emis/sessions", post(sessions))
}

/// The body of `POST /sessions`. Borrowed from the request where no unescaping is needed.
#[derive(Deserialize)]
struct SessionRequest<'a> {
    #[serde(rename = "AccessIdentityGuid", alias = "accessIdentityGuid", borrow)]
    access_identity_guid: Cow<'a, str>,
    #[serde(rename = "NationalPracticeCode", alias = "nationalPracticeCode", borrow)]
    national_practice_code: Cow<'a, str>,
}

async fn end_user_session(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    let emis = &sim.inner.emis;
    emis.end_user_session.fetch_add(1, Ordering::Relaxed);
    if !sim.pause(0).await {
        return outage();
    }
    if sim.in_outage(Supplier::Emis) {
        return outage();
    }
    if !has_application_id(&headers) {
        return missing_application_id();
    }
    if sim.inject_error() {
        return outage();
    }
    let id = emis.issue_session();
    respond(StatusCode::OK, JSON, format!(r#"{{"EndUserSessionId":"{id}"}}"#), None)
}

async fn sessions(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let emis = &sim.inner.emis;
    emis.sessions_calls.fetch_add(1, Ordering::Relaxed);
    let request = serde_json::from_slice::<SessionRequest<'_>>(&body);
    if let Ok(request) = &request {
        sim.count_token(&request.access_identity_guid);
    }
    if !sim.pause(0).await || sim.in_outage(Supplier::Emis) {
        return outage();
    }
    if !has_application_id(&headers) {
        return missing_application_id();
    }
    let Ok(request) = request else {
        return emis_error(
            StatusCode::BAD_REQUEST,
            r#"{"Message":"The request is invalid.","InternalResponseCode":-1001}"#,
        );
    };
    if !emis.knows_session(&headers) {
        emis.session_rejections.fetch_add(1, Ordering::Relaxed);
        return emis_error(StatusCode::UNAUTHORIZED, r#"{"Message":"Missing or invalid EndUserSessionId"}"#);
    }
    if sim.inject_error() {
        return outage();
    }
    let step = sim.next_step(&request.access_identity_guid);
    if let Some(delay) = step.delay_ms
        && !sim.wait(std::time::Duration::from_millis(delay)).await
    {
        return outage();
    }
    answer(&sim, step, &request.national_practice_code).await
}

fn has_application_id(headers: &HeaderMap) -> bool {
    headers.get("x-api-applicationid").is_some_and(|v| !v.is_empty())
}

fn missing_application_id() -> Response {
    emis_error(
        StatusCode::BAD_REQUEST,
        r#"{"Message":"The X-API-ApplicationId header is missing.","InternalResponseCode":-1002}"#,
    )
}

/// 503 without `Retry-After`: outages, injected errors, answers cut short by shutdown.
fn outage() -> Response {
    respond(StatusCode::SERVICE_UNAVAILABLE, JSON, r#"{"Message":"The service is unavailable."}"#, None)
}

fn emis_error(status: StatusCode, body: &'static str) -> Response {
    respond(status, JSON, body, None)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
    retry_after: Option<u64>,
) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(secs) = retry_after {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The successful `POST /sessions` body, shaped like EMIS's (`ApplicationLinkLevel` at
/// the top level, one self link).
fn session_body(sim: &Simulator, ods: &str, link_level: &str) -> String {
    let n = sim.inner.emis.next_session.fetch_add(1, Ordering::Relaxed);
    // The ODS code is echoed back, so it is JSON-quoted rather than pasted.
    let ods = serde_json::Value::from(ods).to_string();
    format!(
        concat!(
            r#"{{"SessionId":"sim-{n:016x}","ApplicationLinkLevel":"{level}","Title":"Mx","FirstName":"Sim","#,
            r#""Surname":"Patient","UserPatientLinks":[{{"UserPatientLinkToken":"link-{n:016x}","#,
            r#""NationalPracticeCode":{ods},"AssociationType":"Self"}}]}}"#
        ),
        n = n,
        level = link_level,
        ods = ods
    )
}

/// Renders one behaviour as EMIS would answer it.
async fn answer(sim: &Simulator, step: Step, ods: &str) -> Response {
    use Behaviour as B;
    let bad = StatusCode::BAD_REQUEST;
    let forbidden = StatusCode::FORBIDDEN;
    match step.behaviour {
        B::Valid => respond(StatusCode::OK, JSON, session_body(sim, ods, "Linked"), None),
        B::RestrictedLink => respond(StatusCode::OK, JSON, session_body(sim, ods, "Restricted"), None),
        B::NotRegistered => emis_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"ErrorReference":"5f0c9c1e-sim","Message":"User account status is NotRegistered.","InternalResponseCode":-1030}"#,
        ),
        // The quotes arrive JSON-escaped, as real EMIS sends them.
        B::Restricted => emis_error(
            forbidden,
            r#"{"ErrorReference":"5f0c9c1e-sim","Message":"The user account is \u0027Restricted\u0027 until the user signs in again.","InternalResponseCode":-1006}"#,
        ),
        B::PracticeNotEnabled => emis_error(
            bad,
            r#"{"ErrorReference":"5f0c9c1e-sim","Message":"Services access violation: patient facing services are not enabled at this practice.","InternalResponseCode":-1030}"#,
        ),
        B::PracticeNotLive => emis_error(
            forbidden,
            r#"{"ErrorReference":"5f0c9c1e-sim","Message":"The practice is not live.","InternalResponseCode":-1401}"#,
        ),
        B::Forbidden => emis_error(
            forbidden,
            r#"{"message":"Forbidden","exceptions":[{"message":"The user is not authorised to access this resource.","exceptionId":"5f0c9c1e-sim"}]}"#,
        ),
        B::NoUser => emis_error(
            bad,
            r#"{"ErrorReference":"5f0c9c1e-sim","Message":"No user was found for the details provided.","InternalResponseCode":-1104}"#,
        ),
        B::InvalidLinkage => emis_error(
            bad,
            r#"{"ErrorReference":"5f0c9c1e-sim","Message":"The linkage is invalid.","InternalResponseCode":-1105}"#,
        ),
        B::DetailsMismatch => emis_error(
            bad,
            r#"{"ErrorReference":"5f0c9c1e-sim","Message":"The details provided do not match.","InternalResponseCode":-1106}"#,
        ),
        B::AccountInactive => emis_error(
            bad,
            r#"{"internalResponseCode":"-1107","message":"The request could not be completed.","internalResponseMessage":"The user account is inactive.","exceptions":[{"message":"Account inactive","exceptionId":"5f0c9c1e-sim"}]}"#,
        ),
        B::PatientArchived => emis_error(
            bad,
            r#"{"ErrorReference":"5f0c9c1e-sim","Message":"The patient record is archived.","InternalResponseCode":-1552}"#,
        ),
        B::BadRequest => emis_error(
            bad,
            r#"{"ErrorReference":"5f0c9c1e-sim","Message":"The request is invalid.","InternalResponseCode":-1001}"#,
        ),
        B::ProxyHtml => respond(
            forbidden,
            HTML,
            "<html><head><title>403 Forbidden</title></head><body><h1>403 Forbidden</h1></body></html>",
            None,
        ),
        B::OkWithoutSession => respond(StatusCode::OK, JSON, "{}", None),
        B::RateLimited => respond(
            StatusCode::TOO_MANY_REQUESTS,
            JSON,
            r#"{"Message":"Too many requests."}"#,
            Some(step.retry_after_secs.unwrap_or(RATE_LIMITED_RETRY_AFTER)),
        ),
        B::Unavailable => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            r#"{"Message":"The service is unavailable."}"#,
            Some(step.retry_after_secs.unwrap_or(UNAVAILABLE_RETRY_AFTER)),
        ),
        B::ServerError => emis_error(StatusCode::INTERNAL_SERVER_ERROR, r#"{"Message":"An error has occurred."}"#),
        B::Garbage => respond(StatusCode::OK, JSON, Bytes::from_static(b"\x00\xffnot json at all{"), None),
        B::SessionExpired => {
            emis_error(StatusCode::UNAUTHORIZED, r#"{"Message":"Missing or invalid EndUserSessionId"}"#)
        }
        B::SessionExpiredText => emis_error(bad, "Missing or invalid EndUserSessionId"),
        B::NotFound => respond(StatusCode::NOT_FOUND, JSON, Body::empty(), None),
        B::HugeBody => respond(StatusCode::OK, JSON, vec![b' '; HUGE_BODY], None),
        B::Hang => {
            sim.hang().await;
            outage()
        }
        other => super::foreign_behaviour(other, Supplier::Emis),
    }
}
