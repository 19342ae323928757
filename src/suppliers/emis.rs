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
use serde_json::{Map, Value};
use tokio::sync::RwLock;

use super::{transient_for, with_detail};
use crate::model::{Reason, Supplier};
use crate::suppliers::{Adapter, Answer, BoxFuture, CheckTarget, Evidence, HttpClient, Outcome, RawAnswer};
use crate::token::Token;

/// The API version every call announces.
pub const API_VERSION: &str = "2.1.0.0";

const APPLICATION_ID: HeaderName = HeaderName::from_static("x-api-applicationid");
const VERSION: HeaderName = HeaderName::from_static("x-api-version");
const END_USER_SESSION_ID: HeaderName = HeaderName::from_static("x-api-endusersessionid");

/// What EMIS says when it no longer knows our end-user session (matched case-insensitively).
const SESSION_REJECTED: &str = "missing or invalid endusersessionid";
/// An account status of NotRegistered, matched case-insensitively.
const NOT_REGISTERED: &str = "notregistered";
/// A restricted account, quoted as EMIS quotes it, matched case-insensitively.
const RESTRICTED: &str = "'restricted'";
/// Services access violation (patient-facing services not enabled) and practice not live.
const PRACTICE_CODES: [i64; 2] = [-1030, -1401];
/// Linkage codes on a 400 that reject the token: no user for these details, invalid
/// linkage, details mismatch, account inactive, patient archived.
const LINKAGE_CODES: [i64; 5] = [-1104, -1105, -1106, -1107, -1552];

/// The result of classifying an answer to `POST /sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// EMIS no longer accepts our end-user session: renew it and retry once. Not a verdict.
    SessionExpired(Evidence),
    /// A final answer for this attempt.
    Answer(Answer),
}

/// What an EMIS answer body says, read leniently: keys in any case, codes as numbers or
/// strings, messages from every place EMIS puts them.
#[derive(Debug, Default)]
struct EmisBody {
    /// The body was JSON at all (an object or a bare string).
    json: bool,
    /// A non-empty `SessionId` at the top level.
    session_id: bool,
    /// `"ApplicationLinkLevel": "Restricted"` at the top level.
    link_restricted: bool,
    /// `InternalResponseCode` as text.
    code: Option<String>,
    /// An `Exceptions` list was present.
    exceptions: bool,
    /// `message`, `internalResponseMessage`, then every `exceptions[].message`, in order.
    messages: Vec<String>,
    /// The body was not JSON but its text says our end-user session is gone (EMIS and
    /// the NHS App's mocks send that phrase as a bare body).
    raw_session_rejected: bool,
}

impl EmisBody {
    fn read(body: &[u8]) -> EmisBody {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => EmisBody::from_object(&map),
            Ok(Value::String(text)) => EmisBody { json: true, messages: vec![text], ..Default::default() },
            Ok(_) => EmisBody { json: true, ..Default::default() },
            Err(_) => EmisBody {
                raw_session_rejected: String::from_utf8_lossy(body).to_lowercase().contains(SESSION_REJECTED),
                ..Default::default()
            },
        }
    }

    fn from_object(map: &Map<String, Value>) -> EmisBody {
        let session_id = fields(map, "SessionId").any(|v| v.as_str().is_some_and(|s| !s.trim().is_empty()));
        let link_restricted = fields(map, "ApplicationLinkLevel")
            .any(|v| v.as_str().is_some_and(|s| s.trim().eq_ignore_ascii_case("restricted")));
        let code = fields(map, "InternalResponseCode").find_map(code_text);
        let mut messages: Vec<String> = fields(map, "Message")
            .chain(fields(map, "InternalResponseMessage"))
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let mut exceptions = false;
        for list in fields(map, "Exceptions").filter_map(Value::as_array) {
            exceptions = true;
            let inner = list.iter().filter_map(Value::as_object).flat_map(|e| fields(e, "Message"));
            messages.extend(inner.filter_map(|v| v.as_str().map(str::to_owned)));
        }
        EmisBody { json: true, session_id, link_restricted, code, exceptions, messages, raw_session_rejected: false }
    }

    /// JSON with an `InternalResponseCode` or an `Exceptions` list.
    fn is_error_body(&self) -> bool {
        self.code.is_some() || self.exceptions
    }

    fn code_is(&self, codes: &[i64]) -> bool {
        self.code.as_deref().and_then(|c| c.parse::<i64>().ok()).is_some_and(|c| codes.contains(&c))
    }

    /// Any message contains `needle` (given in lower case), ignoring case.
    fn says(&self, needle: &str) -> bool {
        self.messages.iter().any(|m| m.to_lowercase().contains(needle))
    }

    fn says_session_rejected(&self) -> bool {
        self.raw_session_rejected || self.says(SESSION_REJECTED)
    }

    fn evidence(&self, status: u16) -> Evidence {
        let message = self.messages.iter().map(|m| m.trim()).find(|m| !m.is_empty()).map(str::to_owned);
        let message =
            message.or_else(|| self.raw_session_rejected.then(|| "Missing or invalid EndUserSessionId".to_owned()));
        Evidence { http_status: Some(status), code: self.code.clone(), message, detail: None }
    }
}

