//! Pure classification of EMIS answers, row by row from im1-wire.md's EMIS table: every
//! answer it does not recognise is transient, never a verdict.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::model::Reason;
use crate::suppliers::{Answer, Evidence, Outcome, transient_for, with_detail};

/// What EMIS says when it no longer knows our end-user session (matched case-insensitively).
pub(super) const SESSION_REJECTED: &str = "missing or invalid endusersessionid";
/// An account status of NotRegistered, matched case-insensitively.
pub(super) const NOT_REGISTERED: &str = "notregistered";
/// A restricted account, quoted as EMIS quotes it, matched case-insensitively.
pub(super) const RESTRICTED: &str = "'restricted'";
/// Services access violation (patient-facing services not enabled) and practice not live.
pub(super) const PRACTICE_CODES: [i64; 2] = [-1030, -1401];
/// Linkage codes on a 400 that reject the token: no user for these details, invalid
/// linkage, details mismatch, account inactive, patient archived.
pub(super) const LINKAGE_CODES: [i64; 5] = [-1104, -1105, -1106, -1107, -1552];

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
pub(super) struct EmisBody {
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
pub(super) fn fields<'m>(map: &'m Map<String, Value>, name: &'m str) -> impl Iterator<Item = &'m Value> + 'm {
    map.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// An `InternalResponseCode` as text, whether EMIS sent a number or a string.
pub(super) fn code_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

pub(super) fn answer(outcome: Outcome, evidence: Evidence) -> Classified {
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
