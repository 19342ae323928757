//! The Vision adapter against the simulator over real HTTP: every simulated behaviour's
//! classification (the simulator changes prefixes between answers), the envelope's shape,
//! the signer hook, timeouts, Retry-After and outages.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use im1_revalidator::model::{Reason, Supplier};
use im1_revalidator::simulator::{Behaviour, RunningSimulator, Scenario, Step};
use im1_revalidator::suppliers::vision::VisionAdapter;
use im1_revalidator::suppliers::xml::{self, SOAP_ENV};
use im1_revalidator::suppliers::{Adapter, Answer, CheckTarget, Outcome};
use im1_revalidator::token::Token;

use crate::helpers::{localhost, retry_after, start, transient};

const ODS: &str = "C81001";
const PROVIDER: &str = "vision-provider";
const API_KEY: &str = "api-key-secret";
const VISION_NS: &str = "urn:vision";

type SignerFn = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

fn adapter(running: &RunningSimulator, timeout: Duration) -> VisionAdapter {
    VisionAdapter::new(crate::helpers::adapter_http(), &running.vision_url(), PROVIDER.to_owned(), timeout, None)
}

fn token(rosu: &str) -> Token {
    Token::from_value(Supplier::Vision, &serde_json::json!({ "rosu_account_id": rosu, "api_key": API_KEY }))
        .expect("valid token")
}

async fn check(adapter: &VisionAdapter, rosu: &str) -> Answer {
    let token = token(rosu);
    adapter.check(CheckTarget { ods_code: ODS, token: &token }).await
}

/// What each behaviour must come to through the real adapter (hang: see its own test).
fn expected(behaviour: Behaviour) -> Option<Outcome> {
    use Behaviour as B;
    if behaviour == B::Hang {
        return None;
    }
    Some(match behaviour {
        B::Valid => Outcome::Valid,
        B::VisionInvalidCredentials | B::VisionFaultWithCode => Outcome::Invalid(Reason::TokenRejected),
        B::VisionDisabled | B::VisionAccessDenied => Outcome::Invalid(Reason::AccessRevoked),
        B::VisionInvalidSecurity => Outcome::SupplierConfigError,
        B::RateLimited => retry_after(10),
        B::Unavailable => retry_after(30),
        // Every other Vision behaviour, every generic failure, and every other supplier's
        // behaviour (HTTP 400 with a plain-text note) is transient.
        _ => transient(),
    })
}

#[tokio::test]
async fn every_behaviour_is_classified_through_http_in_every_prefix_style() {
    let (sim, running) = start(Scenario::default()).await;
    let vision = adapter(&running, Duration::from_secs(5));
    // The simulator rotates through three prefix styles: three rounds cover each
    // behaviour in each style.
    for round in 0..3 {
        for &behaviour in Behaviour::ALL {
            let Some(want) = expected(behaviour) else { continue };
            let rosu = format!("rosu-secret-{behaviour}-{round}");
            sim.script(&rosu, vec![Step::new(behaviour)]);
            let answer = check(&vision, &rosu).await;
            assert_eq!(answer.outcome, want, "{behaviour} (round {round}): {answer:?}");
            let debug = format!("{answer:?}");
            assert!(!debug.contains(&rosu) && !debug.contains(API_KEY), "{behaviour}: token in {debug}");
            assert_eq!(sim.token_calls(&rosu), 1);
        }
    }
    running.shutdown().await;
}

