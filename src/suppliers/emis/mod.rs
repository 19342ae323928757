//! EMIS (EMIS Web, via the IM1 patient-facing API): JSON over HTTPS.
//!
//! A check is two calls (im1-wire.md, EMIS section):
//!
//! 1. `POST {base}/sessions/endusersession` → `{"EndUserSessionId": "..."}`. The end-user
//!    session is ours, not the patient's: one is shared by every check this adapter makes
//!    and reused until EMIS rejects it.
//! 2. `POST {base}/sessions` with `X-API-EndUserSessionId` and
//!    `{"AccessIdentityGuid": <token>, "NationalPracticeCode": <ODS code>}`. Its answer is
//!    classified by [`classify_session_answer`], a pure function implementing the EMIS
//!    table row by row.
//!
//! When EMIS says our end-user session is gone, the adapter gets a new one (once, however
//! many checks noticed at the same time) and retries the check once; a second rejection is
//! transient, never a verdict.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::sync::RwLock;

use super::with_detail;
use crate::model::Supplier;
use crate::suppliers::{Adapter, Answer, BoxFuture, CheckTarget, Evidence, HttpClient, Outcome, RawAnswer};
use crate::token::Token;

pub use self::classify::{Classified, classify_end_user_session_answer, classify_session_answer};

mod classify;

/// The API version every call announces.
pub const API_VERSION: &str = "2.1.0.0";

const APPLICATION_ID: HeaderName = HeaderName::from_static("x-api-applicationid");
const VERSION: HeaderName = HeaderName::from_static("x-api-version");
const END_USER_SESSION_ID: HeaderName = HeaderName::from_static("x-api-endusersessionid");

/// The request body of `POST /sessions`. Borrowed so the token is never copied.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SessionRequest<'a> {
    access_identity_guid: &'a str,
    national_practice_code: &'a str,
}

/// Where and as whom to call, parsed once when the adapter is built.
struct Endpoints {
    end_user_session: Url,
    sessions: Url,
    application_id: HeaderValue,
}

/// The shared end-user session.
#[derive(Default)]
struct SessionSlot {
    /// Bumped on every attempt to get a session, successful or not, so checks that queued
    /// behind an attempt share its result instead of each making one of their own.
    attempt: u64,
    /// The current session and the attempt that got it; `None` before the first or after
    /// a failed renewal.
    current: Option<(u64, HeaderValue)>,
    /// The last attempt's failure, handed to the checks that waited on it.
    failure: Option<Answer>,
}

/// The EMIS adapter. One per process; every check shares its end-user session.
pub struct EmisAdapter {
    http: HttpClient,
    /// `Err` with an evidence note when the configuration cannot be used (bad base URL or
    /// application id): every check then reports a configuration error instead of the
    /// service refusing to start over one supplier.
    endpoints: Result<Endpoints, &'static str>,
    base_url: String,
    request_timeout: Duration,
    /// Read-locked on the hot path; write-locked only to get a new session, so one
    /// renewal serves every check that was waiting for it.
    session: RwLock<SessionSlot>,
}

