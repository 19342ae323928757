//! The EMIS adapter against the simulator over real HTTP: every simulated behaviour's
//! classification, end-user session reuse and renewal, timeouts and Retry-After.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use im1_revalidator::model::{Reason, Supplier};
use im1_revalidator::simulator::{Behaviour, RunningSimulator, Scenario, Step};
use im1_revalidator::suppliers::emis::EmisAdapter;
use im1_revalidator::suppliers::{Adapter, Answer, CheckTarget, Outcome};
use im1_revalidator::token::Token;

use crate::helpers::{localhost, retry_after, start, transient};

const ODS: &str = "A12345";
const APP_ID: &str = "im1-revalidator-test-app";

fn adapter(running: &RunningSimulator, timeout: Duration) -> EmisAdapter {
    EmisAdapter::new(crate::helpers::adapter_http(), &running.emis_url(), APP_ID.to_owned(), timeout)
}

fn token(guid: &str) -> Token {
    Token::from_value(Supplier::Emis, &serde_json::json!({ "access_identity_guid": guid })).expect("valid token")
}

async fn check(adapter: &EmisAdapter, guid: &str) -> Answer {
    let token = token(guid);
    adapter.check(CheckTarget { ods_code: ODS, token: &token }).await
}

/// What each behaviour must come to through the real adapter (hang: see its own test).
fn expected(behaviour: Behaviour) -> Option<Outcome> {
    use Behaviour as B;
    Some(match behaviour {
        B::Valid => Outcome::Valid,
        B::RestrictedLink | B::Restricted => Outcome::Invalid(Reason::AccessRestricted),
        B::NotRegistered => Outcome::Invalid(Reason::NotRegistered),
        B::PracticeNotEnabled | B::PracticeNotLive => Outcome::PracticeUnavailable,
        B::Forbidden | B::NoUser | B::InvalidLinkage | B::DetailsMismatch | B::AccountInactive | B::PatientArchived => {
            Outcome::Invalid(Reason::TokenRejected)
        }
        B::RateLimited => retry_after(10),
        B::Unavailable => retry_after(30),
        B::BadRequest
        | B::ProxyHtml
        | B::OkWithoutSession
        | B::ServerError
        | B::Garbage
        | B::SessionExpired
        | B::SessionExpiredText
        | B::NotFound
        | B::HugeBody => transient(),
        B::Hang => return None,
        // Another supplier's behaviour: HTTP 400 with a plain-text note.
        B::TppProblemLoggingOn
        | B::TppNoAccess
        | B::TppInvalidProvider
        | B::TppServiceUnavailable
        | B::TppNotAuthenticated
        | B::TppUnknownCode
        | B::TppErrorHttp500
        | B::TppWrongRoot
        | B::TppValidWithoutSuid
        | B::TppLogoffFails
        | B::VisionInvalidCredentials
        | B::VisionDisabled
        | B::VisionAccessDenied
        | B::VisionInvalidSecurity
        | B::VisionRecordUnavailable
        | B::VisionUnknownError
        | B::VisionFaultWithCode
        | B::VisionSuccessWithoutAccount
        | B::VisionXxe => transient(),
    })
}