#[tokio::test]
async fn evidence_quotes_what_vision_said() {
    let (sim, running) = start(Scenario::default()).await;
    let vision = adapter(&running, Duration::from_secs(5));
    let cases = [
        (Behaviour::VisionInvalidCredentials, Some(200), Some("-30"), None),
        (Behaviour::VisionDisabled, Some(200), Some("-19"), None),
        (Behaviour::VisionAccessDenied, Some(200), Some("-35"), None),
        (Behaviour::VisionRecordUnavailable, Some(200), Some("-15"), None),
        (Behaviour::VisionUnknownError, Some(200), Some("-100"), None),
        (Behaviour::VisionInvalidSecurity, Some(500), Some("wsse:InvalidSecurity"), None),
        (Behaviour::VisionFaultWithCode, Some(500), Some("-30"), None),
        (Behaviour::VisionSuccessWithoutAccount, Some(200), None, Some("no_account")),
        (Behaviour::VisionXxe, Some(200), None, Some("dtd_refused")),
        (Behaviour::OkWithoutSession, Some(200), None, Some("no_vision_response")),
        (Behaviour::ServerError, Some(500), None, Some("soap_fault")),
        (Behaviour::Garbage, Some(200), None, Some("unparseable")),
        (Behaviour::HugeBody, None, None, Some("body_too_large")),
        (Behaviour::TppNoAccess, Some(400), None, Some("unparseable")),
    ];
    for (behaviour, status, code, detail) in cases {
        let rosu = format!("evidence-{behaviour}");
        sim.script(&rosu, vec![Step::new(behaviour)]);
        let e = check(&vision, &rosu).await.evidence;
        assert_eq!(e.http_status, status, "{behaviour}: {e:?}");
        if behaviour != Behaviour::ServerError {
            assert_eq!(e.code.as_deref(), code, "{behaviour}: {e:?}");
        }
        assert_eq!(e.detail.as_deref(), detail, "{behaviour}: {e:?}");
    }
    sim.script("rosu-msg", vec![Step::new(Behaviour::VisionInvalidCredentials)]);
    let message = check(&vision, "rosu-msg").await.evidence.message.unwrap_or_default();
    assert!(message.starts_with("Invalid user credentials"), "{message}");
    running.shutdown().await;
}

#[tokio::test]
async fn outages_and_counts() {
    let (sim, running) = start(Scenario::default()).await;
    let vision = adapter(&running, Duration::from_secs(5));
    sim.set_outage(Supplier::Vision, true);
    let answer = check(&vision, "rosu-outage").await;
    assert_eq!(answer.outcome, transient(), "an outage has no Retry-After");
    assert_eq!(answer.evidence.http_status, Some(503));
    sim.set_outage(Supplier::Vision, false);
    sim.set_outage(Supplier::Tpp, true);
    assert_eq!(check(&vision, "rosu-outage").await.outcome, Outcome::Valid);
    assert_eq!(sim.token_calls("rosu-outage"), 2);
    assert_eq!(sim.calls().vision.get_configuration, 2);
    assert_eq!(sim.calls().tpp.authenticate, 0);
    sim.reset();
    assert_eq!(sim.calls().vision.get_configuration, 0);
    running.shutdown().await;

    let closed = VisionAdapter::new(
        crate::helpers::adapter_http(),
        "http://127.0.0.1:9/vision",
        PROVIDER.into(),
        Duration::from_secs(2),
        None,
    );
    let answer = check(&closed, "rosu-nobody-home").await;
    assert_eq!(answer.outcome, transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("connect"));
}

#[tokio::test]
async fn a_slow_answer_beyond_the_request_timeout_is_a_transient_timeout() {
    let (sim, running) = start(Scenario::default()).await;
    let vision = adapter(&running, Duration::from_millis(200));
    sim.script("rosu-slow", vec![Step::new(Behaviour::Valid).delayed(2000)]);
    let started = Instant::now();
    let answer = check(&vision, "rosu-slow").await;
    assert_eq!(answer.outcome, transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("timeout"));
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    sim.script("rosu-hang", vec![Step::new(Behaviour::Hang)]);
    assert_eq!(check(&vision, "rosu-hang").await.evidence.detail.as_deref(), Some("timeout"));
    let started = Instant::now();
    running.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
}

#[tokio::test]
async fn retry_after_is_carried_on_429_and_503() {
    let (sim, running) = start(Scenario::default()).await;
    let vision = adapter(&running, Duration::from_secs(5));
    sim.script("rosu-limited", vec![Step::new(Behaviour::RateLimited).retry_after(7)]);
    assert_eq!(check(&vision, "rosu-limited").await.outcome, retry_after(7));
    sim.script("rosu-down", vec![Step::new(Behaviour::Unavailable).retry_after(120), Step::new(Behaviour::Valid)]);
    assert_eq!(check(&vision, "rosu-down").await.outcome, retry_after(120));
    assert_eq!(check(&vision, "rosu-down").await.outcome, Outcome::Valid);
    running.shutdown().await;
}

