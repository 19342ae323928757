//! TPP SystmOne: XML over HTTPS (im1-wire.md, TPP section).
//!
//! Every message goes to one URL, named by the `type` header. A check is one
//! `type: Authenticate` with the token's account id and passphrase; its answer is
//! classified by [`classify_authenticate_answer`], a pure function implementing the TPP
//! table row by row (an `Error` body is classified the same whatever the HTTP status).
//!
//! When a successful answer carries a `suid` header (a session TPP opened for us), the
//! adapter sends one `type: Logoff` with it. The Logoff's answer never changes the verdict;
//! its failures are only logged at debug level, and the suid (a session secret) is never
//! logged nor put in evidence.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use secrecy::ExposeSecret;

use super::{transient_for, with_detail};
use crate::model::{Reason, Supplier};
use crate::suppliers::xml::{self, Element, XmlError};
use crate::suppliers::{Adapter, Answer, BoxFuture, CheckTarget, Evidence, HttpClient, Outcome};
use crate::token::Token;

/// The application name every `Authenticate` announces.
pub const APPLICATION_NAME: &str = "im1-revalidator";
/// The API version every message announces.
pub const API_VERSION: &str = "1";

const TYPE: HeaderName = HeaderName::from_static("type");
const SUID: HeaderName = HeaderName::from_static("suid");
const TEXT_XML: &str = "text/xml";

/// `errorCode` 9: problem logging on.
const PROBLEM_LOGGING_ON: i64 = 9;
/// `errorCode` 6: no access.
const NO_ACCESS: i64 = 6;
/// `errorCode` 5: invalid provider id (our configuration).
const INVALID_PROVIDER: i64 = 5;
/// `errorCode` 0 (service unavailable) and 3 (not authenticated): transient, listed.
const LISTED_TRANSIENT: [i64; 2] = [0, 3];

/// The first non-empty of the named attributes, trimmed.
fn first_attribute(element: &Element, names: &[&str]) -> Option<String> {
    names.iter().filter_map(|name| element.attribute(name)).map(str::trim).find(|v| !v.is_empty()).map(str::to_owned)
}

/// Classifies an answer to `type: Authenticate` by the TPP table in im1-wire.md: the body
/// first whatever the status (`Error` → by its `errorCode`; `AuthenticateReply` with 200 →
/// valid), anything else transient. `retry_after` is kept on 429 and 503.
pub fn classify_authenticate_answer(status: u16, body: &[u8], retry_after: Option<Duration>) -> Answer {
    let transient = transient_for(status, retry_after);
    let root = match xml::parse(body) {
        Ok(root) => root,
        Err(XmlError::Empty) if status != 200 => return Answer::new(transient, Evidence::status(status)),
        Err(e) => return Answer::new(transient, with_detail(Evidence::status(status), e.detail())),
    };
    if root.is(None, "Error") {
        let code = first_attribute(&root, &["errorCode"]);
        let message = first_attribute(&root, &["userFriendlyMessage", "technicalMessage"]);
        let evidence = Evidence { http_status: Some(status), code: code.clone(), message, detail: None };
        let Some(number) = code.as_deref().and_then(|c| c.parse::<i64>().ok()) else {
            return Answer::new(transient, with_detail(evidence, "no_error_code"));
        };
        return match number {
            PROBLEM_LOGGING_ON => Answer::new(Outcome::Invalid(Reason::TokenRejected), evidence),
            NO_ACCESS => Answer::new(Outcome::Invalid(Reason::AccessRevoked), evidence),
            INVALID_PROVIDER => Answer::new(Outcome::SupplierConfigError, evidence),
            n if LISTED_TRANSIENT.contains(&n) => Answer::new(transient, evidence),
            _ => Answer::new(transient, with_detail(evidence, "unlisted_code")),
        };
    }
    if root.is(None, "AuthenticateReply") {
        if status == 200 {
            return Answer::new(Outcome::Valid, Evidence::status(status));
        }
        return Answer::new(transient, with_detail(Evidence::status(status), "unexpected_status"));
    }
    Answer::new(transient, with_detail(Evidence::status(status), "unexpected_root"))
}

/// The `Authenticate` body. Every attribute value is escaped.
fn authenticate_body(uuid: &str, ods: &str, account_id: &str, passphrase: &str, provider_id: &str) -> String {
    format!(
        concat!(
            r#"<Authenticate apiVersion="{api}" uuid="{uuid}" unitId="{ods}" accountId="{account}" passphrase="{pass}">"#,
            r#"<Application name="{name}" version="{version}" providerId="{provider}" deviceType="server"/>"#,
            r#"</Authenticate>"#
        ),
        api = API_VERSION,
        uuid = xml::escape(uuid),
        ods = xml::escape(ods),
        account = xml::escape(account_id),
        pass = xml::escape(passphrase),
        name = APPLICATION_NAME,
        version = xml::escape(env!("CARGO_PKG_VERSION")),
        provider = xml::escape(provider_id),
    )
}