impl fmt::Debug for EmisAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The end-user session id and application id stay out of logs.
        f.debug_struct("EmisAdapter")
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl EmisAdapter {
    /// An adapter for the EMIS API at `base_url` (without the trailing `/sessions`).
    /// Each HTTP request is bounded by `request_timeout`.
    pub fn new(http: HttpClient, base_url: &str, application_id: String, request_timeout: Duration) -> EmisAdapter {
        let base = base_url.trim_end_matches('/');
        let endpoints = (|| {
            let end_user_session =
                Url::parse(&format!("{base}/sessions/endusersession")).map_err(|_| "invalid_base_url")?;
            let sessions = Url::parse(&format!("{base}/sessions")).map_err(|_| "invalid_base_url")?;
            let application_id = HeaderValue::from_str(&application_id)
                .ok()
                .filter(|_| !application_id.trim().is_empty())
                .ok_or("invalid_application_id")?;
            Ok(Endpoints { end_user_session, sessions, application_id })
        })();
        EmisAdapter {
            http,
            endpoints,
            base_url: base.to_owned(),
            request_timeout,
            session: RwLock::new(SessionSlot::default()),
        }
    }

    fn post(&self, endpoints: &Endpoints, url: &Url) -> reqwest::RequestBuilder {
        self.http
            .inner()
            .post(url.clone())
            .header(APPLICATION_ID, endpoints.application_id.clone())
            .header(VERSION, HeaderValue::from_static(API_VERSION))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .timeout(self.request_timeout)
    }

    /// Asks EMIS for a new end-user session.
    async fn new_end_user_session(&self, endpoints: &Endpoints) -> Result<HeaderValue, Answer> {
        let request = self.post(endpoints, &endpoints.end_user_session).body("");
        let raw = self.http.send(request).await.map_err(|e| {
            // Like any transport failure: transient, or a configuration error when TLS says
            // our certificate or CA is wrong; the detail names the step.
            let Answer { outcome, .. } = Answer::from_transport(&e);
            Answer::new(outcome, Evidence::detail(format!("end_user_session_{}", e.detail())))
        })?;
        let id = classify_end_user_session_answer(raw.status, &raw.body, retry_after(&raw))?;
        HeaderValue::from_str(&id).map_err(|_| {
            Answer::new(Outcome::transient(), with_detail(Evidence::status(raw.status), "end_user_session_bad_id"))
        })
    }

    /// The current end-user session and its generation. With `stale`, the caller saw that
    /// generation rejected: a newer one is returned if another check already got it,
    /// otherwise one new session is requested for everyone.
    async fn end_user_session(&self, endpoints: &Endpoints, stale: Option<u64>) -> Result<(u64, HeaderValue), Answer> {
        let usable = |slot: &SessionSlot| slot.current.clone().filter(|(generation, _)| Some(*generation) != stale);
        let seen_attempt = {
            let slot = self.session.read().await;
            if let Some(current) = usable(&slot) {
                return Ok(current);
            }
            slot.attempt
        };
        let mut slot = self.session.write().await;
        if slot.attempt != seen_attempt {
            // Another check made an attempt while this one waited: share its result.
            if let Some(current) = usable(&slot) {
                return Ok(current);
            }
            if let Some(failure) = &slot.failure {
                return Err(failure.clone());
            }
        }
        slot.attempt += 1;
        // Cleared first: if this check is cancelled mid-request, the checks queued behind
        // it make their own attempt instead of inheriting an older failure.
        slot.failure = None;
        let attempt = slot.attempt;
        match self.new_end_user_session(endpoints).await {
            Ok(id) => {
                tracing::debug!(supplier = "emis", attempt, "got a new EMIS end-user session");
                slot.current = Some((attempt, id.clone()));
                slot.failure = None;
                Ok((attempt, id))
            }
            Err(failure) => {
                tracing::debug!(supplier = "emis", attempt, status = ?failure.evidence.http_status, "EMIS end-user session request failed");
                slot.current = None;
                slot.failure = Some(failure.clone());
                Err(failure)
            }
        }
    }

    /// One `POST /sessions` with the given end-user session.
    async fn try_session(&self, endpoints: &Endpoints, session: &HeaderValue, body: Vec<u8>) -> Classified {
        let request = self.post(endpoints, &endpoints.sessions).header(END_USER_SESSION_ID, session.clone()).body(body);
        match self.http.send(request).await {
            Ok(raw) => classify_session_answer(raw.status, &raw.body, retry_after(&raw)),
            Err(e) => Classified::Answer(Answer::from_transport(&e)),
        }
    }

    async fn check_token(&self, ods_code: &str, token: &str) -> Answer {
        let endpoints = match &self.endpoints {
            Ok(endpoints) => endpoints,
            Err(detail) => return Answer::new(Outcome::SupplierConfigError, Evidence::detail(*detail)),
        };
        let request = SessionRequest { access_identity_guid: token, national_practice_code: ods_code };
        let Ok(body) = serde_json::to_vec(&request) else {
            return Answer::new(Outcome::transient(), Evidence::detail("request_encoding"));
        };
        let (generation, session) = match self.end_user_session(endpoints, None).await {
            Ok(session) => session,
            Err(failure) => return failure,
        };
        let evidence = match self.try_session(endpoints, &session, body.clone()).await {
            Classified::Answer(answer) => return answer,
            Classified::SessionExpired(evidence) => evidence,
        };
        tracing::debug!(supplier = "emis", status = ?evidence.http_status, "EMIS rejected our end-user session; renewing");
        let (_, session) = match self.end_user_session(endpoints, Some(generation)).await {
            Ok(session) => session,
            Err(failure) => return failure,
        };
        match self.try_session(endpoints, &session, body).await {
            Classified::Answer(answer) => answer,
            Classified::SessionExpired(evidence) => {
                Answer::new(Outcome::transient(), with_detail(evidence, "session_expired_twice"))
            }
        }
    }
}

/// `Retry-After` relative to now (the header's date form needs a clock; seconds do not).
fn retry_after(raw: &RawAnswer) -> Option<Duration> {
    raw.retry_after(SystemTime::now())
}

impl Adapter for EmisAdapter {
    fn supplier(&self) -> Supplier {
        Supplier::Emis
    }

    fn check<'a>(&'a self, target: CheckTarget<'a>) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let Token::Emis { access_identity_guid } = target.token else {
                // A programming error upstream, never a verdict on anyone's token.
                return Answer::new(Outcome::transient(), Evidence::detail("not_an_emis_token"));
            };
            let token = access_identity_guid.expose_secret();
            let mut answer = self.check_token(target.ods_code, token).await;
            // EMIS may echo what it was sent; the token never leaves in evidence.
            answer.evidence.scrub(&[token]);
            answer
        })
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