#[tokio::test]
async fn every_behaviour_is_classified_through_http() {
    let (sim, running) = start(Scenario::default()).await;
    let emis = adapter(&running, Duration::from_secs(5));
    for &behaviour in Behaviour::ALL {
        let Some(want) = expected(behaviour) else { continue };
        let guid = format!("guid-secret-{behaviour}");
        sim.script(&guid, vec![Step::new(behaviour)]);
        let answer = check(&emis, &guid).await;
        assert_eq!(answer.outcome, want, "{behaviour}: {answer:?}");
        assert!(!format!("{answer:?}").contains(&guid), "{behaviour}: token in {answer:?}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn evidence_quotes_what_emis_said() {
    let (sim, running) = start(Scenario::default()).await;
    let emis = adapter(&running, Duration::from_secs(5));
    let cases = [
        (Behaviour::NotRegistered, Some(500), Some("-1030"), None),
        (Behaviour::AccountInactive, Some(400), Some("-1107"), None),
        (Behaviour::PracticeNotLive, Some(403), Some("-1401"), None),
        (Behaviour::BadRequest, Some(400), Some("-1001"), Some("unlisted_code")),
        (Behaviour::ProxyHtml, Some(403), None, Some("not_emis_error_body")),
        (Behaviour::OkWithoutSession, Some(200), None, Some("no_session_id")),
        (Behaviour::Garbage, Some(200), None, Some("unparseable")),
        (Behaviour::HugeBody, None, None, Some("body_too_large")),
        (Behaviour::SessionExpired, Some(401), None, Some("session_expired_twice")),
        (Behaviour::SessionExpiredText, Some(400), None, Some("session_expired_twice")),
    ];
    for (behaviour, status, code, detail) in cases {
        let guid = format!("evidence-{behaviour}");
        sim.script(&guid, vec![Step::new(behaviour)]);
        let e = check(&emis, &guid).await.evidence;
        assert_eq!(e.http_status, status, "{behaviour}: {e:?}");
        assert_eq!(e.code.as_deref(), code, "{behaviour}: {e:?}");
        assert_eq!(e.detail.as_deref(), detail, "{behaviour}: {e:?}");
    }
    let e = check(&emis, "guid-unscripted").await.evidence;
    assert_eq!(e.message, None, "a valid answer quotes no message: {e:?}");
    sim.script("guid-msg", vec![Step::new(Behaviour::Restricted)]);
    let message = check(&emis, "guid-msg").await.evidence.message.unwrap_or_default();
    assert!(message.contains("'Restricted'"), "the \\u0027 escapes are decoded: {message}");
    running.shutdown().await;
}

#[tokio::test]
async fn the_end_user_session_is_reused_across_checks() {
    let (sim, running) = start(Scenario::default()).await;
    let emis = adapter(&running, Duration::from_secs(5));
    for i in 0..5 {
        assert_eq!(check(&emis, &format!("reuse-{i}")).await.outcome, Outcome::Valid);
    }
    // Many checks at once still share one session.
    let emis = Arc::new(emis);
    let checks: Vec<_> = (0..20)
        .map(|i| {
            let emis = Arc::clone(&emis);
            tokio::spawn(async move { check(&emis, &format!("concurrent-{i}")).await.outcome })
        })
        .collect();
    for handle in checks {
        assert_eq!(handle.await.expect("check task"), Outcome::Valid);
    }
    let calls = sim.calls().emis;
    assert_eq!(calls.end_user_session, 1, "{calls:?}");
    assert_eq!(calls.sessions, 25);
    assert_eq!(calls.session_rejections, 0);

    // A fresh adapter making 20 checks at once from cold still asks for only one.
    let cold = Arc::new(adapter(&running, Duration::from_secs(5)));
    let checks: Vec<_> = (0..20)
        .map(|i| {
            let cold = Arc::clone(&cold);
            tokio::spawn(async move { check(&cold, &format!("cold-{i}")).await.outcome })
        })
        .collect();
    for handle in checks {
        assert_eq!(handle.await.expect("check task"), Outcome::Valid);
    }
    assert_eq!(sim.calls().emis.end_user_session, 2);
    running.shutdown().await;
}

#[tokio::test]
async fn an_expired_session_is_renewed_once_and_the_check_retried_once() {
    let (sim, running) = start(Scenario::default()).await;
    let emis = adapter(&running, Duration::from_secs(5));
    assert_eq!(check(&emis, "guid-renew").await.outcome, Outcome::Valid);
    sim.expire_emis_sessions();
    assert_eq!(check(&emis, "guid-renew").await.outcome, Outcome::Valid);
    let calls = sim.calls().emis;
    assert_eq!(calls.end_user_session, 2, "{calls:?}");
    assert_eq!(calls.session_rejections, 1);
    assert_eq!(sim.token_calls("guid-renew"), 3, "one check, then one rejected call and one retry");

    // Twenty checks that all see the expiry share one renewal.
    sim.expire_emis_sessions();
    let emis = Arc::new(emis);
    let checks: Vec<_> = (0..20)
        .map(|i| {
            let emis = Arc::clone(&emis);
            tokio::spawn(async move { check(&emis, &format!("guid-renew-{i}")).await.outcome })
        })
        .collect();
    for handle in checks {
        assert_eq!(handle.await.expect("check task"), Outcome::Valid);
    }
    assert_eq!(sim.calls().emis.end_user_session, 3);
    running.shutdown().await;
}

#[tokio::test]
async fn a_second_session_rejection_is_transient() {
    let (sim, running) = start(Scenario::default()).await;
    let emis = adapter(&running, Duration::from_secs(5));
    sim.script("guid-twice", vec![Step::new(Behaviour::SessionExpired)]);
    let answer = check(&emis, "guid-twice").await;
    assert_eq!(answer.outcome, transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("session_expired_twice"));
    assert_eq!(sim.token_calls("guid-twice"), 2, "exactly one retry");
    assert_eq!(sim.calls().emis.end_user_session, 2, "exactly one renewal");

    // A rejection followed by success is a normal check.
    sim.script("guid-once", vec![Step::new(Behaviour::SessionExpired), Step::new(Behaviour::NoUser)]);
    assert_eq!(check(&emis, "guid-once").await.outcome, Outcome::Invalid(Reason::TokenRejected));
    assert_eq!(sim.token_calls("guid-once"), 2);
    running.shutdown().await;
}

#[tokio::test]
async fn a_failing_end_user_session_request_is_transient_for_that_check() {
    let (sim, running) = start(Scenario::default()).await;
    let emis = adapter(&running, Duration::from_secs(5));
    sim.set_outage(Supplier::Emis, true);
    let answer = check(&emis, "guid-outage").await;
    assert_eq!(answer.outcome, transient(), "an outage has no Retry-After");
    assert_eq!(answer.evidence.http_status, Some(503));
    assert_eq!(answer.evidence.detail.as_deref(), Some("end_user_session_failed"));
    assert_eq!(sim.token_calls("guid-outage"), 0, "no check call without a session");

    sim.set_outage(Supplier::Emis, false);
    assert_eq!(check(&emis, "guid-outage").await.outcome, Outcome::Valid);
    assert_eq!(sim.calls().emis.end_user_session, 2);

    running.shutdown().await;

    // A refused connection (nothing listening) is transient `connect`.
    let closed =
        EmisAdapter::new(crate::helpers::adapter_http(), "http://127.0.0.1:9", APP_ID.into(), Duration::from_secs(2));
    let answer = check(&closed, "guid-nobody-home").await;
    assert_eq!(answer.outcome, transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("end_user_session_connect"));
}

#[tokio::test]
async fn a_slow_answer_beyond_the_request_timeout_is_a_transient_timeout() {
    let (sim, running) = start(Scenario::default()).await;
    let emis = adapter(&running, Duration::from_millis(200));
    sim.script("guid-slow", vec![Step::new(Behaviour::Valid).delayed(2000)]);
    let started = Instant::now();
    let answer = check(&emis, "guid-slow").await;
    assert_eq!(answer.outcome, transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("timeout"));
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());

    sim.script("guid-hang", vec![Step::new(Behaviour::Hang)]);
    let answer = check(&emis, "guid-hang").await;
    assert_eq!(answer.outcome, transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("timeout"));
    // Shutting down releases the hanging and delayed answers instead of waiting for them.
    let started = Instant::now();
    running.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
}

#[tokio::test]
async fn retry_after_is_carried_on_429_and_503() {
    let (sim, running) = start(Scenario::default()).await;
    let emis = adapter(&running, Duration::from_secs(5));
    sim.script("guid-limited", vec![Step::new(Behaviour::RateLimited).retry_after(7)]);
    assert_eq!(check(&emis, "guid-limited").await.outcome, retry_after(7));
    sim.script("guid-down", vec![Step::new(Behaviour::Unavailable).retry_after(120)]);
    assert_eq!(check(&emis, "guid-down").await.outcome, retry_after(120));
    sim.script("guid-down-default", vec![Step::new(Behaviour::Unavailable)]);
    assert_eq!(check(&emis, "guid-down-default").await.outcome, retry_after(30));
    // A scripted recovery: transient first, then valid.
    sim.script("guid-recovers", vec![Step::new(Behaviour::Unavailable), Step::new(Behaviour::Valid)]);
    assert_eq!(check(&emis, "guid-recovers").await.outcome, retry_after(30));
    assert_eq!(check(&emis, "guid-recovers").await.outcome, Outcome::Valid);
    assert_eq!(check(&emis, "guid-recovers").await.outcome, Outcome::Valid);
    running.shutdown().await;
}

#[tokio::test]
async fn the_default_behaviour_and_injected_errors_apply() {
    let (_, running) = start(Scenario { error_rate: 1.0, ..Scenario::default() }).await;
    let emis = adapter(&running, Duration::from_secs(5));
    let answer = check(&emis, "guid-any").await;
    assert_eq!(answer.outcome, transient());
    assert_eq!(answer.evidence.http_status, Some(503));
    running.shutdown().await;

    let (sim, running) = start(Scenario::default()).await;
    let emis = adapter(&running, Duration::from_secs(5));
    sim.set_default(Behaviour::InvalidLinkage);
    assert_eq!(check(&emis, "guid-anyone").await.outcome, Outcome::Invalid(Reason::TokenRejected));
    running.shutdown().await;
}

/// What a capturing stand-in for EMIS saw.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, HeaderMap, Bytes)>,
}

