//! Vision (INPS / Cegedim): SOAP 1.1 over HTTPS (im1-wire.md, Vision section).
//!
//! A check is one `VOS.GetConfiguration` call carrying the token's ROSU account id and API
//! key. Production requires the envelope to be signed (WS-Security, X.509): the adapter
//! builds the unsigned envelope and hands it to an optional signer hook, which returns the
//! signed one; a signer failure is `supplier_config_error` (`signing_failed`).
//!
//! The answer is classified by [`classify_configuration_answer`], a pure function
//! implementing the Vision table. Elements are matched by namespace URI and local name,
//! never by prefix; WS-Addressing headers and unknown elements are ignored.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use uuid::Uuid;

use super::{transient_for, with_detail};
use crate::clock::{self, SharedClock};
use crate::model::{Reason, Supplier};
use crate::suppliers::xml::{self, Element, SOAP_ENV, XmlError};
use crate::suppliers::{Adapter, Answer, BoxFuture, CheckTarget, Evidence, HttpClient, Outcome};
use crate::token::Token;

/// The Vision service namespace.
pub const VISION_NS: &str = "urn:vision";
/// The service and version a check calls.
pub const SERVICE_NAME: &str = "VOS.GetConfiguration";
pub const SERVICE_VERSION: &str = "2.3.0";

const SOAP_ACTION: HeaderName = HeaderName::from_static("soapaction");
const CONTENT_TYPE_XML: &str = "text/xml; charset=utf-8";

/// Signs an unsigned envelope (WS-Security), returning the signed one. The error text is
/// never logged nor kept.
pub type Signer = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Invalid user credentials.
const INVALID_CREDENTIALS: i64 = -30;
/// Disabled, access denied.
const REVOKED: [i64; 2] = [-19, -35];
/// Record currently unavailable (a lock), unknown error: transient, listed.
const LISTED_TRANSIENT: [i64; 2] = [-15, -100];

/// The trimmed text of `{urn:vision}name` under `parent`.
fn vision_text(parent: &Element, name: &str) -> Option<String> {
    parent.child(Some(VISION_NS), name).and_then(Element::trimmed_text).map(str::to_owned)
}

/// A child of a SOAP Fault: SOAP 1.1 leaves `faultcode`, `faultstring` and `detail`
/// unqualified, but some stacks qualify them with the envelope namespace.
fn fault_child<'e>(fault: &'e Element, name: &str) -> Option<&'e Element> {
    fault.child(None, name).or_else(|| fault.child(Some(SOAP_ENV), name))
}

/// Joins the non-empty parts with ` — `.
fn joined(parts: &[Option<String>]) -> Option<String> {
    let parts: Vec<&str> = parts.iter().flatten().map(String::as_str).collect();
    (!parts.is_empty()).then(|| parts.join(" — "))
}

/// Classifies a Vision error code by the table.
fn by_code(code: &str, evidence: Evidence, transient: Outcome) -> Answer {
    match code.trim().parse::<i64>() {
        Ok(INVALID_CREDENTIALS) => Answer::new(Outcome::Invalid(Reason::TokenRejected), evidence),
        Ok(n) if REVOKED.contains(&n) => Answer::new(Outcome::Invalid(Reason::AccessRevoked), evidence),
        Ok(n) if LISTED_TRANSIENT.contains(&n) => Answer::new(transient, evidence),
        _ => Answer::new(transient, with_detail(evidence, "unlisted_code")),
    }
}

/// Classifies an answer to `VOS.GetConfiguration` by the Vision table in im1-wire.md.
/// `successful` true with `serviceContent/configuration/account` (HTTP 200) is valid;
/// error codes (in `serviceHeader/outcome/error` or a Fault's `detail/visionFault/error`)
/// go by the table whatever the status; a Fault whose `faultcode` mentions
/// `InvalidSecurity`, or a `Client` fault without a Vision code (the message refused as
/// sent), is our configuration; anything else is transient (`retry_after` kept
/// on 429 and 503).
pub fn classify_configuration_answer(status: u16, body: &[u8], retry_after: Option<Duration>) -> Answer {
    let transient = transient_for(status, retry_after);
    let root = match xml::parse(body) {
        Ok(root) => root,
        Err(XmlError::Empty) if status != 200 => return Answer::new(transient, Evidence::status(status)),
        Err(e) => return Answer::new(transient, with_detail(Evidence::status(status), e.detail())),
    };
    let Some(soap_body) =
        Some(&root).filter(|r| r.is(Some(SOAP_ENV), "Envelope")).and_then(|r| r.child(Some(SOAP_ENV), "Body"))
    else {
        return Answer::new(transient, with_detail(Evidence::status(status), "not_a_soap_envelope"));
    };

    if let Some(fault) = soap_body.child(Some(SOAP_ENV), "Fault") {
        return classify_fault(status, fault, transient);
    }
    let Some(response) = soap_body.child(Some(VISION_NS), "visionResponse") else {
        return Answer::new(transient, with_detail(Evidence::status(status), "no_vision_response"));
    };
    let outcome = response.path(Some(VISION_NS), &["serviceHeader", "outcome"]);
    let successful = outcome
        .and_then(|o| o.child(Some(VISION_NS), "successful"))
        .is_some_and(|s| s.text.trim().eq_ignore_ascii_case("true"));
    let account = response.path(Some(VISION_NS), &["serviceContent", "configuration", "account"]).is_some();
    if successful && account {
        if status == 200 {
            return Answer::new(Outcome::Valid, Evidence::status(status));
        }
        return Answer::new(transient, with_detail(Evidence::status(status), "unexpected_status"));
    }
    if let Some(error) = outcome.and_then(|o| o.child(Some(VISION_NS), "error")) {
        let code = vision_text(error, "code");
        let message = joined(&[vision_text(error, "description"), vision_text(error, "diagnostic")]);
        let evidence = Evidence { http_status: Some(status), code: code.clone(), message, detail: None };
        return match code {
            Some(code) => by_code(&code, evidence, transient),
            None => Answer::new(transient, with_detail(evidence, "no_error_code")),
        };
    }
    let detail = if successful { "no_account" } else { "no_outcome" };
    Answer::new(transient, with_detail(Evidence::status(status), detail))
}

