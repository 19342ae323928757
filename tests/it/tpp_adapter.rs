//! The TPP adapter against the simulator over real HTTP: every simulated behaviour's
//! classification, the Logoff after a successful Authenticate, the request's shape,
//! timeouts, Retry-After and outages.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use im1_revalidator::model::{Reason, Supplier};
use im1_revalidator::simulator::{Behaviour, RunningSimulator, Scenario, Step};
use im1_revalidator::suppliers::tpp::TppAdapter;
use im1_revalidator::suppliers::xml;
use im1_revalidator::suppliers::{Adapter, Answer, CheckTarget, Outcome};
use im1_revalidator::token::Token;

use crate::helpers::{localhost, retry_after, start, transient};

const ODS: &str = "B81001";
const PROVIDER: &str = "provider-configured";
const PASSPHRASE: &str = "pass-phrase-secret";

fn adapter(running: &RunningSimulator, timeout: Duration) -> TppAdapter {
    TppAdapter::new(crate::helpers::adapter_http(), &running.tpp_url(), PROVIDER.to_owned(), timeout)
}

fn token(account: &str, provider: Option<&str>) -> Token {
    let mut value = serde_json::json!({ "account_id": account, "passphrase": PASSPHRASE });
    if let Some(provider) = provider {
        value["provider_id"] = provider.into();
    }
    Token::from_value(Supplier::Tpp, &value).expect("valid token")
}

async fn check(adapter: &TppAdapter, account: &str) -> Answer {
    let token = token(account, None);
    adapter.check(CheckTarget { ods_code: ODS, token: &token }).await
}

/// What each behaviour must come to through the real adapter (hang: see its own test).
fn expected(behaviour: Behaviour) -> Option<Outcome> {
    use Behaviour as B;
    if behaviour == B::Hang {
        return None;
    }
    Some(match behaviour {
        B::Valid | B::TppValidWithoutSuid | B::TppLogoffFails => Outcome::Valid,
        B::TppProblemLoggingOn | B::TppErrorHttp500 => Outcome::Invalid(Reason::TokenRejected),
        B::TppNoAccess => Outcome::Invalid(Reason::AccessRevoked),
        B::TppInvalidProvider => Outcome::SupplierConfigError,
        B::RateLimited => retry_after(10),
        B::Unavailable => retry_after(30),
        // Every other TPP behaviour, every generic failure, and every other supplier's
        // behaviour (HTTP 400 with a plain-text note) is transient.
        _ => transient(),
    })
}