/// Every value in `map` whose key equals `name` ignoring ASCII case.
fn fields<'m>(map: &'m Map<String, Value>, name: &'m str) -> impl Iterator<Item = &'m Value> + 'm {
    map.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// An `InternalResponseCode` as text, whether EMIS sent a number or a string.
fn code_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

fn answer(outcome: Outcome, evidence: Evidence) -> Classified {
    Classified::Answer(Answer::new(outcome, evidence))
}

/// Classifies an answer to `POST {base}/sessions` by the EMIS table in im1-wire.md: rows
/// tried top to bottom, the first match decides, anything unlisted is transient.
/// `retry_after` is the answer's parsed `Retry-After`, honoured on 429 and 503.
pub fn classify_session_answer(status: u16, body: &[u8], retry_after: Option<Duration>) -> Classified {
    let read = EmisBody::read(body);
    let evidence = read.evidence(status);
    let emis = read.is_error_body();

    // 200 with a non-empty SessionId: valid, unless the link is restricted.
    if status == 200 && read.session_id {
        if read.link_restricted {
            return answer(Outcome::Invalid(Reason::AccessRestricted), evidence);
        }
        return answer(Outcome::Valid, evidence);
    }
    // Our end-user session expired: renew and retry, never a verdict.
    if status == 401 || read.says_session_rejected() {
        return Classified::SessionExpired(evidence);
    }
    // Account status NotRegistered (the NHS App's mocks send it as a 500 with -1030).
    if emis && matches!(status, 400 | 403 | 500) && read.says(NOT_REGISTERED) {
        return answer(Outcome::Invalid(Reason::NotRegistered), evidence);
    }
    if emis && matches!(status, 400 | 403) && read.says(RESTRICTED) {
        return answer(Outcome::Invalid(Reason::AccessRestricted), evidence);
    }
    if emis && matches!(status, 400 | 403) && read.code_is(&PRACTICE_CODES) {
        return answer(Outcome::PracticeUnavailable, evidence);
    }
    if emis && status == 403 {
        return answer(Outcome::Invalid(Reason::TokenRejected), evidence);
    }
    if emis && status == 400 && read.code_is(&LINKAGE_CODES) {
        return answer(Outcome::Invalid(Reason::TokenRejected), evidence);
    }
    // Any other 400 with an EMIS body: our request may be at fault.
    if emis && status == 400 {
        return answer(Outcome::transient(), with_detail(evidence, "unlisted_code"));
    }
    let outcome = transient_for(status, retry_after);
    let evidence = match status {
        400 | 403 => with_detail(evidence, "not_emis_error_body"),
        _ if !read.json && !body.is_empty() => with_detail(evidence, "unparseable"),
        200 => with_detail(evidence, "no_session_id"),
        _ => evidence,
    };
    answer(outcome, evidence)
}

