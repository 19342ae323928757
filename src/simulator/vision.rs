//! The simulated Vision SOAP API (im1-wire.md, Vision section), at `POST /vision`.
//!
//! A `VOS.GetConfiguration` request is answered for its `rosuAccountId` by its script or
//! the default [`Behaviour`], in envelopes shaped like real ones: WS-Addressing headers,
//! and prefixes that change from answer to answer (`soap:`/`vision:`, `s:`/`v:`, and
//! `SOAP-ENV:` with Vision as the default namespace), so clients must match by namespace,
//! never by prefix. Signatures are not checked.
//!
//! The request's `serviceHeader` is held to the shape real Vision expects (im1-wire.md):
//! `id`, `creationTime`, `target/nationalCode`, `credentials` (`rosuAccountId`, `apiKey`)
//! and `opsReference` (`provider`, `accountId`), in that order, all in the Vision
//! namespace; an id not a GUID or seen before, a `creationTime` more than five minutes
//! from now, a `nationalCode` other than the token's practice or an `opsReference` other
//! than the provider id ([`VisionExpectations`]) are refused. A refused or unreadable
//! request gets what a SOAP service answers a message it will not process: a `Client`
//! fault (HTTP 500) whose `faultstring` says what was wrong (never a credential).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use serde::{Deserialize, Serialize};

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::{Behaviour, HUGE_BODY, Simulator, Step, VisionExpectations, foreign_behaviour, respond};
use crate::model::Supplier;
use crate::suppliers::xml::{self, Element, SOAP_ENV};

const XML: &str = "text/xml; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const VISION_NS: &str = "urn:vision";
const WSA_NS: &str = "http://www.w3.org/2005/08/addressing";
/// Default `Retry-After` of `rate_limited` and `unavailable`, in seconds.
const RATE_LIMITED_RETRY_AFTER: u64 = 10;
const UNAVAILABLE_RETRY_AFTER: u64 = 30;
/// How far a request's `creationTime` may stand from the simulator's clock.
const CREATION_TIME_TOLERANCE: TimeDelta = TimeDelta::minutes(5);
/// How many message ids are remembered to refuse a repeat (bounded, for benchmarks that
/// send millions).
const REMEMBERED_IDS: usize = 100_000;
/// The `serviceHeader`'s elements, in the order real Vision expects.
const HEADER: [&str; 5] = ["id", "creationTime", "target", "credentials", "opsReference"];

/// Vision calls since start or the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisionCalls {
    /// `VOS.GetConfiguration`: one per check.
    pub get_configuration: u64,
}

#[derive(Debug, Default)]
pub(super) struct VisionState {
    get_configuration: AtomicU64,
    /// Picks each answer's prefix style.
    next_answer: AtomicU64,
    expect: RwLock<VisionExpectations>,
    seen_ids: Mutex<SeenIds>,
}

/// The most recent message ids, oldest first, to refuse a repeated one.
#[derive(Debug, Default)]
struct SeenIds {
    order: VecDeque<Uuid>,
    set: HashSet<Uuid>,
}

impl SeenIds {
    /// Remembers `id`; false when it was already seen.
    fn first_time(&mut self, id: Uuid) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > REMEMBERED_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        true
    }
}

impl VisionState {
    pub(super) fn new(expect: VisionExpectations) -> VisionState {
        VisionState { expect: RwLock::new(expect), ..VisionState::default() }
    }

    pub(super) fn set_practice(&self, rosu_account_id: &str, ods_code: &str) {
        let mut expect = self.expect.write().unwrap_or_else(PoisonError::into_inner);
        expect.practices.insert(rosu_account_id.to_owned(), ods_code.to_owned());
    }

    pub(super) fn set_provider_id(&self, provider_id: &str) {
        self.expect.write().unwrap_or_else(PoisonError::into_inner).provider_id = Some(provider_id.to_owned());
    }

    pub(super) fn calls(&self) -> VisionCalls {
        VisionCalls { get_configuration: self.get_configuration.load(Ordering::Relaxed) }
    }