#[tokio::test]
async fn the_signer_hook_signs_or_fails_as_configuration() {
    let (sim, running) = start(Scenario::default()).await;
    // A stand-in signer that adds a header element; the simulator ignores signatures.
    let signer: SignerFn = Arc::new(|envelope: &str| {
        Ok(envelope.replace("<soapenv:Header/>", "<soapenv:Header><signed xmlns=\"urn:test\"/></soapenv:Header>"))
    });
    let signed = VisionAdapter::new(
        crate::helpers::adapter_http(),
        &running.vision_url(),
        PROVIDER.into(),
        Duration::from_secs(5),
        Some(signer),
    );
    assert_eq!(check(&signed, "rosu-signed").await.outcome, Outcome::Valid);

    let failing: SignerFn = Arc::new(|envelope: &str| Err(format!("cannot sign {envelope}")));
    let failing = VisionAdapter::new(
        crate::helpers::adapter_http(),
        &running.vision_url(),
        PROVIDER.into(),
        Duration::from_secs(5),
        Some(failing),
    );
    let answer = check(&failing, "rosu-unsigned").await;
    assert_eq!(answer.outcome, Outcome::SupplierConfigError);
    assert_eq!(answer.evidence.detail.as_deref(), Some("signing_failed"));
    assert!(!format!("{answer:?}").contains("rosu-unsigned"));
    assert_eq!(sim.token_calls("rosu-unsigned"), 0, "nothing is sent unsigned");
    running.shutdown().await;
}

/// What a capturing stand-in for Vision saw.
#[derive(Default)]
struct Seen {
    requests: Vec<(HeaderMap, Bytes)>,
}

#[tokio::test]
async fn requests_have_the_documented_shape() {
    use axum::extract::State;
    use axum::routing::post;

    type Shared = Arc<Mutex<Seen>>;
    async fn vision(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> &'static str {
        seen.lock().expect("lock").requests.push((headers, body));
        concat!(
            r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>"#,
            r#"<visionResponse xmlns="urn:vision"><serviceHeader><outcome><successful>true</successful></outcome></serviceHeader>"#,
            r#"<serviceContent><configuration><account/></configuration></serviceContent></visionResponse></e:Body></e:Envelope>"#
        )
    }

    let seen: Shared = Arc::default();
    let app = axum::Router::new().route("/soap", post(vision)).with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind(localhost()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let vision = VisionAdapter::new(
        crate::helpers::adapter_http(),
        &format!("http://{addr}/soap"),
        "prov<&>".into(),
        Duration::from_secs(5),
        None,
    );
    let before = chrono::Utc::now();
    assert_eq!(check(&vision, "rosu<&>\"'").await.outcome, Outcome::Valid);
    assert_eq!(check(&vision, "rosu<&>\"'").await.outcome, Outcome::Valid);
    let after = chrono::Utc::now();
    server.abort();

    let seen = seen.lock().expect("lock");
    assert_eq!(seen.requests.len(), 2);
    let header_text = |body: &Bytes, name: &str| {
        let root = xml::parse(body).expect("a well-formed envelope");
        root.find(Some(VISION_NS), "serviceHeader").and_then(|h| h.child(Some(VISION_NS), name)).map(|e| e.text.clone())
    };
    let ids: Vec<_> = seen.requests.iter().map(|(_, body)| header_text(body, "id").expect("an id")).collect();
    assert_ne!(ids[0], ids[1], "a fresh GUID per request");
    for id in &ids {
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id} is a GUID");
    }
    // creationTime: the send time, to the second, UTC.
    let created = header_text(&seen.requests[0].1, "creationTime").expect("a creationTime");
    let created = chrono::NaiveDateTime::parse_from_str(&created, "%Y-%m-%dT%H:%M:%S").expect("ISO 8601 to the second");
    let created = created.and_utc();
    assert!(created >= before - chrono::TimeDelta::seconds(1) && created <= after, "{created} not within the check");
    let (headers, body) = &seen.requests[0];
    assert_eq!(headers["content-type"], "text/xml; charset=utf-8");
    assert_eq!(headers["soapaction"], "\"\"");
    let root = xml::parse(body).expect("a well-formed envelope");
    assert!(root.is(Some(SOAP_ENV), "Envelope"));
    assert!(root.child(Some(SOAP_ENV), "Header").is_some());
    let request = root.child(Some(SOAP_ENV), "Body").and_then(|b| b.child(Some(VISION_NS), "visionRequest"));
    let request = request.expect("visionRequest");
    let text = |path: &[&str]| request.path(Some(VISION_NS), path).map(|e| e.text.clone());
    assert_eq!(text(&["serviceDefinition", "name"]).as_deref(), Some("VOS.GetConfiguration"));
    assert_eq!(text(&["serviceDefinition", "version"]).as_deref(), Some("2.3.0"));
    assert_eq!(text(&["serviceHeader", "credentials", "rosuAccountId"]).as_deref(), Some("rosu<&>\"'"));
    assert_eq!(text(&["serviceHeader", "credentials", "apiKey"]).as_deref(), Some(API_KEY));
    assert_eq!(text(&["serviceHeader", "target", "nationalCode"]).as_deref(), Some(ODS));
    assert_eq!(text(&["serviceHeader", "opsReference", "provider"]).as_deref(), Some("prov<&>"));
    assert_eq!(text(&["serviceHeader", "opsReference", "accountId"]).as_deref(), Some("prov<&>"));
    let header = request.child(Some(VISION_NS), "serviceHeader").expect("serviceHeader");
    let order: Vec<&str> = header.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(order, ["id", "creationTime", "target", "credentials", "opsReference"]);
    assert!(request.child(Some(VISION_NS), "serviceContent").is_some());
}

