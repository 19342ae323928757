//! The simulator's control endpoints (`/_sim/...`) and its EMIS routes, driven over HTTP
//! with a plain reqwest client, as an RP developer or a demo script would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use im1_revalidator::simulator::{Behaviour, RunningSimulator, Scenario, Simulator, Step};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const APP_ID: &str = "control-test-app";

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder().timeout(Duration::from_secs(10)).build().expect("client builds")
}

async fn start(scenario: Scenario) -> (Simulator, RunningSimulator) {
    let sim = Simulator::new(scenario);
    let running = sim.spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("simulator binds");
    (sim, running)
}

async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.expect("body");
    serde_json::from_slice(&bytes).expect("JSON body")
}

async fn send_json(request: reqwest::RequestBuilder, body: Value) -> reqwest::Response {
    request.header("content-type", "application/json").body(body.to_string()).send().await.expect("request sent")
}

/// `POST /emis/sessions/endusersession`: a fresh end-user session id.
async fn end_user_session(client: &Client, running: &RunningSimulator) -> String {
    let response = client
        .post(format!("{}/sessions/endusersession", running.emis_url()))
        .header("X-API-ApplicationId", APP_ID)
        .header("X-API-Version", "2.1.0.0")
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    json_of(response).await["EndUserSessionId"].as_str().expect("an id").to_owned()
}

/// `POST /emis/sessions` for `guid`.
async fn emis_check(client: &Client, running: &RunningSimulator, session: &str, guid: &str) -> reqwest::Response {
    let request = client
        .post(format!("{}/sessions", running.emis_url()))
        .header("X-API-ApplicationId", APP_ID)
        .header("X-API-Version", "2.1.0.0")
        .header("X-API-EndUserSessionId", session);
    send_json(request, json!({"AccessIdentityGuid": guid, "NationalPracticeCode": "A12345"})).await
}