    pub(super) fn reset_calls(&self) {
        self.get_configuration.store(0, Ordering::Relaxed);
    }
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new().route("/vision", post(get_configuration))
}

/// How one answer spells its namespaces.
#[derive(Clone, Copy)]
struct Style {
    soap: &'static str,
    /// `None`: Vision is the default namespace of the `visionResponse` element.
    vision: Option<&'static str>,
    /// Declares the Vision prefix on the envelope rather than on `visionResponse`.
    on_envelope: bool,
    /// How `successful` spells true.
    yes: &'static str,
}

const STYLES: [Style; 3] = [
    Style { soap: "soap", vision: Some("vision"), on_envelope: true, yes: "true" },
    Style { soap: "s", vision: Some("v"), on_envelope: false, yes: "True" },
    Style { soap: "SOAP-ENV", vision: None, on_envelope: false, yes: "TRUE" },
];

impl Style {
    /// A Vision element name in this style.
    fn v(&self, local: &str) -> String {
        match self.vision {
            Some(prefix) => format!("{prefix}:{local}"),
            None => local.to_owned(),
        }
    }

    fn vision_declaration(&self) -> String {
        match self.vision {
            Some(prefix) => format!(r#" xmlns:{prefix}="{VISION_NS}""#),
            None => format!(r#" xmlns="{VISION_NS}""#),
        }
    }

    /// A full envelope around `body` (the content of `Body`).
    fn envelope(&self, body: &str) -> String {
        let soap = self.soap;
        let on_envelope = if self.on_envelope { self.vision_declaration() } else { String::new() };
        format!(
            concat!(
                r#"<?xml version="1.0" encoding="utf-8"?>"#,
                r#"<{soap}:Envelope xmlns:{soap}="{soap_ns}" xmlns:wsa="{wsa}"{decl}>"#,
                r#"<{soap}:Header><wsa:Action>urn:vision/visionResponse</wsa:Action>"#,
                r#"<wsa:MessageID>urn:uuid:{id}</wsa:MessageID><wsa:RelatesTo>urn:uuid:{related}</wsa:RelatesTo>"#,
                r#"<wsa:To>http://www.w3.org/2005/08/addressing/anonymous</wsa:To></{soap}:Header>"#,
                r#"<{soap}:Body>{body}</{soap}:Body></{soap}:Envelope>"#
            ),
            soap = soap,
            soap_ns = SOAP_ENV,
            wsa = WSA_NS,
            decl = on_envelope,
            id = uuid::Uuid::new_v4(),
            related = uuid::Uuid::new_v4(),
            body = body,
        )
    }

    /// A `visionResponse` with the given outcome and service content.
    fn response(&self, successful: bool, error: Option<(i64, &str, &str)>, content: &str) -> String {
        let v = |local: &str| self.v(local);
        let decl = if self.on_envelope { String::new() } else { self.vision_declaration() };
        let error = error.map_or(String::new(), |(code, description, diagnostic)| {
            format!(
                "<{e}><{c}>{code}</{c}><{d}>{description}</{d}><{g}>{diagnostic}</{g}></{e}>",
                e = v("error"),
                c = v("code"),
                d = v("description"),
                g = v("diagnostic"),
                description = xml::escape(description),
                diagnostic = xml::escape(diagnostic),
            )
        });
        format!(
            concat!(
                "<{r}{decl}><{sd}><{n}>VOS.GetConfiguration</{n}><{ver}>2.3.0</{ver}></{sd}>",
                "<{sh}><{o}><{s}>{successful}</{s}>{error}</{o}></{sh}>",
                "<{sc}>{content}</{sc}></{r}>"
            ),
            r = v("visionResponse"),
            decl = decl,
            sd = v("serviceDefinition"),
            n = v("name"),
            ver = v("version"),
            sh = v("serviceHeader"),
            o = v("outcome"),
            s = v("successful"),
            successful = if successful { self.yes } else { "false" },
            error = error,
            sc = v("serviceContent"),
            content = content,
        )
    }

    /// The `configuration` a successful answer carries; `account: false` leaves the
    /// account out.
    fn configuration(&self, ods: &str, account: bool, account_name: &str) -> String {
        let v = |local: &str| self.v(local);
        let account = if account {
            format!(
                "<{a}><{p}>sim-000001</{p}><{n}>{name}</{n}></{a}>",
                a = v("account"),
                p = v("patientNumber"),
                n = v("name"),
                name = account_name
            )
        } else {
            String::new()
        };
        format!(
            "<{c}>{account}<{pr}><{o}>{ods}</{o}><{n}>Simulated Surgery</{n}></{pr}><{sv}><{ap}>true</{ap}></{sv}></{c}>",
            c = v("configuration"),
            pr = v("practice"),
            o = v("odsCode"),
            n = v("name"),
            sv = v("services"),
            ap = v("appointmentsEnabled"),
            ods = xml::escape(ods),
        )
    }

    /// A SOAP 1.1 Fault; `vision_code` adds `detail/visionFault/error`.
    fn fault(&self, faultcode: &str, faultstring: &str, vision_code: Option<(&str, i64, &str)>) -> String {
        let detail = vision_code.map_or(String::new(), |(category, code, text)| {
            let v = |local: &str| self.v(local);
            format!(
                "<detail><{f}{decl}><{e}><{cat}>{category}</{cat}><{c}>{code}</{c}><{t}>{text}</{t}></{e}></{f}></detail>",
                f = v("visionFault"),
                decl = self.vision_declaration(),
                e = v("error"),
                cat = v("category"),
                c = v("code"),
                t = v("text"),
                category = xml::escape(category),
                text = xml::escape(text),
            )
        });
        format!(
            concat!(
                r#"<{soap}:Fault xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">"#,
                "<faultcode>{code}</faultcode><faultstring>{string}</faultstring>{detail}</{soap}:Fault>"
            ),
            soap = self.soap,
            code = xml::escape(faultcode),
            string = xml::escape(faultstring),
            detail = detail,
        )
    }
}

/// What a request says, as far as the simulator cares.
struct ConfigurationRequest {
    rosu_account_id: String,
    ods: String,
}

/// Why a request was refused: the `faultstring` of the `Client` fault it gets. Names
/// elements and rules, never a credential's value.
#[derive(Debug, PartialEq, Eq)]
struct Refused(String);

fn refuse<T>(why: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(why.into()))
}

/// `element`'s children, which must be exactly `expected` (local names, in that order),
/// each in the Vision namespace.
fn children_in_order<'e, const N: usize>(
    element: &'e Element,
    expected: [&str; N],
) -> Result<[&'e Element; N], Refused> {
    let found: Vec<&str> = element.children.iter().map(|c| c.name.as_str()).collect();
    if found != expected {
        return refuse(format!(
            "{}: expected {} in that order, found {}",
            element.name,
            expected.join(", "),
            if found.is_empty() { "nothing".to_owned() } else { found.join(", ") }
        ));
    }
    if let Some(foreign) = element.children.iter().find(|c| c.namespace.as_deref() != Some(VISION_NS)) {
        return refuse(format!("{}/{}: not in the Vision namespace", element.name, foreign.name));
    }
    let children: Vec<&Element> = element.children.iter().collect();
    children.try_into().or_else(|_| refuse(format!("{}: wrong number of elements", element.name)))
}