/// A simulator that knows the RP's provider id and the practice of `rosu-at-ods`.
async fn strict_simulator() -> (im1_revalidator::simulator::Simulator, RunningSimulator) {
    let mut scenario = Scenario::default();
    scenario.vision.provider_id = Some(PROVIDER.to_owned());
    scenario.vision.practices.insert("rosu-at-ods".to_owned(), ODS.to_owned());
    start(scenario).await
}

/// Asserts a refusal: a Client fault, classified as our configuration, never a verdict,
/// its faultstring naming `what`.
fn assert_refused(answer: &Answer, what: &str) {
    assert_eq!(answer.outcome, Outcome::SupplierConfigError, "{answer:?}");
    assert_eq!(answer.evidence.http_status, Some(500), "{answer:?}");
    assert_eq!(answer.evidence.detail.as_deref(), Some("request_refused"), "{answer:?}");
    assert!(answer.evidence.code.as_deref().is_some_and(|c| c.ends_with(":Client")), "{answer:?}");
    let message = answer.evidence.message.as_deref().unwrap_or_default();
    assert!(message.contains(what), "{message:?} should name {what}");
    assert!(!message.contains(API_KEY) && !message.contains("rosu-"), "a credential in {message:?}");
}

#[tokio::test]
async fn the_simulator_accepts_the_corrected_header_and_refuses_wrong_values() {
    let (sim, running) = strict_simulator().await;
    let vision = adapter(&running, Duration::from_secs(5));
    // The right practice and provider id, a fresh GUID each time: valid, again and again.
    for _ in 0..3 {
        assert_eq!(check(&vision, "rosu-at-ods").await.outcome, Outcome::Valid);
    }

    // The token's practice is another: the request, not the token, is wrong.
    let elsewhere = adapter(&running, Duration::from_secs(5));
    let token = token("rosu-at-ods");
    let answer = elsewhere.check(CheckTarget { ods_code: "Z99999", token: &token }).await;
    assert_refused(&answer, "target/nationalCode");

    // Another provider id.
    let stranger = VisionAdapter::new(
        crate::helpers::adapter_http(),
        &running.vision_url(),
        "someone-else".into(),
        Duration::from_secs(5),
        None,
    );
    assert_refused(&check(&stranger, "rosu-at-ods").await, "opsReference/provider");

    // A creationTime ten minutes off the service's time, either way.
    for minutes in [-10, 10] {
        let clock = im1_revalidator::clock::ManualClock::new(chrono::Utc::now() + chrono::TimeDelta::minutes(minutes));
        let skewed = adapter(&running, Duration::from_secs(5)).with_clock(Arc::new(clock));
        assert_refused(&check(&skewed, "rosu-at-ods").await, "creationTime");
    }
    // Every refusal was still a call for the token, and none consumed a script step.
    assert_eq!(sim.token_calls("rosu-at-ods"), 7);
    running.shutdown().await;
}