/// The `Logoff` body.
fn logoff_body(uuid: &str, ods: &str) -> String {
    format!(
        r#"<Logoff apiVersion="{api}" uuid="{uuid}" unitId="{ods}"/>"#,
        api = API_VERSION,
        uuid = xml::escape(uuid),
        ods = xml::escape(ods)
    )
}

/// The TPP adapter. Stateless between checks.
pub struct TppAdapter {
    http: HttpClient,
    /// `Err` with an evidence note when the base URL cannot be used: every check then
    /// reports a configuration error.
    url: Result<Url, &'static str>,
    base_url: String,
    provider_id: String,
    request_timeout: Duration,
}

impl fmt::Debug for TppAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TppAdapter")
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl TppAdapter {
    /// An adapter for the TPP API at `base_url` (the one URL every message goes to).
    /// `provider_id` is used when a token carries none. Each HTTP request is bounded by
    /// `request_timeout`.
    pub fn new(http: HttpClient, base_url: &str, provider_id: String, request_timeout: Duration) -> TppAdapter {
        let url = Url::parse(base_url.trim()).map_err(|_| "invalid_base_url");
        TppAdapter { http, url, base_url: base_url.trim().to_owned(), provider_id, request_timeout }
    }

    fn post(&self, url: &Url, message: &'static str, body: String) -> reqwest::RequestBuilder {
        self.http
            .inner()
            .post(url.clone())
            .header(TYPE, HeaderValue::from_static(message))
            .header(CONTENT_TYPE, HeaderValue::from_static(TEXT_XML))
            .header(ACCEPT, HeaderValue::from_static(TEXT_XML))
            .timeout(self.request_timeout)
            .body(body)
    }

    async fn check_token(&self, ods: &str, account_id: &str, passphrase: &str, provider_id: &str) -> Answer {
        let url = match &self.url {
            Ok(url) => url,
            Err(detail) => return Answer::new(Outcome::SupplierConfigError, Evidence::detail(*detail)),
        };
        if provider_id.trim().is_empty() {
            return Answer::new(Outcome::SupplierConfigError, Evidence::detail("missing_provider_id"));
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        let body = authenticate_body(&uuid, ods, account_id, passphrase, provider_id);
        let raw = match self.http.send(self.post(url, "Authenticate", body)).await {
            Ok(raw) => raw,
            Err(e) => return Answer::from_transport(&e),
        };
        let answer = classify_authenticate_answer(raw.status, &raw.body, raw.retry_after(SystemTime::now()));
        if answer.outcome == Outcome::Valid
            && let Some(suid) = raw.headers.get(SUID).filter(|v| !v.is_empty())
        {
            self.logoff(url, ods, suid.clone()).await;
        }
        answer
    }

    /// Ends the session TPP opened. Never changes the verdict; never logs the suid.
    async fn logoff(&self, url: &Url, ods: &str, suid: HeaderValue) {
        let mut suid = suid;
        suid.set_sensitive(true);
        let uuid = uuid::Uuid::new_v4().to_string();
        let request = self.post(url, "Logoff", logoff_body(&uuid, ods)).header(SUID, suid);
        match self.http.send(request).await {
            Ok(raw) if raw.status == 200 && xml::parse(&raw.body).is_ok_and(|r| r.is(None, "LogoffReply")) => {}
            Ok(raw) => tracing::debug!(supplier = "tpp", status = raw.status, "TPP Logoff was not acknowledged"),
            Err(e) => tracing::debug!(supplier = "tpp", error = e.detail(), "TPP Logoff failed"),
        }
    }
}

impl Adapter for TppAdapter {
    fn supplier(&self) -> Supplier {
        Supplier::Tpp
    }

    fn check<'a>(&'a self, target: CheckTarget<'a>) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let Token::Tpp { account_id, passphrase, provider_id } = target.token else {
                // A programming error upstream, never a verdict on anyone's token.
                return Answer::new(Outcome::transient(), Evidence::detail("not_a_tpp_token"));
            };
            let account_id = account_id.expose_secret();
            let passphrase = passphrase.expose_secret();
            let provider_id = provider_id.as_ref().map_or(self.provider_id.as_str(), |p| p.expose_secret());
            let mut answer = self.check_token(target.ods_code, account_id, passphrase, provider_id).await;
            // TPP may echo what it was sent; the token never leaves in evidence.
            answer.evidence.scrub(&[account_id, passphrase]);
            answer
        })
    }
}

#[cfg(test)]
mod tests;