/// Classifies an answer to `POST {base}/sessions/endusersession`: the session id, or the
/// transient answer the check comes to when there is none (429 and 503 keep their
/// `Retry-After`).
pub fn classify_end_user_session_answer(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<String, Answer> {
    let parsed = serde_json::from_slice::<Value>(body);
    if status == 200
        && let Ok(Value::Object(map)) = &parsed
        && let Some(id) = fields(map, "EndUserSessionId").find_map(Value::as_str).map(str::trim)
        && !id.is_empty()
    {
        return Ok(id.to_owned());
    }
    let read = EmisBody::read(body);
    let detail = match (status, &parsed) {
        (_, Err(_)) if !body.is_empty() => "end_user_session_unparseable",
        (200, _) => "end_user_session_no_id",
        _ => "end_user_session_failed",
    };
    let outcome = transient_for(status, retry_after);
    Err(Answer::new(outcome, with_detail(read.evidence(status), detail)))
}

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
mod tests {
    use super::*;

    const SECS_30: Option<Duration> = Some(Duration::from_secs(30));

    fn classify(status: u16, body: &str) -> Classified {
        classify_session_answer(status, body.as_bytes(), None)
    }

    /// The final answer's outcome; panics on `SessionExpired`.
    fn outcome(status: u16, body: &str) -> Outcome {
        match classify(status, body) {
            Classified::Answer(answer) => answer.outcome,
            Classified::SessionExpired(e) => panic!("session expired: {e:?}"),
        }
    }

    fn evidence(status: u16, body: &str) -> Evidence {
        match classify(status, body) {
            Classified::Answer(answer) => answer.evidence,
            Classified::SessionExpired(e) => e,
        }
    }

    fn invalid(reason: Reason) -> Outcome {
        Outcome::Invalid(reason)
    }

    fn pascal(code: &str, message: &str) -> String {
        format!(r#"{{"ErrorReference":"ref","Message":"{message}","InternalResponseCode":{code}}}"#)
    }

    fn camel(code: &str, message: &str, exception: &str) -> String {
        format!(
            r#"{{"internalResponseCode":"{code}","message":"{message}","internalResponseMessage":"","exceptions":[{{"message":"{exception}","exceptionId":"x"}}]}}"#
        )
    }

    #[test]
    fn row_1_success_with_session_id() {
        assert_eq!(outcome(200, r#"{"SessionId":"abc","ApplicationLinkLevel":"Linked"}"#), Outcome::Valid);
        assert_eq!(outcome(200, r#"{"sessionId":"abc"}"#), Outcome::Valid);
        assert_eq!(
            outcome(200, r#"{"SessionId":"abc","ApplicationLinkLevel":"Restricted"}"#),
            invalid(Reason::AccessRestricted)
        );
        assert_eq!(
            outcome(200, r#"{"sessionid":"abc","applicationLinkLevel":"restricted"}"#),
            invalid(Reason::AccessRestricted)
        );
        // An empty or non-string SessionId is not a success shape.
        assert_eq!(outcome(200, r#"{"SessionId":""}"#), Outcome::transient());
        assert_eq!(outcome(200, r#"{"SessionId":"  "}"#), Outcome::transient());
        assert_eq!(outcome(200, r#"{"SessionId":17}"#), Outcome::transient());
        // Only a 200 is a success.
        assert_eq!(outcome(201, r#"{"SessionId":"abc"}"#), Outcome::transient());
        assert_eq!(outcome(500, r#"{"SessionId":"abc"}"#), Outcome::transient());
    }

    #[test]
    fn row_2_end_user_session_rejected() {
        assert!(matches!(classify(401, ""), Classified::SessionExpired(_)));
        assert!(matches!(classify(401, "<html>nope</html>"), Classified::SessionExpired(_)));
        for status in [400, 403, 500, 503] {
            let body = r#"{"Message":"Missing or invalid EndUserSessionId"}"#;
            assert!(matches!(classify(status, body), Classified::SessionExpired(_)), "{status}");
            // As the NHS App's mocks send it: the bare phrase, not JSON.
            assert!(
                matches!(classify(status, "Missing or invalid EndUserSessionId"), Classified::SessionExpired(_)),
                "{status}"
            );
            let camel = camel("-1001", "error", "missing or invalid endUserSessionId");
            assert!(matches!(classify(status, &camel), Classified::SessionExpired(_)), "{status}");
        }
        let Classified::SessionExpired(e) = classify(400, "Missing or invalid EndUserSessionId") else {
            unreachable!()
        };
        assert_eq!(e.http_status, Some(400));
        assert_eq!(e.message.as_deref(), Some("Missing or invalid EndUserSessionId"));
    }

    #[test]
    fn row_3_not_registered() {
        // The NHS App's mocks: HTTP 500, code -1030.
        let body = pascal("-1030", "User account status is NotRegistered");
        assert_eq!(outcome(500, &body), invalid(Reason::NotRegistered));
        assert_eq!(outcome(400, &body), invalid(Reason::NotRegistered));
        assert_eq!(outcome(403, &body), invalid(Reason::NotRegistered));
        let body = camel("-1030", "Services access violation", "Account status: NOTREGISTERED");
        assert_eq!(outcome(500, &body), invalid(Reason::NotRegistered));
        // Needs an EMIS error body and one of the listed statuses.
        assert_eq!(outcome(500, r#"{"Message":"account status NotRegistered"}"#), Outcome::transient());
        assert_eq!(outcome(502, &pascal("-1030", "NotRegistered")), Outcome::transient());
        assert_eq!(outcome(500, "NotRegistered"), Outcome::transient());
    }

    #[test]
    fn row_4_restricted_message() {
        // \u0027 decoded before matching.
        let body = r#"{"Message":"The account is \u0027Restricted\u0027","InternalResponseCode":-1006}"#;
        assert_eq!(outcome(403, body), invalid(Reason::AccessRestricted));
        assert_eq!(outcome(400, body), invalid(Reason::AccessRestricted));
        let body = camel("-1006", "", "Account state is 'RESTRICTED'");
        assert_eq!(outcome(400, &body), invalid(Reason::AccessRestricted));
        // Unquoted is not this row: a 403 falls to token_rejected, a 400 to transient.
        assert_eq!(outcome(403, &pascal("-1006", "Restricted")), invalid(Reason::TokenRejected));
        assert_eq!(outcome(400, &pascal("-1006", "Restricted")), Outcome::transient());
        // Not on a 500.
        assert_eq!(outcome(500, body.as_str()), Outcome::transient());
    }

    #[test]
    fn row_5_practice_unavailable() {
        for status in [400, 403] {
            assert_eq!(outcome(status, &pascal("-1030", "Services access violation")), Outcome::PracticeUnavailable);
            assert_eq!(
                outcome(status, &pascal("\"-1030\"", "Services access violation")),
                Outcome::PracticeUnavailable
            );
            assert_eq!(outcome(status, &pascal("-1401", "Practice not live")), Outcome::PracticeUnavailable);
            assert_eq!(outcome(status, &camel("-1401", "x", "y")), Outcome::PracticeUnavailable);
        }
        // A 500 with -1030 but no NotRegistered message is not a practice signal.
        assert_eq!(outcome(500, &pascal("-1030", "Services access violation")), Outcome::transient());
    }

    #[test]
    fn row_6_forbidden_with_emis_body() {
        assert_eq!(outcome(403, &pascal("-1000", "Forbidden")), invalid(Reason::TokenRejected));
        assert_eq!(outcome(403, r#"{"message":"Forbidden","exceptions":[]}"#), invalid(Reason::TokenRejected));
        assert_eq!(outcome(403, &pascal("\"-1104\"", "x")), invalid(Reason::TokenRejected));
    }

    #[test]
    fn row_7_linkage_codes() {
        for code in ["-1104", "-1105", "-1106", "-1107", "-1552"] {
            assert_eq!(outcome(400, &pascal(code, "x")), invalid(Reason::TokenRejected), "{code}");
            assert_eq!(outcome(400, &pascal(&format!("\"{code}\""), "x")), invalid(Reason::TokenRejected), "{code}");
            assert_eq!(outcome(400, &camel(code, "x", "y")), invalid(Reason::TokenRejected), "{code}");
            // Only on a 400.
            assert_eq!(outcome(500, &pascal(code, "x")), Outcome::transient(), "{code}");
            assert_eq!(outcome(409, &pascal(code, "x")), Outcome::transient(), "{code}");
        }
    }

    #[test]
    fn row_8_other_400_with_emis_body() {
        let e = evidence(400, &pascal("-1001", "The request is invalid"));
        assert_eq!(outcome(400, &pascal("-1001", "The request is invalid")), Outcome::transient());
        assert_eq!(e.detail.as_deref(), Some("unlisted_code"));
        assert_eq!(outcome(400, r#"{"message":"bad","exceptions":[{"message":"x"}]}"#), Outcome::transient());
        // A code that is not a number never matches a listed one.
        assert_eq!(outcome(400, &pascal("\"-1104x\"", "x")), Outcome::transient());
        assert_eq!(outcome(400, &pascal("-1104.0", "x")), Outcome::transient());
    }

    #[test]
    fn row_9_400_403_without_emis_body() {
        let html = "<html><body><h1>403 Forbidden</h1></body></html>";
        assert_eq!(outcome(403, html), Outcome::transient());
        assert_eq!(outcome(400, html), Outcome::transient());
        assert_eq!(evidence(403, html).detail.as_deref(), Some("not_emis_error_body"));
        assert_eq!(outcome(403, r#"{"Message":"Forbidden"}"#), Outcome::transient());
        assert_eq!(outcome(403, ""), Outcome::transient());
        // A null code is no code.
        assert_eq!(outcome(403, r#"{"InternalResponseCode":null}"#), Outcome::transient());
    }

    #[test]
    fn row_10_everything_else_is_transient() {
        assert_eq!(outcome(200, "{}"), Outcome::transient());
        assert_eq!(evidence(200, "{}").detail.as_deref(), Some("no_session_id"));
        assert_eq!(outcome(200, "\u{0}not json"), Outcome::transient());
        assert_eq!(evidence(200, "not json").detail.as_deref(), Some("unparseable"));
        assert_eq!(outcome(200, "[1,2]"), Outcome::transient());
        assert_eq!(outcome(200, ""), Outcome::transient());
        assert_eq!(outcome(500, r#"{"Message":"An error has occurred."}"#), Outcome::transient());
        assert_eq!(outcome(502, ""), Outcome::transient());
        assert_eq!(outcome(404, ""), Outcome::transient());
        assert_eq!(outcome(302, ""), Outcome::transient());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(outcome(200, &deep), Outcome::transient());
    }

    #[test]
    fn retry_after_is_kept_on_429_and_503_only() {
        for status in [429, 503] {
            let Classified::Answer(a) = classify_session_answer(status, b"", SECS_30) else { unreachable!() };
            assert_eq!(a.outcome, Outcome::Transient { retry_after: SECS_30 });
        }
        let Classified::Answer(a) = classify_session_answer(500, b"", SECS_30) else { unreachable!() };
        assert_eq!(a.outcome, Outcome::transient());
    }

    #[test]
    fn evidence_quotes_status_code_and_first_message() {
        let e = evidence(400, &camel("-1107", "", "Account inactive"));
        assert_eq!(e.http_status, Some(400));
        assert_eq!(e.code.as_deref(), Some("-1107"));
        assert_eq!(e.message.as_deref(), Some("Account inactive"));
        let e = evidence(400, &pascal("-1104", "No user"));
        assert_eq!(e.code.as_deref(), Some("-1104"));
        assert_eq!(e.message.as_deref(), Some("No user"));
        assert_eq!(e.detail, None);
    }

    #[test]
    fn rows_are_tried_in_order() {
        // 403 whose message says NotRegistered: row 3 before row 6.
        assert_eq!(outcome(403, &pascal("-1000", "status NotRegistered")), invalid(Reason::NotRegistered));
        // 400 with -1030: practice (row 5), not transient (row 8).
        assert_eq!(outcome(400, &pascal("-1030", "x")), Outcome::PracticeUnavailable);
        // 403 with -1401: practice (row 5) before token_rejected (row 6).
        assert_eq!(outcome(403, &pascal("-1401", "x")), Outcome::PracticeUnavailable);
        // 'Restricted' (row 4) before the practice codes (row 5).
        assert_eq!(outcome(400, &pascal("-1030", "'Restricted'")), invalid(Reason::AccessRestricted));
        // NotRegistered (row 3) before 'Restricted' (row 4).
        assert_eq!(outcome(400, &pascal("-1030", "NotRegistered and 'Restricted'")), invalid(Reason::NotRegistered));
        // The session row (2) before everything but success.
        let body = pascal("-1104", "Missing or invalid EndUserSessionId");
        assert!(matches!(classify(400, &body), Classified::SessionExpired(_)));
        // Success (row 1) before everything.
        let body = r#"{"SessionId":"s","Message":"Missing or invalid EndUserSessionId"}"#;
        assert_eq!(outcome(200, body), Outcome::Valid);
    }

    #[test]
    fn end_user_session_answers() {
        assert_eq!(classify_end_user_session_answer(200, br#"{"EndUserSessionId":"abc"}"#, None), Ok("abc".into()));
        assert_eq!(classify_end_user_session_answer(200, br#"{"endUserSessionId":"abc"}"#, None), Ok("abc".into()));
        let failures: [(u16, &[u8], &str); 5] = [
            (200, b"{}", "end_user_session_no_id"),
            (200, br#"{"EndUserSessionId":""}"#, "end_user_session_no_id"),
            (200, b"<html>", "end_user_session_unparseable"),
            (500, b"", "end_user_session_failed"),
            (401, br#"{"Message":"Bad application","InternalResponseCode":-1}"#, "end_user_session_failed"),
        ];
        for (status, body, detail) in failures {
            let answer = classify_end_user_session_answer(status, body, SECS_30).unwrap_err();
            assert_eq!(answer.outcome, Outcome::transient(), "{status}");
            assert_eq!(answer.evidence.detail.as_deref(), Some(detail), "{status}");
            assert_eq!(answer.evidence.http_status, Some(status));
        }
        for status in [429, 503] {
            let answer = classify_end_user_session_answer(status, b"", SECS_30).unwrap_err();
            assert_eq!(answer.outcome, Outcome::Transient { retry_after: SECS_30 });
        }
    }

    #[test]
    fn bad_configuration_is_a_config_error_not_a_panic() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = HttpClient::new(reqwest::Client::builder().build().unwrap());
        let adapter = EmisAdapter::new(http.clone(), "not a url", "app".into(), Duration::from_secs(1));
        let token = Token::from_value(Supplier::Emis, &serde_json::json!({"access_identity_guid": "g"})).unwrap();
        let target = CheckTarget { ods_code: "A12345", token: &token };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let answer = rt.block_on(adapter.check(target));
        assert_eq!(answer.outcome, Outcome::SupplierConfigError);
        assert_eq!(answer.evidence.detail.as_deref(), Some("invalid_base_url"));
        let adapter = EmisAdapter::new(http, "http://127.0.0.1:9", "bad\napp".into(), Duration::from_secs(1));
        let answer = rt.block_on(adapter.check(target));
        assert_eq!(answer.evidence.detail.as_deref(), Some("invalid_application_id"));
        assert!(!format!("{adapter:?}").contains("bad"));
    }
}

/// Properties over arbitrary answers: the classifier never panics, and `valid` or `invalid`
/// only ever comes from an answer that has the listed shape, checked here by an oracle
/// written independently of the classifier.
#[cfg(test)]
mod properties {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::Value;

    use super::*;

    /// Fragments that make random bodies look like EMIS answers often enough to matter.
    const FRAGMENTS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"SessionId\"",
        "\"sessionId\"",
        "\"abc\"",
        "\"\"",
        "\"InternalResponseCode\"",
        "\"internalResponseCode\"",
        "-1104",
        "\"-1107\"",
        "-1030",
        "-1401",
        "\"Exceptions\"",
        "\"exceptions\"",
        "\"Message\"",
        "\"message\"",
        "\"NotRegistered\"",
        "\"account status NotRegistered\"",
        "\"'Restricted'\"",
        "\"\\u0027Restricted\\u0027\"",
        "\"ApplicationLinkLevel\"",
        "\"Restricted\"",
        "null",
        "true",
        "12",
        "<html>",
        "\"Missing or invalid EndUserSessionId\"",
    ];

    const KEYS: &[&str] = &[
        "SessionId",
        "sessionId",
        "SESSIONID",
        "InternalResponseCode",
        "internalResponseCode",
        "Exceptions",
        "exceptions",
        "Message",
        "message",
        "internalResponseMessage",
        "ApplicationLinkLevel",
        "ErrorReference",
        "EndUserSessionId",
        "Other",
    ];

    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        match rng.random_range(0..8) {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => serde_json::json!([-1104, -1105, -1106, -1107, -1552, -1030, -1401, -1, 0][rng.random_range(0..9)]),
            3 if depth < 2 => {
                Value::Array((0..rng.random_range(0..3)).map(|_| random_object(rng, depth + 1)).collect())
            }
            _ => {
                let texts = [
                    "",
                    " ",
                    "s-1",
                    "-1107",
                    "Restricted",
                    "account status NotRegistered",
                    "The account is 'Restricted'",
                    "Missing or invalid EndUserSessionId",
                    "Linked",
                    "notregistered",
                ];
                Value::String(texts[rng.random_range(0..texts.len())].to_owned())
            }
        }
    }

    fn random_object(rng: &mut StdRng, depth: u32) -> Value {
        let mut map = serde_json::Map::new();
        for _ in 0..rng.random_range(0..5) {
            map.insert(KEYS[rng.random_range(0..KEYS.len())].to_owned(), random_value(rng, depth));
        }
        Value::Object(map)
    }

    fn random_body(rng: &mut StdRng) -> Vec<u8> {
        if rng.random_bool(0.5) {
            return random_object(rng, 0).to_string().into_bytes();
        }
        if rng.random_bool(0.3) {
            let len = rng.random_range(0..256);
            return (0..len).map(|_| rng.random::<u8>()).collect();
        }
        let parts = rng.random_range(0..24);
        (0..parts).map(|_| FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]).collect::<String>().into_bytes()
    }

    fn object(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        }
    }

    fn has_key(map: &serde_json::Map<String, Value>, key: &str) -> bool {
        map.keys().any(|k| k.eq_ignore_ascii_case(key))
    }

    /// The listed shapes: a 200 with a non-empty SessionId, or an EMIS error body (an
    /// InternalResponseCode or an Exceptions list) on 400, 403 or 500.
    fn verdict_shape_present(status: u16, body: &[u8]) -> bool {
        let Some(map) = object(body) else { return false };
        let session = map
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("SessionId") && v.as_str().is_some_and(|s| !s.trim().is_empty()));
        let emis_error = has_key(&map, "InternalResponseCode") || has_key(&map, "Exceptions");
        (status == 200 && session) || (matches!(status, 400 | 403 | 500) && emis_error)
    }

    #[test]
    fn arbitrary_answers_never_panic_and_never_judge_without_the_listed_shape() {
        let mut rng = StdRng::seed_from_u64(0x0001_u64.wrapping_mul(2_654_435_761));
        let statuses = [200u16, 201, 204, 400, 401, 403, 404, 429, 500, 502, 503];
        let mut verdicts = 0;
        for _ in 0..20_000 {
            let status =
                if rng.random_bool(0.9) { statuses[rng.random_range(0..statuses.len())] } else { rng.random() };
            let body = random_body(&mut rng);
            let classified = classify_session_answer(status, &body, None);
            if let Classified::Answer(Answer { outcome: Outcome::Valid | Outcome::Invalid(_), .. }) = &classified {
                verdicts += 1;
                assert!(
                    verdict_shape_present(status, &body),
                    "verdict without the listed shape: {status} {:?} -> {classified:?}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        // The generator must reach verdicts too, or the property proves nothing.
        assert!(verdicts > 50, "only {verdicts} verdicts generated");
    }

    #[test]
    fn truncations_of_a_valid_answer_are_never_valid() {
        let full = br#"{"SessionId":"s-123","ApplicationLinkLevel":"Linked","Name":"x"}"#;
        assert!(matches!(
            classify_session_answer(200, full, None),
            Classified::Answer(Answer { outcome: Outcome::Valid, .. })
        ));
        for cut in 0..full.len() {
            let classified = classify_session_answer(200, &full[..cut], None);
            assert!(
                !matches!(classified, Classified::Answer(Answer { outcome: Outcome::Valid | Outcome::Invalid(_), .. })),
                "prefix of {cut} bytes judged: {classified:?}"
            );
        }
    }
}