/// A request envelope with `header` as the content of `serviceHeader`.
fn envelope_with_header(header: &str) -> String {
    format!(
        concat!(
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:vision="urn:vision">"#,
            r#"<soapenv:Header/><soapenv:Body><vision:visionRequest>"#,
            r#"<vision:serviceDefinition><vision:name>VOS.GetConfiguration</vision:name><vision:version>2.3.0</vision:version></vision:serviceDefinition>"#,
            r#"<vision:serviceHeader>{}</vision:serviceHeader><vision:serviceContent/>"#,
            r#"</vision:visionRequest></soapenv:Body></soapenv:Envelope>"#
        ),
        header
    )
}

/// The corrected header with the given id and creationTime.
fn corrected_header(id: &str, created: &str) -> String {
    format!(
        concat!(
            "<vision:id>{id}</vision:id><vision:creationTime>{created}</vision:creationTime>",
            "<vision:target><vision:nationalCode>{ods}</vision:nationalCode></vision:target>",
            "<vision:credentials><vision:rosuAccountId>rosu-at-ods</vision:rosuAccountId><vision:apiKey>{key}</vision:apiKey></vision:credentials>",
            "<vision:opsReference><vision:provider>{p}</vision:provider><vision:accountId>{p}</vision:accountId></vision:opsReference>"
        ),
        id = id,
        created = created,
        ods = ODS,
        key = API_KEY,
        p = PROVIDER
    )
}

/// Posts a raw envelope to the simulator and classifies the answer as the adapter would.
async fn post_raw(running: &RunningSimulator, envelope: String) -> Answer {
    let response = reqwest::Client::new()
        .post(running.vision_url())
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", "\"\"")
        .body(envelope)
        .send()
        .await
        .expect("the simulator answers");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    im1_revalidator::suppliers::vision::classify_configuration_answer(status, &body, None)
}