/// A SOAP Fault: `InvalidSecurity` first (our signature or certificate, never the
/// user's token), then a `visionFault` code by the table, then a `Client` fault (our
/// request, refused as built), else transient.
fn classify_fault(status: u16, fault: &Element, transient: Outcome) -> Answer {
    let faultcode = fault_child(fault, "faultcode").and_then(Element::trimmed_text).map(str::to_owned);
    let faultstring = fault_child(fault, "faultstring").and_then(Element::trimmed_text).map(str::to_owned);
    if faultcode.as_deref().is_some_and(|c| c.contains("InvalidSecurity")) {
        let evidence = Evidence { http_status: Some(status), code: faultcode, message: faultstring, detail: None };
        return Answer::new(Outcome::SupplierConfigError, evidence);
    }
    let vision_error = fault_child(fault, "detail").and_then(|d| d.path(Some(VISION_NS), &["visionFault", "error"]));
    if let Some(error) = vision_error
        && let Some(code) = vision_text(error, "code")
    {
        let message = joined(&[vision_text(error, "category"), vision_text(error, "text")]).or(faultstring);
        let evidence = Evidence { http_status: Some(status), code: Some(code.clone()), message, detail: None };
        return by_code(&code, evidence, transient);
    }
    let refused = faultcode.as_deref().is_some_and(is_client_fault);
    let evidence = Evidence { http_status: Some(status), code: faultcode, message: faultstring, detail: None };
    if refused {
        // The service refused the message as we built it (a header shape it does not
        // accept, a stale creationTime, a repeated id): our side, never the token's.
        return Answer::new(Outcome::SupplierConfigError, with_detail(evidence, "request_refused"));
    }
    Answer::new(transient, with_detail(evidence, "soap_fault"))
}

/// A SOAP 1.1 `Client` fault (`Sender` in SOAP 1.2), qualified or not, with or without a
/// dotted subcode (`soap:Client.Validation`): the message was wrong as sent.
fn is_client_fault(faultcode: &str) -> bool {
    let local = faultcode.rsplit_once(':').map_or(faultcode, |(_, local)| local).trim();
    let class = local.split('.').next().unwrap_or(local);
    class == "Client" || class == "Sender"
}

/// What one request's `serviceHeader` carries, in the order real Vision expects (the NHS
/// App's own Vision client: `ServiceHeader`, `Target`, `OpsReference`).
#[derive(Debug, Clone, Copy)]
pub struct ServiceHeader<'a> {
    /// A fresh GUID per request: Vision refuses a message id it has seen.
    pub id: Uuid,
    /// When the request is sent; written to the second, UTC, as in im1-wire.md.
    pub creation_time: DateTime<Utc>,
    /// `target/nationalCode`: the practice's ODS code, the one stored with the token.
    pub national_code: &'a str,
    pub rosu_account_id: &'a str,
    pub api_key: &'a str,
    /// `opsReference/provider` and `opsReference/accountId`: the RP's Vision provider id.
    pub provider_id: &'a str,
}

/// The `creationTime` format: ISO 8601 to the second, as the wire page's example.
pub const CREATION_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