/// The trimmed text of a leaf, refused when empty.
fn required_text<'e>(parent: &str, element: &'e Element) -> Result<&'e str, Refused> {
    match element.trimmed_text() {
        Some(text) => Ok(text),
        None => refuse(format!("{parent}/{}: empty", element.name)),
    }
}

/// `creationTime` as ISO 8601: with an offset, or without (read as UTC, as sent).
fn creation_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc()))
}

/// Reads a request, holding its `serviceHeader` to the shape and values real Vision
/// expects.
fn read_request(
    body: &[u8],
    expect: &VisionExpectations,
    now: DateTime<Utc>,
    seen: &Mutex<SeenIds>,
) -> Result<ConfigurationRequest, Refused> {
    let unreadable = || Refused("The request could not be read.".to_owned());
    let root = xml::parse(body).ok().filter(|r| r.is(Some(SOAP_ENV), "Envelope")).ok_or_else(unreadable)?;
    let request = root
        .child(Some(SOAP_ENV), "Body")
        .and_then(|b| b.child(Some(VISION_NS), "visionRequest"))
        .ok_or_else(unreadable)?;
    let Some(header) = request.child(Some(VISION_NS), "serviceHeader") else {
        return refuse("visionRequest: no serviceHeader");
    };
    let [id, created, target, credentials, ops] = children_in_order(header, HEADER)?;

    let id = required_text("serviceHeader", id)?;
    let Ok(id) = Uuid::parse_str(id) else { return refuse("serviceHeader/id: not a GUID") };
    let created = required_text("serviceHeader", created)?;
    let Some(created) = creation_time(created) else {
        return refuse("serviceHeader/creationTime: not an ISO 8601 date and time");
    };
    if (now - created).abs() > CREATION_TIME_TOLERANCE {
        return refuse("serviceHeader/creationTime: more than five minutes from the service's time");
    }

    let [national_code] = children_in_order(target, ["nationalCode"])?;
    let ods = required_text("target", national_code)?;
    let [rosu, key] = children_in_order(credentials, ["rosuAccountId", "apiKey"])?;
    let rosu_account_id = required_text("credentials", rosu)?;
    required_text("credentials", key)?;
    let [provider, account] = children_in_order(ops, ["provider", "accountId"])?;
    let (provider, account) = (required_text("opsReference", provider)?, required_text("opsReference", account)?);

    match expect.practices.get(rosu_account_id) {
        Some(practice) if practice != ods => {
            return refuse("target/nationalCode: not the practice of the account");
        }
        Some(_) => {}
        None if crate::token::validate_ods_code(ods).is_err() => {
            return refuse("target/nationalCode: not an ODS code");
        }
        None => {}
    }
    if provider != account {
        return refuse("opsReference: provider and accountId differ");
    }
    if expect.provider_id.as_deref().is_some_and(|expected| expected != provider) {
        return refuse("opsReference/provider: not this service's provider id");
    }
    // Last, so a request refused for another reason does not use its id up.
    if !seen.lock().unwrap_or_else(PoisonError::into_inner).first_time(id) {
        return refuse("serviceHeader/id: a message id already seen");
    }
    Ok(ConfigurationRequest { rosu_account_id: rosu_account_id.to_owned(), ods: ods.to_owned() })
}