#[tokio::test]
async fn an_old_shaped_or_malformed_header_gets_a_fault_never_a_verdict() {
    let (_sim, running) = strict_simulator().await;
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string();

    // The shape the earlier wire page had: odsCode and providerId under serviceHeader.
    let old = envelope_with_header(&format!(
        concat!(
            "<vision:credentials><vision:rosuAccountId>rosu-at-ods</vision:rosuAccountId><vision:apiKey>{}</vision:apiKey></vision:credentials>",
            "<vision:odsCode>{}</vision:odsCode><vision:providerId>{}</vision:providerId>"
        ),
        API_KEY, ODS, PROVIDER
    ));
    assert_refused(&post_raw(&running, old).await, "expected id, creationTime, target, credentials, opsReference");

    // The corrected shape with one thing wrong at a time.
    let good = corrected_header(&uuid::Uuid::new_v4().to_string(), &now);
    let cases: Vec<(String, &str)> = vec![
        // Elements out of order, or one renamed.
        (
            format!("<vision:creationTime>{now}</vision:creationTime>")
                + &good.replace(&format!("<vision:creationTime>{now}</vision:creationTime>"), ""),
            "found creationTime, id, target",
        ),
        (good.replace("vision:target>", "vision:practice>"), "found id, creationTime, practice"),
        (corrected_header("not-a-guid", &now), "serviceHeader/id: not a GUID"),
        (corrected_header(&uuid::Uuid::new_v4().to_string(), "yesterday"), "creationTime: not an ISO 8601"),
        (corrected_header(&uuid::Uuid::new_v4().to_string(), ""), "serviceHeader/creationTime: empty"),
        // opsReference's two ids differ.
        (
            good.replace(
                &format!("<vision:accountId>{PROVIDER}</vision:accountId>"),
                "<vision:accountId>x</vision:accountId>",
            ),
            "opsReference: provider and accountId differ",
        ),
        // An element of the right name in another namespace.
        (
            good.replace(
                &format!("<vision:nationalCode>{ODS}</vision:nationalCode>"),
                &format!(r#"<x:nationalCode xmlns:x="urn:other">{ODS}</x:nationalCode>"#),
            ),
            "target/nationalCode: not in the Vision namespace",
        ),
        (
            good.replace("<vision:apiKey>", "<vision:key>").replace("</vision:apiKey>", "</vision:key>"),
            "credentials: expected rosuAccountId, apiKey",
        ),
    ];
    for (header, what) in cases {
        assert_refused(&post_raw(&running, envelope_with_header(&header)).await, what);
    }

    // An offset is accepted as well as the UTC form the adapter sends; a message id is
    // accepted once only.
    let id = uuid::Uuid::new_v4().to_string();
    let with_offset = chrono::Utc::now().to_rfc3339();
    let answer = post_raw(&running, envelope_with_header(&corrected_header(&id, &with_offset))).await;
    assert_eq!(answer.outcome, Outcome::Valid, "{answer:?}");
    let again = post_raw(&running, envelope_with_header(&corrected_header(&id, &now))).await;
    assert_refused(&again, "a message id already seen");
    running.shutdown().await;
}

#[tokio::test]
async fn a_token_echoed_by_vision_never_reaches_the_answer() {
    use axum::routing::post;

    let app = axum::Router::new().route(
        "/",
        post(|body: Bytes| async move {
            let root = xml::parse(&body).expect("well formed");
            let rosu = root.find(Some(VISION_NS), "rosuAccountId").map(|e| e.text.clone()).unwrap_or_default();
            let key = root.find(Some(VISION_NS), "apiKey").map(|e| e.text.clone()).unwrap_or_default();
            format!(
                concat!(
                    r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><v:visionResponse xmlns:v="urn:vision">"#,
                    r#"<v:serviceHeader><v:outcome><v:successful>false</v:successful><v:error><v:code>-30</v:code>"#,
                    r#"<v:description>Unknown account {}</v:description><v:diagnostic>key {}</v:diagnostic></v:error>"#,
                    r#"</v:outcome></v:serviceHeader></v:visionResponse></s:Body></s:Envelope>"#
                ),
                xml::escape(&rosu),
                xml::escape(&key)
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(localhost()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let vision = VisionAdapter::new(
        crate::helpers::adapter_http(),
        &format!("http://{addr}/"),
        PROVIDER.into(),
        Duration::from_secs(5),
        None,
    );
    let answer = check(&vision, "rosu-0f8fad5b").await;
    server.abort();
    assert_eq!(answer.outcome, Outcome::Invalid(Reason::TokenRejected));
    assert_eq!(answer.evidence.message.as_deref(), Some("Unknown account [REDACTED] — key [REDACTED]"));
    let debug = format!("{answer:?}");
    assert!(!debug.contains("0f8fad5b") && !debug.contains(API_KEY));
}

/// The request a reviewer can hold against the NHS App's Vision request model, byte for
/// byte once the golden file's indentation between elements is taken out.
#[test]
fn the_envelope_matches_the_golden_request() {
    use im1_revalidator::suppliers::vision::{ServiceHeader, configuration_envelope};
    let golden = include_str!("../golden/vision-get-configuration.xml");
    let golden: String = golden.lines().map(str::trim).collect();
    let built = configuration_envelope(&ServiceHeader {
        id: uuid::Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap(),
        creation_time: "2026-12-01T10:00:00.734Z".parse().unwrap(),
        national_code: "A12345",
        rosu_account_id: "rosu-account-1",
        api_key: "api-key-1",
        provider_id: "rp-provider-1",
    });
    assert_eq!(built, golden);
}