/// The unsigned `VOS.GetConfiguration` envelope. Every text is escaped; the header's
/// elements come in the order of [`ServiceHeader`]'s fields.
pub fn configuration_envelope(header: &ServiceHeader<'_>) -> String {
    format!(
        concat!(
            r#"<soapenv:Envelope xmlns:soapenv="{soap}" xmlns:vision="{vision}">"#,
            r#"<soapenv:Header/>"#,
            r#"<soapenv:Body>"#,
            r#"<vision:visionRequest>"#,
            r#"<vision:serviceDefinition><vision:name>{name}</vision:name><vision:version>{version}</vision:version></vision:serviceDefinition>"#,
            r#"<vision:serviceHeader>"#,
            r#"<vision:id>{id}</vision:id>"#,
            r#"<vision:creationTime>{created}</vision:creationTime>"#,
            r#"<vision:target><vision:nationalCode>{ods}</vision:nationalCode></vision:target>"#,
            r#"<vision:credentials><vision:rosuAccountId>{rosu}</vision:rosuAccountId><vision:apiKey>{key}</vision:apiKey></vision:credentials>"#,
            r#"<vision:opsReference><vision:provider>{provider}</vision:provider><vision:accountId>{provider}</vision:accountId></vision:opsReference>"#,
            r#"</vision:serviceHeader>"#,
            r#"<vision:serviceContent/>"#,
            r#"</vision:visionRequest>"#,
            r#"</soapenv:Body>"#,
            r#"</soapenv:Envelope>"#
        ),
        soap = SOAP_ENV,
        vision = VISION_NS,
        name = SERVICE_NAME,
        version = SERVICE_VERSION,
        id = header.id.hyphenated(),
        created = header.creation_time.format(CREATION_TIME_FORMAT),
        ods = xml::escape(header.national_code),
        rosu = xml::escape(header.rosu_account_id),
        key = xml::escape(header.api_key),
        provider = xml::escape(header.provider_id),
    )
}

/// The Vision adapter. Stateless between checks.
pub struct VisionAdapter {
    http: HttpClient,
    url: Result<Url, &'static str>,
    base_url: String,
    provider_id: String,
    request_timeout: Duration,
    signer: Option<Signer>,
    /// Stamps each request's `creationTime`: the wall clock, unless a test moves it.
    clock: SharedClock,
}

impl fmt::Debug for VisionAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VisionAdapter")
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .field("signed", &self.signer.is_some())
            .finish_non_exhaustive()
    }
}

impl VisionAdapter {
    /// An adapter for the Vision SOAP endpoint at `base_url`. `signer`, when given, turns
    /// each unsigned envelope into a signed one. Each HTTP request is bounded by
    /// `request_timeout`.
    pub fn new(
        http: HttpClient,
        base_url: &str,
        provider_id: String,
        request_timeout: Duration,
        signer: Option<Signer>,
    ) -> VisionAdapter {
        let url = Url::parse(base_url.trim()).map_err(|_| "invalid_base_url");
        VisionAdapter {
            http,
            url,
            base_url: base_url.trim().to_owned(),
            provider_id,
            request_timeout,
            signer,
            clock: clock::system(),
        }
    }

    /// Reads `creationTime` from `clock` instead of the wall clock (tests: a request
    /// stamped minutes away from the supplier's time).
    pub fn with_clock(mut self, clock: SharedClock) -> VisionAdapter {
        self.clock = clock;
        self
    }

    async fn check_token(&self, ods: &str, rosu_account_id: &str, api_key: &str) -> Answer {
        let url = match &self.url {
            Ok(url) => url,
            Err(detail) => return Answer::new(Outcome::SupplierConfigError, Evidence::detail(*detail)),
        };
        let envelope = configuration_envelope(&ServiceHeader {
            id: Uuid::new_v4(),
            creation_time: self.clock.now(),
            national_code: ods,
            rosu_account_id,
            api_key,
            provider_id: &self.provider_id,
        });
        let envelope = match &self.signer {
            None => envelope,
            Some(sign) => match sign(&envelope) {
                Ok(signed) => signed,
                Err(_) => {
                    // The error text may quote the envelope: it is dropped.
                    tracing::debug!(supplier = "vision", "signing the Vision envelope failed");
                    return Answer::new(Outcome::SupplierConfigError, Evidence::detail("signing_failed"));
                }
            },
        };
        let request = self
            .http
            .inner()
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_XML))
            .header(SOAP_ACTION, HeaderValue::from_static("\"\""))
            .timeout(self.request_timeout)
            .body(envelope);
        match self.http.send(request).await {
            Ok(raw) => classify_configuration_answer(raw.status, &raw.body, raw.retry_after(SystemTime::now())),
            Err(e) => Answer::from_transport(&e),
        }
    }
}

impl Adapter for VisionAdapter {
    fn supplier(&self) -> Supplier {
        Supplier::Vision
    }

    fn check<'a>(&'a self, target: CheckTarget<'a>) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let Token::Vision { rosu_account_id, api_key } = target.token else {
                // A programming error upstream, never a verdict on anyone's token.
                return Answer::new(Outcome::transient(), Evidence::detail("not_a_vision_token"));
            };
            let rosu_account_id = rosu_account_id.expose_secret();
            let api_key = api_key.expose_secret();
            let mut answer = self.check_token(target.ods_code, rosu_account_id, api_key).await;
            // Vision may echo what it was sent; the token never leaves in evidence.
            answer.evidence.scrub(&[rosu_account_id, api_key]);
            answer
        })
    }
}

#[cfg(test)]
mod tests;