/// The `rosuAccountId` anywhere in a request, for per-token counting: a refused request
/// still counts as a call for its token.
fn any_rosu_account_id(body: &[u8]) -> Option<String> {
    let root = xml::parse(body).ok()?;
    root.find(Some(VISION_NS), "rosuAccountId")?.trimmed_text().map(str::to_owned)
}

async fn get_configuration(State(sim): State<Simulator>, body: Bytes) -> Response {
    let vision = &sim.inner.vision;
    vision.get_configuration.fetch_add(1, Ordering::Relaxed);
    if let Some(rosu) = any_rosu_account_id(&body) {
        sim.count_token(&rosu);
    }
    if !sim.pause(0).await || sim.in_outage(Supplier::Vision) {
        return outage();
    }
    let request = {
        let expect = vision.expect.read().unwrap_or_else(PoisonError::into_inner);
        read_request(&body, &expect, Utc::now(), &vision.seen_ids)
    };
    let style = STYLES[(vision.next_answer.fetch_add(1, Ordering::Relaxed) % STYLES.len() as u64) as usize];
    let request = match request {
        Ok(request) => request,
        Err(Refused(why)) => {
            let fault = style.fault(&format!("{}:Client", style.soap), &why, None);
            return respond(StatusCode::INTERNAL_SERVER_ERROR, XML, style.envelope(&fault), None);
        }
    };
    if sim.inject_error() {
        return outage();
    }
    let step = sim.next_step(&request.rosu_account_id);
    if let Some(delay) = step.delay_ms
        && !sim.wait(std::time::Duration::from_millis(delay)).await
    {
        return outage();
    }
    answer(&sim, step, style, &request.ods).await
}