#[tokio::test]
async fn calls_are_counted_per_endpoint_and_token_and_reset() {
    let (_, running) = start(Scenario::default()).await;
    let client = client();
    let base = running.base_url();
    let calls = json_of(client.get(format!("{base}/_sim/calls")).send().await.expect("sent")).await;
    assert_eq!(
        calls,
        json!({
            "emis": {"end_user_session": 0, "sessions": 0, "session_rejections": 0},
            "tpp": {"authenticate": 0, "logoff": 0},
            "vision": {"get_configuration": 0},
        })
    );

    let session = end_user_session(&client, &running).await;
    for _ in 0..3 {
        let response = emis_check(&client, &running, &session, "guid-a").await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = json_of(response).await;
        assert!(body["SessionId"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
        assert_eq!(body["ApplicationLinkLevel"], "Linked");
        assert_eq!(body["UserPatientLinks"][0]["NationalPracticeCode"], "A12345");
    }
    assert_eq!(emis_check(&client, &running, "not-issued", "guid-b").await.status(), StatusCode::UNAUTHORIZED);

    let calls = json_of(client.get(format!("{base}/_sim/calls")).send().await.expect("sent")).await;
    assert_eq!(
        calls,
        json!({
            "emis": {"end_user_session": 1, "sessions": 4, "session_rejections": 1},
            "tpp": {"authenticate": 0, "logoff": 0},
            "vision": {"get_configuration": 0},
        })
    );
    let a = json_of(client.get(format!("{base}/_sim/calls/guid-a")).send().await.expect("sent")).await;
    assert_eq!(a, json!({"calls": 3}));
    let b = json_of(client.get(format!("{base}/_sim/calls/guid-b")).send().await.expect("sent")).await;
    assert_eq!(b, json!({"calls": 1}), "a rejected call still counts for its token");

    let reset = client.post(format!("{base}/_sim/reset")).send().await.expect("sent");
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    let calls = json_of(client.get(format!("{base}/_sim/calls")).send().await.expect("sent")).await;
    assert_eq!(calls["emis"]["sessions"], 0);
    let a = json_of(client.get(format!("{base}/_sim/calls/guid-a")).send().await.expect("sent")).await;
    assert_eq!(a, json!({"calls": 0}));
    running.shutdown().await;
}

#[tokio::test]
async fn token_scripts_are_set_replaced_and_removed() {
    let (sim, running) = start(Scenario::default()).await;
    let client = client();
    let base = running.base_url();
    let script = json!(["unavailable", {"behaviour": "rate_limited", "retry_after_secs": 7}, "not_registered"]);
    let response = send_json(client.put(format!("{base}/_sim/tokens/guid-s")), script).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let session = end_user_session(&client, &running).await;
    let first = emis_check(&client, &running, &session, "guid-s").await;
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.headers()["retry-after"], "30");
    let second = emis_check(&client, &running, &session, "guid-s").await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers()["retry-after"], "7");
    for _ in 0..2 {
        // The last step repeats.
        let third = emis_check(&client, &running, &session, "guid-s").await;
        assert_eq!(third.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = json_of(third).await;
        assert_eq!(body["InternalResponseCode"], -1030);
        assert!(body["Message"].as_str().unwrap_or_default().contains("NotRegistered"));
    }
    assert_eq!(sim.token_calls("guid-s"), 4);

    // Replacing a script starts from its first step again.
    let response = send_json(client.put(format!("{base}/_sim/tokens/guid-s")), json!(["no_user"])).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let body = json_of(emis_check(&client, &running, &session, "guid-s").await).await;
    assert_eq!(body["InternalResponseCode"], -1104);

    let response = client.delete(format!("{base}/_sim/tokens/guid-s")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(emis_check(&client, &running, &session, "guid-s").await.status(), StatusCode::OK);

    // An empty list removes a script too.
    sim.script("guid-t", vec![Step::new(Behaviour::Garbage)]);
    let response = send_json(client.put(format!("{base}/_sim/tokens/guid-t")), json!([])).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(emis_check(&client, &running, &session, "guid-t").await.status(), StatusCode::OK);

    // Bad scripts are refused with a reason.
    for bad in [json!(["vaild"]), json!({"behaviour": "valid"}), json!([{"behaviour": "valid", "delay": 3}])] {
        let response = send_json(client.put(format!("{base}/_sim/tokens/guid-u")), bad.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(json_of(response).await["error"].as_str().is_some(), "{bad}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn the_default_can_be_read_and_changed() {
    let (_, running) = start(Scenario::default()).await;
    let client = client();
    let base = running.base_url();
    let default = json_of(client.get(format!("{base}/_sim/default")).send().await.expect("sent")).await;
    assert_eq!(default, json!("valid"));

    let response = send_json(client.put(format!("{base}/_sim/default")), json!("proxy_html")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let session = end_user_session(&client, &running).await;
    let answer = emis_check(&client, &running, &session, "guid-anyone").await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/html"));

    let step = json!({"behaviour": "unavailable", "retry_after_secs": 90});
    let response = send_json(client.put(format!("{base}/_sim/default")), step.clone()).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let default = json_of(client.get(format!("{base}/_sim/default")).send().await.expect("sent")).await;
    assert_eq!(default, step);
    let answer = emis_check(&client, &running, &session, "guid-anyone").await;
    assert_eq!(answer.headers()["retry-after"], "90");

    let response = send_json(client.put(format!("{base}/_sim/default")), json!(42)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    running.shutdown().await;
}

#[tokio::test]
async fn outages_answer_503_without_retry_after() {
    let (_, running) = start(Scenario::default()).await;
    let client = client();
    let base = running.base_url();
    let session = end_user_session(&client, &running).await;

    let response = client.post(format!("{base}/_sim/outage/emis")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let answer = emis_check(&client, &running, &session, "guid-o").await;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers().get("retry-after").is_none());
    let eus = client
        .post(format!("{}/sessions/endusersession", running.emis_url()))
        .header("X-API-ApplicationId", APP_ID)
        .send()
        .await
        .expect("sent");
    assert_eq!(eus.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Other suppliers' outages do not touch EMIS.
    let response = client.delete(format!("{base}/_sim/outage/emis")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = client.post(format!("{base}/_sim/outage/tpp")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(emis_check(&client, &running, &session, "guid-o").await.status(), StatusCode::OK);

    let response = client.post(format!("{base}/_sim/outage/nhs")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(json_of(response).await["error"].as_str().is_some());
    running.shutdown().await;
}

#[tokio::test]
async fn expiring_sessions_rejects_every_issued_id() {
    let (sim, running) = start(Scenario::default()).await;
    let client = client();
    let base = running.base_url();
    let first = end_user_session(&client, &running).await;
    let second = end_user_session(&client, &running).await;
    assert_ne!(first, second);
    assert_eq!(emis_check(&client, &running, &first, "guid-e").await.status(), StatusCode::OK);

    let response = client.post(format!("{base}/_sim/emis/expire-sessions")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    for old in [&first, &second] {
        let answer = emis_check(&client, &running, old, "guid-e").await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(json_of(answer).await["Message"], "Missing or invalid EndUserSessionId");
    }
    let fresh = end_user_session(&client, &running).await;
    assert_eq!(emis_check(&client, &running, &fresh, "guid-e").await.status(), StatusCode::OK);
    assert_eq!(sim.calls().emis.session_rejections, 2);
    running.shutdown().await;
}

#[tokio::test]
async fn malformed_emis_requests_are_refused() {
    let (_, running) = start(Scenario::default()).await;
    let client = client();
    let session = end_user_session(&client, &running).await;

    // No application id.
    let response = send_json(
        client.post(format!("{}/sessions", running.emis_url())).header("X-API-EndUserSessionId", &session),
        json!({"AccessIdentityGuid": "g", "NationalPracticeCode": "A12345"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(json_of(response).await["InternalResponseCode"].is_number());
    let response = client.post(format!("{}/sessions/endusersession", running.emis_url())).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Not JSON, or the wrong shape.
    for body in ["{not json", r#"{"NationalPracticeCode": "A12345"}"#, "[]"] {
        let response = client
            .post(format!("{}/sessions", running.emis_url()))
            .header("X-API-ApplicationId", APP_ID)
            .header("X-API-EndUserSessionId", &session)
            .body(body)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn scenario_latency_injected_errors_and_token_counting() {
    let scenario = Scenario::from_json(
        r#"{"latency_ms": 150, "count_by_token": false, "tokens": {"guid-x": ["details_mismatch"]}}"#,
    )
    .expect("scenario parses");
    let (sim, running) = start(scenario).await;
    let client = client();
    let session = end_user_session(&client, &running).await;
    let started = Instant::now();
    let answer = emis_check(&client, &running, &session, "guid-x").await;
    assert!(started.elapsed() >= Duration::from_millis(150), "latency applies: {:?}", started.elapsed());
    assert_eq!(json_of(answer).await["InternalResponseCode"], -1106);
    assert_eq!(sim.token_calls("guid-x"), 0, "per-token counting is off");
    assert_eq!(sim.calls().emis.sessions, 1, "totals still count");
    running.shutdown().await;

    let (_, running) = start(Scenario { error_rate: 1.0, ..Scenario::default() }).await;
    let response = client
        .post(format!("{}/sessions/endusersession", running.emis_url()))
        .header("X-API-ApplicationId", APP_ID)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_none());
    running.shutdown().await;
}

#[tokio::test]
async fn shutdown_releases_hanging_answers() {
    let (sim, running) = start(Scenario::default()).await;
    sim.set_default(Behaviour::Hang);
    let client = client();
    let session = end_user_session(&client, &running).await;
    let url = running.emis_url();
    let hanging = tokio::spawn(async move {
        client
            .post(format!("{url}/sessions"))
            .header("X-API-ApplicationId", APP_ID)
            .header("X-API-EndUserSessionId", session)
            .body(r#"{"AccessIdentityGuid": "guid-h", "NationalPracticeCode": "A12345"}"#)
            .send()
            .await
            .map(|r| r.status())
    });
    // Wait until the request has arrived (polling a counter, not sleeping a guess).
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.token_calls("guid-h") == 0 && Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert_eq!(sim.token_calls("guid-h"), 1);
    let started = Instant::now();
    running.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    let status = hanging.await.expect("request task");
    assert_eq!(status.ok(), Some(StatusCode::SERVICE_UNAVAILABLE));
}