#[tokio::test]
async fn requests_have_the_documented_shape() {
    use axum::extract::State;
    use axum::routing::post;

    type Shared = Arc<Mutex<Seen>>;
    async fn end_user_session(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> &'static str {
        seen.lock().expect("lock").requests.push(("endusersession".into(), headers, body));
        r#"{"EndUserSessionId":"eus-1"}"#
    }
    async fn sessions(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> &'static str {
        seen.lock().expect("lock").requests.push(("sessions".into(), headers, body));
        r#"{"SessionId":"s-1"}"#
    }

    let seen: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/base/sessions/endusersession", post(end_user_session))
        .route("/base/sessions", post(sessions))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind(localhost()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let emis = EmisAdapter::new(
        crate::helpers::adapter_http(),
        &format!("http://{addr}/base/"),
        APP_ID.into(),
        Duration::from_secs(5),
    );
    assert_eq!(check(&emis, "shape-guid").await.outcome, Outcome::Valid);
    assert_eq!(check(&emis, "shape-guid-2").await.outcome, Outcome::Valid);
    server.abort();

    let seen = seen.lock().expect("lock");
    let paths: Vec<&str> = seen.requests.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(paths, ["endusersession", "sessions", "sessions"]);
    for (path, headers, _) in &seen.requests {
        assert_eq!(headers["x-api-applicationid"], APP_ID, "{path}");
        assert_eq!(headers["x-api-version"], "2.1.0.0", "{path}");
        assert_eq!(headers["content-type"], "application/json", "{path}");
    }
    assert!(seen.requests[0].2.is_empty(), "the end-user session request has an empty body");
    let (_, headers, body) = &seen.requests[1];
    assert_eq!(headers["x-api-endusersessionid"], "eus-1");
    let body: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
    assert_eq!(body, serde_json::json!({"AccessIdentityGuid": "shape-guid", "NationalPracticeCode": ODS}));
}

#[tokio::test]
async fn a_token_echoed_by_emis_never_reaches_the_answer() {
    use axum::routing::post;

    let app = axum::Router::new()
        .route("/sessions/endusersession", post(|| async { r#"{"EndUserSessionId":"eus-1"}"# }))
        .route(
            "/sessions",
            post(|body: Bytes| async move {
                let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let guid = sent["AccessIdentityGuid"].as_str().unwrap_or_default().to_owned();
                let answer = serde_json::json!({
                    "Message": format!("No user found for {guid}"),
                    "InternalResponseCode": -1104,
                });
                (axum::http::StatusCode::BAD_REQUEST, answer.to_string())
            }),
        );
    let listener = tokio::net::TcpListener::bind(localhost()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let emis = EmisAdapter::new(
        crate::helpers::adapter_http(),
        &format!("http://{addr}"),
        APP_ID.into(),
        Duration::from_secs(5),
    );
    let answer = check(&emis, "0f8fad5b-d9cb-469f-a165-70867728950e").await;
    server.abort();
    assert_eq!(answer.outcome, Outcome::Invalid(Reason::TokenRejected));
    assert_eq!(answer.evidence.message.as_deref(), Some("No user found for [REDACTED]"));
    assert!(!format!("{answer:?}").contains("0f8fad5b"));
}