#[tokio::test]
async fn every_behaviour_is_classified_through_http() {
    let (sim, running) = start(Scenario::default()).await;
    let tpp = adapter(&running, Duration::from_secs(5));
    for &behaviour in Behaviour::ALL {
        let Some(want) = expected(behaviour) else { continue };
        let account = format!("acc-secret-{behaviour}");
        sim.script(&account, vec![Step::new(behaviour)]);
        let answer = check(&tpp, &account).await;
        assert_eq!(answer.outcome, want, "{behaviour}: {answer:?}");
        let debug = format!("{answer:?}");
        assert!(!debug.contains(&account) && !debug.contains(PASSPHRASE), "{behaviour}: token in {debug}");
        assert!(!debug.contains("sim-suid-") && !debug.contains("sim-logoff-fails"), "{behaviour}: suid in {debug}");
        assert_eq!(sim.token_calls(&account), 1, "{behaviour}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn evidence_quotes_what_tpp_said() {
    let (sim, running) = start(Scenario::default()).await;
    let tpp = adapter(&running, Duration::from_secs(5));
    let cases = [
        (Behaviour::TppProblemLoggingOn, Some(200), Some("9"), None),
        (Behaviour::TppErrorHttp500, Some(500), Some("9"), None),
        (Behaviour::TppNoAccess, Some(200), Some("6"), None),
        (Behaviour::TppInvalidProvider, Some(200), Some("5"), None),
        (Behaviour::TppServiceUnavailable, Some(200), Some("0"), None),
        (Behaviour::TppNotAuthenticated, Some(200), Some("3"), None),
        (Behaviour::TppUnknownCode, Some(200), Some("42"), Some("unlisted_code")),
        (Behaviour::TppWrongRoot, Some(200), None, Some("unexpected_root")),
        (Behaviour::OkWithoutSession, Some(200), None, Some("empty_body")),
        (Behaviour::Garbage, Some(200), None, Some("unparseable")),
        (Behaviour::HugeBody, None, None, Some("body_too_large")),
        (Behaviour::NoUser, Some(400), None, Some("unparseable")),
    ];
    for (behaviour, status, code, detail) in cases {
        let account = format!("evidence-{behaviour}");
        sim.script(&account, vec![Step::new(behaviour)]);
        let e = check(&tpp, &account).await.evidence;
        assert_eq!(e.http_status, status, "{behaviour}: {e:?}");
        assert_eq!(e.code.as_deref(), code, "{behaviour}: {e:?}");
        assert_eq!(e.detail.as_deref(), detail, "{behaviour}: {e:?}");
    }
    sim.script("acc-msg", vec![Step::new(Behaviour::TppProblemLoggingOn)]);
    let message = check(&tpp, "acc-msg").await.evidence.message.unwrap_or_default();
    assert_eq!(message, "There was a problem logging on.");
    running.shutdown().await;
}

#[tokio::test]
async fn logoff_is_sent_once_per_successful_authenticate_with_a_suid() {
    let (sim, running) = start(Scenario::default()).await;
    let tpp = adapter(&running, Duration::from_secs(5));
    for i in 0..3 {
        assert_eq!(check(&tpp, &format!("acc-logoff-{i}")).await.outcome, Outcome::Valid);
    }
    assert_eq!(sim.calls().tpp.authenticate, 3);
    assert_eq!(sim.calls().tpp.logoff, 3);

    // No suid: no Logoff.
    sim.script("acc-no-suid", vec![Step::new(Behaviour::TppValidWithoutSuid)]);
    assert_eq!(check(&tpp, "acc-no-suid").await.outcome, Outcome::Valid);
    assert_eq!(sim.calls().tpp.logoff, 3);

    // A failing Logoff does not change the verdict.
    sim.script("acc-logoff-fails", vec![Step::new(Behaviour::TppLogoffFails)]);
    let answer = check(&tpp, "acc-logoff-fails").await;
    assert_eq!(answer.outcome, Outcome::Valid);
    assert_eq!(answer.evidence.detail, None);
    assert_eq!(sim.calls().tpp.logoff, 4);

    // No Logoff after an error, even one with HTTP 500.
    for behaviour in [Behaviour::TppProblemLoggingOn, Behaviour::TppErrorHttp500, Behaviour::Unavailable] {
        let account = format!("acc-err-{behaviour}");
        sim.script(&account, vec![Step::new(behaviour)]);
        check(&tpp, &account).await;
    }
    assert_eq!(sim.calls().tpp.logoff, 4);
    assert_eq!(sim.calls().tpp.authenticate, 8);
    sim.reset();
    assert_eq!(sim.calls().tpp, Default::default());
    running.shutdown().await;
}

#[tokio::test]
async fn outages_are_transient_and_do_not_touch_other_suppliers() {
    let (sim, running) = start(Scenario::default()).await;
    let tpp = adapter(&running, Duration::from_secs(5));
    sim.set_outage(Supplier::Tpp, true);
    let answer = check(&tpp, "acc-outage").await;
    assert_eq!(answer.outcome, transient(), "an outage has no Retry-After");
    assert_eq!(answer.evidence.http_status, Some(503));
    assert_eq!(sim.token_calls("acc-outage"), 1);
    sim.set_outage(Supplier::Tpp, false);
    sim.set_outage(Supplier::Vision, true);
    sim.set_outage(Supplier::Emis, true);
    assert_eq!(check(&tpp, "acc-outage").await.outcome, Outcome::Valid);
    running.shutdown().await;

    // A refused connection (nothing listening) is transient `connect`.
    let closed = TppAdapter::new(
        crate::helpers::adapter_http(),
        "http://127.0.0.1:9/tpp",
        PROVIDER.into(),
        Duration::from_secs(2),
    );
    let answer = check(&closed, "acc-nobody-home").await;
    assert_eq!(answer.outcome, transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("connect"));
    // A bad base URL is our configuration, not the token.
    let bad = TppAdapter::new(crate::helpers::adapter_http(), "not a url", PROVIDER.into(), Duration::from_secs(2));
    assert_eq!(check(&bad, "acc").await.outcome, Outcome::SupplierConfigError);
}

#[tokio::test]
async fn a_slow_answer_beyond_the_request_timeout_is_a_transient_timeout() {
    let (sim, running) = start(Scenario::default()).await;
    let tpp = adapter(&running, Duration::from_millis(200));
    sim.script("acc-slow", vec![Step::new(Behaviour::Valid).delayed(2000)]);
    let started = Instant::now();
    let answer = check(&tpp, "acc-slow").await;
    assert_eq!(answer.outcome, transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("timeout"));
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    sim.script("acc-hang", vec![Step::new(Behaviour::Hang)]);
    let answer = check(&tpp, "acc-hang").await;
    assert_eq!(answer.evidence.detail.as_deref(), Some("timeout"));
    assert_eq!(sim.calls().tpp.logoff, 0);
    let started = Instant::now();
    running.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
}

#[tokio::test]
async fn retry_after_is_carried_on_429_and_503() {
    let (sim, running) = start(Scenario::default()).await;
    let tpp = adapter(&running, Duration::from_secs(5));
    sim.script("acc-limited", vec![Step::new(Behaviour::RateLimited).retry_after(7)]);
    assert_eq!(check(&tpp, "acc-limited").await.outcome, retry_after(7));
    sim.script("acc-down", vec![Step::new(Behaviour::Unavailable).retry_after(120), Step::new(Behaviour::Valid)]);
    assert_eq!(check(&tpp, "acc-down").await.outcome, retry_after(120));
    assert_eq!(check(&tpp, "acc-down").await.outcome, Outcome::Valid);
    running.shutdown().await;
}

/// What a capturing stand-in for TPP saw.
#[derive(Default)]
struct Seen {
    requests: Vec<(HeaderMap, Bytes)>,
}

#[tokio::test]
async fn requests_have_the_documented_shape() {
    use axum::extract::State;
    use axum::response::IntoResponse;
    use axum::routing::post;

    type Shared = Arc<Mutex<Seen>>;
    async fn tpp(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
        let kind = headers.get("type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        seen.lock().expect("lock").requests.push((headers, body));
        match kind.as_str() {
            "Authenticate" => ([("suid", "suid-secret-value")], "<AuthenticateReply/>").into_response(),
            _ => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "logoff broke").into_response(),
        }
    }

    let seen: Shared = Arc::default();
    let app = axum::Router::new().route("/api/tpp", post(tpp)).with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind(localhost()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let tpp = TppAdapter::new(
        crate::helpers::adapter_http(),
        &format!("http://{addr}/api/tpp"),
        PROVIDER.into(),
        Duration::from_secs(5),
    );
    let answer = check(&tpp, "acc<&>\"'").await;
    assert_eq!(answer.outcome, Outcome::Valid, "a failing Logoff never changes the verdict");
    assert!(!format!("{answer:?}").contains("suid-secret-value"));
    // The token's own provider id wins over the configured one.
    let with_provider = token("acc-2", Some("provider-from-token"));
    tpp.check(CheckTarget { ods_code: ODS, token: &with_provider }).await;
    server.abort();

    let seen = seen.lock().expect("lock");
    assert_eq!(seen.requests.len(), 4, "Authenticate and Logoff, twice");
    let (headers, body) = &seen.requests[0];
    assert_eq!(headers["type"], "Authenticate");
    assert_eq!(headers["content-type"], "text/xml");
    assert_eq!(headers["accept"], "text/xml");
    assert!(headers.get("suid").is_none());
    let root = xml::parse(body).expect("well-formed Authenticate");
    assert!(root.is(None, "Authenticate"));
    assert_eq!(root.attribute("apiVersion"), Some("1"));
    assert_eq!(root.attribute("unitId"), Some(ODS));
    assert_eq!(root.attribute("accountId"), Some("acc<&>\"'"));
    assert_eq!(root.attribute("passphrase"), Some(PASSPHRASE));
    let uuid = root.attribute("uuid").expect("uuid").to_owned();
    assert!(uuid::Uuid::parse_str(&uuid).is_ok(), "{uuid}");
    let app = root.child(None, "Application").expect("Application");
    assert_eq!(app.attribute("name"), Some("im1-revalidator"));
    assert_eq!(app.attribute("version"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(app.attribute("providerId"), Some(PROVIDER));
    assert_eq!(app.attribute("deviceType"), Some("server"));

    let (headers, body) = &seen.requests[1];
    assert_eq!(headers["type"], "Logoff");
    assert_eq!(headers["suid"], "suid-secret-value");
    assert_eq!(headers["content-type"], "text/xml");
    let logoff = xml::parse(body).expect("well-formed Logoff");
    assert!(logoff.is(None, "Logoff"));
    assert_eq!(logoff.attribute("unitId"), Some(ODS));
    assert_eq!(logoff.attribute("apiVersion"), Some("1"));
    assert_ne!(logoff.attribute("uuid"), Some(uuid.as_str()), "a fresh uuid per message");

    let second = xml::parse(&seen.requests[2].1).expect("well-formed");
    assert_ne!(second.attribute("uuid"), Some(uuid.as_str()), "a fresh uuid per check");
    let provider = second.child(None, "Application").and_then(|a| a.attribute("providerId"));
    assert_eq!(provider, Some("provider-from-token"));
}

#[tokio::test]
async fn a_token_echoed_by_tpp_never_reaches_the_answer() {
    use axum::routing::post;

    let app = axum::Router::new().route(
        "/",
        post(|body: Bytes| async move {
            let root = xml::parse(&body).expect("well formed");
            let account = root.attribute("accountId").unwrap_or_default().to_owned();
            let pass = root.attribute("passphrase").unwrap_or_default().to_owned();
            format!(
                r#"<Error errorCode="9" userFriendlyMessage="No account {}" technicalMessage="bad {}"/>"#,
                xml::escape(&account),
                xml::escape(&pass)
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(localhost()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let tpp = TppAdapter::new(
        crate::helpers::adapter_http(),
        &format!("http://{addr}/"),
        PROVIDER.into(),
        Duration::from_secs(5),
    );
    let answer = check(&tpp, "acc-0f8fad5b").await;
    server.abort();
    assert_eq!(answer.outcome, Outcome::Invalid(Reason::TokenRejected));
    assert_eq!(answer.evidence.message.as_deref(), Some("No account [REDACTED]"));
    assert!(!format!("{answer:?}").contains("0f8fad5b"));
}
