//! The simulator's control endpoints (`/_sim/...`) and its EMIS routes, driven over HTTP
//! with a plain reqwest client, as an RP developer or a demo script would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use im1_revalidator::model::Supplier;
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
    let all = json_of(client.get(format!("{base}/_sim/token-calls")).send().await.expect("sent")).await;
    assert_eq!(all, json!({"tokens": {"guid-a": 3, "guid-b": 1}}), "every token's count in one answer");

    let reset = client.post(format!("{base}/_sim/reset")).send().await.expect("sent");
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    let calls = json_of(client.get(format!("{base}/_sim/calls")).send().await.expect("sent")).await;
    assert_eq!(calls["emis"]["sessions"], 0);
    let a = json_of(client.get(format!("{base}/_sim/calls/guid-a")).send().await.expect("sent")).await;
    assert_eq!(a, json!({"calls": 0}));
    let all = json_of(client.get(format!("{base}/_sim/token-calls")).send().await.expect("sent")).await;
    assert_eq!(all, json!({"tokens": {}}));
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
async fn latency_can_be_read_and_changed_while_serving() {
    let (sim, running) = start(Scenario::from_json(r#"{"latency_ms": 40}"#).expect("scenario parses")).await;
    let client = client();
    let base = running.base_url();
    let latency = json_of(client.get(format!("{base}/_sim/latency")).send().await.expect("sent")).await;
    assert_eq!(latency, json!({"latency_ms": 40}));

    let response = send_json(client.put(format!("{base}/_sim/latency")), json!({"latency_ms": 300})).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.latency_ms(), 300);
    let session = end_user_session(&client, &running).await;
    let started = Instant::now();
    let answer = emis_check(&client, &running, &session, "guid-slow").await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300), "the new latency applies: {:?}", started.elapsed());

    for bad in [json!({"latency_ms": -1}), json!({"latency": 5}), json!("fast")] {
        let response = send_json(client.put(format!("{base}/_sim/latency")), bad.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(sim.latency_ms(), 300, "a refused change changes nothing");
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

/// `GET /_sim/calls/log/{supplier}`.
async fn call_log(client: &Client, running: &RunningSimulator, supplier: &str) -> Value {
    let response = client.get(format!("{}/_sim/calls/log/{supplier}", running.base_url())).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    json_of(response).await
}

fn times_of(log: &Value) -> Vec<f64> {
    log["times"].as_array().expect("times").iter().map(|t| t.as_f64().expect("seconds")).collect()
}

#[tokio::test]
async fn every_supplier_request_is_logged_with_its_arrival_time() {
    let (sim, running) = start(Scenario::default()).await;
    let client = client();
    let base = running.base_url();
    let started = Instant::now();

    // EMIS: an end-user session, a check, a rejected check and a malformed one.
    let session = end_user_session(&client, &running).await;
    assert_eq!(emis_check(&client, &running, &session, "guid-l").await.status(), StatusCode::OK);
    assert_eq!(emis_check(&client, &running, "not-issued", "guid-l").await.status(), StatusCode::UNAUTHORIZED);
    let bad = client.post(format!("{}/sessions", running.emis_url())).body("{not json").send().await.expect("sent");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    // TPP: Authenticate, Logoff, and a message of no known type.
    let auth = client
        .post(running.tpp_url())
        .header("type", "Authenticate")
        .body(r#"<Authenticate accountId="acc-l" passphrase="p" unitId="A81001" uuid="u-1"/>"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(auth.status(), StatusCode::OK);
    let suid = auth.headers().get("suid").and_then(|v| v.to_str().ok()).expect("a suid").to_owned();
    let logoff = client.post(running.tpp_url()).header("type", "Logoff").header("suid", suid).send().await;
    assert_eq!(logoff.expect("sent").status(), StatusCode::OK);
    let other = client.post(running.tpp_url()).header("type", "Nonsense").send().await.expect("sent");
    assert_eq!(other.status(), StatusCode::OK);
    // Vision: an unreadable request is still a request.
    let vision = client.post(running.vision_url()).body("not soap").send().await.expect("sent");
    assert_eq!(vision.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let elapsed = started.elapsed().as_secs_f64();

    // Control calls are not supplier requests.
    let _ = client.get(format!("{base}/_sim/calls")).send().await.expect("sent");
    let emis = call_log(&client, &running, "emis").await;
    assert_eq!(emis["supplier"], "emis");
    assert_eq!(emis["max_in_flight"], 1, "one request at a time");
    let times = times_of(&emis);
    assert_eq!(times.len(), 4, "{emis}");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in arrival order: {times:?}");
    assert!(times.iter().all(|t| *t >= 0.0 && *t <= elapsed + 1.0), "{times:?} within {elapsed}");
    assert_eq!(sim.call_times(Supplier::Emis), times);
    let tpp = call_log(&client, &running, "tpp").await;
    assert_eq!((tpp["supplier"].as_str(), times_of(&tpp).len()), (Some("tpp"), 3), "{tpp}");
    assert!(times_of(&tpp)[0] >= times[3], "TPP came after EMIS");
    let vision = call_log(&client, &running, "vision").await;
    assert_eq!(times_of(&vision).len(), 1, "{vision}");
    assert_eq!(sim.max_in_flight(Supplier::Vision), 1);
    let microtest = call_log(&client, &running, "microtest").await;
    assert_eq!(microtest, json!({"supplier": "microtest", "times": [], "max_in_flight": 0}));

    // An unknown supplier is refused like the other control endpoints' (404 with an error).
    let response = client.get(format!("{base}/_sim/calls/log/nhs")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(json_of(response).await["error"].as_str().is_some());
    // The per-token endpoint still answers a token spelled "log".
    let response = client.get(format!("{base}/_sim/calls/log")).send().await.expect("sent");
    assert_eq!(json_of(response).await, json!({"calls": 0}));

    // Reset clears the logs and the high-water marks.
    let reset = client.post(format!("{base}/_sim/reset")).send().await.expect("sent");
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    for supplier in ["emis", "tpp", "vision"] {
        let log = call_log(&client, &running, supplier).await;
        assert_eq!(log, json!({"supplier": supplier, "times": [], "max_in_flight": 0}));
    }
    // Times keep counting from the simulator's start, not from the reset.
    let _ = end_user_session(&client, &running).await;
    let after = sim.call_times(Supplier::Emis);
    assert_eq!(after.len(), 1);
    assert!(after[0] >= times[3], "{after:?} after {times:?}");
    running.shutdown().await;
}

#[tokio::test]
async fn the_most_requests_in_flight_counts_hanging_answers_until_released() {
    let (sim, running) = start(Scenario::default()).await;
    let client = client();
    let session = end_user_session(&client, &running).await;
    sim.set_default(Behaviour::Hang);
    let mut hanging = Vec::new();
    for i in 0..5 {
        let (client, running_url, session) = (client.clone(), running.emis_url(), session.clone());
        hanging.push(tokio::spawn(async move {
            client
                .post(format!("{running_url}/sessions"))
                .header("X-API-ApplicationId", APP_ID)
                .header("X-API-EndUserSessionId", session)
                .body(format!(r#"{{"AccessIdentityGuid": "guid-h{i}", "NationalPracticeCode": "A12345"}}"#))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    // Wait until all five are being served (polling, not sleeping a guess).
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.max_in_flight(Supplier::Emis) < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sim.max_in_flight(Supplier::Emis), 5);
    let log = call_log(&client, &running, "emis").await;
    assert_eq!(log["max_in_flight"], 5);
    assert_eq!(times_of(&log).len(), 6, "the end-user session and five checks");

    // Reset while they hang: the mark restarts from the five still in flight.
    sim.reset();
    assert_eq!(sim.max_in_flight(Supplier::Emis), 5);
    assert!(sim.call_times(Supplier::Emis).is_empty());

    sim.release_waiters();
    for task in hanging {
        assert_eq!(task.await.expect("request task").ok(), Some(StatusCode::SERVICE_UNAVAILABLE));
    }
    // Released answers are no longer in flight: after a reset the mark starts from zero,
    // and one more request at a time leaves it at one.
    sim.reset();
    assert_eq!(sim.max_in_flight(Supplier::Emis), 0);
    sim.set_default(Behaviour::Valid);
    assert_eq!(emis_check(&client, &running, &session, "guid-after").await.status(), StatusCode::OK);
    assert_eq!(sim.max_in_flight(Supplier::Emis), 1);
    assert_eq!(sim.max_in_flight(Supplier::Tpp), 0, "per supplier");
    running.shutdown().await;
}

#[tokio::test]
async fn a_hanging_request_the_client_abandons_is_no_longer_in_flight() {
    let (sim, running) = start(Scenario::default()).await;
    let session = end_user_session(&client(), &running).await;
    sim.set_default(Behaviour::Hang);
    // The service's HTTP timeout does this: it gives up and closes the connection.
    let impatient = Client::builder().timeout(Duration::from_millis(200)).build().expect("client builds");
    let answer = impatient
        .post(format!("{}/sessions", running.emis_url()))
        .header("X-API-ApplicationId", APP_ID)
        .header("X-API-EndUserSessionId", &session)
        .body(r#"{"AccessIdentityGuid": "guid-d", "NationalPracticeCode": "A12345"}"#)
        .send()
        .await;
    assert!(answer.is_err(), "the client timed out");
    drop(impatient);
    assert_eq!(sim.max_in_flight(Supplier::Emis), 1);
    // The server notices the closed connection and drops the handler; a reset then
    // restarts the mark from nothing in flight.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        sim.reset();
        if sim.max_in_flight(Supplier::Emis) == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.max_in_flight(Supplier::Emis), 0);
    running.shutdown().await;
}