/// 503 without `Retry-After`: outages, injected errors, answers cut short by shutdown.
fn outage() -> Response {
    respond(StatusCode::SERVICE_UNAVAILABLE, HTML, "<html><body><h1>503 Service Unavailable</h1></body></html>", None)
}

/// An answer with an outcome error code, HTTP 200.
fn coded(style: Style, code: i64, description: &str, diagnostic: &str) -> Response {
    let body = style.response(false, Some((code, description, diagnostic)), "");
    respond(StatusCode::OK, XML, style.envelope(&body), None)
}

/// Renders one behaviour as Vision would answer it.
async fn answer(sim: &Simulator, step: Step, style: Style, ods: &str) -> Response {
    use Behaviour as B;
    let ok = StatusCode::OK;
    let server_error = StatusCode::INTERNAL_SERVER_ERROR;
    match step.behaviour {
        B::Valid => {
            let body = style.response(true, None, &style.configuration(ods, true, "Sim Patient"));
            respond(ok, XML, style.envelope(&body), None)
        }
        B::VisionInvalidCredentials => coded(style, -30, "Invalid user credentials", "ROSU account or key not valid"),
        B::VisionDisabled => coded(style, -19, "User account disabled", "The account has been disabled"),
        B::VisionAccessDenied => coded(style, -35, "Access denied", "Online access withdrawn by the practice"),
        B::VisionRecordUnavailable => {
            coded(style, -15, "Record currently unavailable, please try again later", "The record is locked")
        }
        B::VisionUnknownError => coded(style, -100, "Unknown error", "Connection to an external service failed"),
        B::VisionInvalidSecurity => {
            let fault = style.fault(
                "wsse:InvalidSecurity",
                "An error was discovered processing the <wsse:Security> header",
                None,
            );
            respond(server_error, XML, style.envelope(&fault), None)
        }
        B::VisionFaultWithCode => {
            let fault = style.fault(
                &format!("{}:Server", style.soap),
                "Invalid user credentials",
                Some(("Authentication", -30, "Invalid user credentials")),
            );
            respond(server_error, XML, style.envelope(&fault), None)
        }
        B::VisionSuccessWithoutAccount => {
            let body = style.response(true, None, &style.configuration(ods, false, ""));
            respond(ok, XML, style.envelope(&body), None)
        }
        B::VisionXxe => {
            let body = style.response(true, None, &style.configuration(ods, true, "&xxe;"));
            let envelope = style.envelope(&body);
            let envelope = envelope.trim_start_matches(r#"<?xml version="1.0" encoding="utf-8"?>"#);
            let with_dtd = format!(
                r#"<?xml version="1.0" encoding="utf-8"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>{envelope}"#
            );
            respond(ok, XML, with_dtd, None)
        }
        B::OkWithoutSession => respond(ok, XML, style.envelope(""), None),
        B::RateLimited => respond(
            StatusCode::TOO_MANY_REQUESTS,
            TEXT,
            "Too many requests",
            Some(step.retry_after_secs.unwrap_or(RATE_LIMITED_RETRY_AFTER)),
        ),
        B::Unavailable => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            HTML,
            "<html><body><h1>503 Service Unavailable</h1></body></html>",
            Some(step.retry_after_secs.unwrap_or(UNAVAILABLE_RETRY_AFTER)),
        ),
        B::ServerError => {
            let fault = style.fault(&format!("{}:Server", style.soap), "Internal error", None);
            respond(server_error, XML, style.envelope(&fault), None)
        }
        B::Garbage => respond(ok, XML, Bytes::from_static(b"\x00\xff<soap:Envelope not xml at all"), None),
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
        other => foreign_behaviour(other, Supplier::Vision),
    }
}
