//! The RP HTTP API over real HTTP: the admin router served on loopback against a real
//! database, a manual clock, and a real `PgListener` for notifications. Every token used
//! here contains `SECRET`, and no response body may.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::TimeDelta;
use im1_revalidator::admin::{self, AdminState, api};
use im1_revalidator::metrics::Metrics;
use im1_revalidator::shutdown::Shutdown;
use im1_revalidator::sweep::schedule::Liveness;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::helpers::*;

const TOKEN: &str = "rp-api-token-1";

/// The admin router of `app`, served on 127.0.0.1:0, and a client that keeps every
/// response body it saw.
struct Api {
    base: String,
    client: reqwest::Client,
    bodies: Arc<Mutex<Vec<String>>>,
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
}

impl Api {
    async fn serve(app: &TestApp, tokens: &[&str]) -> Api {
        let settings = app.settings();
        let state = AdminState {
            pool: app.pool.clone(),
            metrics: Arc::new(Metrics::new()),
            liveness: Arc::new(Liveness::default()),
            clock: Arc::new(app.clock.clone()),
            recheck_interval: settings.recheck_interval,
            api_tokens: tokens.iter().map(|t| SecretString::from(*t)).collect::<Vec<_>>().into(),
            keys: Arc::new(settings.keys.clone().expect("keys configured")),
            rules: im1_revalidator::sweep::rules(&settings),
        };
        let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(admin::serve(listener, admin::router(state), Shutdown::never()));
        Api { base, client: reqwest::Client::new(), bodies: Arc::default() }
    }

    /// A request with the right token; `body` is sent as application/json.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.raw(method, path, Some(&format!("Bearer {TOKEN}")), body.map(|b| b.to_string()), true).await
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<String>,
        json_content_type: bool,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        if let Some(body) = body {
            if json_content_type {
                request = request.header("content-type", "application/json");
            }
            request = request.body(body);
        }
        let response = request.send().await.expect("request answered");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("JSON body") };
        Answer { status, body, text }
    }

    /// No response so far carried token text.
    fn assert_no_token_text(&self) {
        for body in self.bodies.lock().unwrap().iter() {
            assert!(!body.contains("SECRET"), "token text in a response: {body}");
        }
    }
}

fn emis_body(guid: &str) -> Value {
    json!({"supplier": "emis", "ods_code": "A81001", "token": {"access_identity_guid": guid}})
}

fn error_code(answer: &Answer) -> &str {
    answer.body["error"]["code"].as_str().unwrap_or_else(|| panic!("error shape expected: {}", answer.text))
}

async fn make_invalid(pool: &PgPool, user: &str) {
    sqlx::query(
        "UPDATE im1_credentials SET status = 'invalid', reason = 'token_rejected', refresh_required = true, \
         last_outcome = 'invalid' WHERE user_id = $1",
    )
    .bind(user)
    .execute(pool)
    .await
    .unwrap();
}

async fn listener(pool: &PgPool) -> PgListener {
    let mut listener = PgListener::connect_with(pool).await.unwrap();
    listener.listen("im1_credential_status").await.unwrap();
    listener
}

async fn next_notification(listener: &mut PgListener) -> Value {
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.expect("a notification").unwrap();
    serde_json::from_str(n.payload()).unwrap()
}

async fn no_notification(listener: &mut PgListener) {
    let n = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(n.is_err(), "unexpected notification: {:?}", n.map(|r| r.map(|n| n.payload().to_owned())));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn without_api_tokens_every_credentials_route_is_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[emis_line("u1", "SECRET-G1")]).await;
    let api = Api::serve(&app, &[]).await;
    for (method, path) in [
        ("GET", "/v1/credentials/u1"),
        ("PUT", "/v1/credentials/u1"),
        ("DELETE", "/v1/credentials/u1"),
        ("POST", "/v1/credentials/u1/check"),
        ("POST", "/v1/credentials/u1/refresh-outcome"),
    ] {
        let a = api
            .raw(method, path, Some(&format!("Bearer {TOKEN}")), Some(emis_body("SECRET-G2").to_string()), true)
            .await;
        assert_eq!(a.status, 404, "{method} {path}");
        assert_eq!(error_code(&a), "not_found");
    }
    assert_eq!(app.row("u1").await.ods_code, "A81001", "nothing was erased");
    let a = api.raw("GET", api::OPENAPI, None, None, false).await;
    assert_eq!(a.status, 200);
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn bearer_tokens_missing_or_wrong_are_401_alike(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[emis_line("u1", "SECRET-G1")]).await;
    let api = Api::serve(&app, &["other-token", TOKEN]).await;
    let missing = api.raw("GET", "/v1/credentials/u1", None, None, false).await;
    let wrong = api.raw("GET", "/v1/credentials/u1", Some("Bearer rp-api-token-2"), None, false).await;
    let prefix = api.raw("GET", "/v1/credentials/u1", Some("Bearer rp-api"), None, false).await;
    let basic = api.raw("GET", "/v1/credentials/u1", Some(&format!("Basic {TOKEN}")), None, false).await;
    for a in [&missing, &wrong, &prefix, &basic] {
        assert_eq!(a.status, 401);
        assert_eq!(error_code(a), "unauthorized");
        assert_eq!(a.text, missing.text, "never says which part was wrong");
    }
    // Unauthorised writes change nothing.
    let put = api.raw("PUT", "/v1/credentials/u1", None, Some(emis_body("SECRET-G2").to_string()), true).await;
    assert_eq!(put.status, 401);
    let delete = api.raw("DELETE", "/v1/credentials/u1", Some("Bearer nope"), None, false).await;
    assert_eq!(delete.status, 401);
    assert_eq!(app.events("u1").await.len(), 1);

    let right = api.raw("GET", "/v1/credentials/u1", Some(&format!("bearer {TOKEN}")), None, false).await;
    assert_eq!(right.status, 200);
    let other = api.raw("GET", "/v1/credentials/u1", Some("Bearer other-token"), None, false).await;
    assert_eq!(other.status, 200);
    // The document needs no token.
    assert_eq!(api.raw("GET", api::OPENAPI, None, None, false).await.status, 200);
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn get_answers_the_status_row_or_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[emis_line("u1", "SECRET-G1")]).await;
    let api = Api::serve(&app, &[TOKEN]).await;
    let a = api.call("GET", "/v1/credentials/u1", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, serde_json::to_value(app.row("u1").await).unwrap());
    for column in [
        "user_id",
        "supplier",
        "ods_code",
        "status",
        "reason",
        "refresh_required",
        "refresh_attempts",
        "refresh_suppressed_until",
        "last_checked_at",
        "last_outcome",
        "last_verified_at",
        "invalidated_at",
        "next_check_at",
        "updated_at",
    ] {
        assert!(a.body.get(column).is_some(), "{column} missing");
    }
    let unknown = api.call("GET", "/v1/credentials/nobody", None).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(error_code(&unknown), "unknown_user");
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn put_stores_new_replaced_and_unchanged_tokens_with_events_and_notify(pool: PgPool) {
    let app = spawn_app(pool).await;
    let api = Api::serve(&app, &[TOKEN]).await;
    let mut listener = listener(&app.pool).await;

    let a = api.call("PUT", "/v1/credentials/u1", Some(emis_body("SECRET-G1"))).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["status"], "unchecked");
    assert_eq!(a.body["refresh_required"], false);
    assert_eq!(a.body["user_id"], "u1");
    assert_eq!(
        next_notification(&mut listener).await,
        json!({"user_id": "u1", "status": "unchecked", "refresh_required": false})
    );
    let events = app.events("u1").await;
    assert_eq!((events.len(), events[0].kind.as_str()), (1, "import"));

    app.advance(TimeDelta::hours(1));
    let same = api.call("PUT", "/v1/credentials/u1", Some(emis_body("SECRET-G1"))).await;
    assert_eq!(same.status, 200);
    assert_eq!(same.body, a.body, "the same token changes nothing");
    assert_eq!(app.events("u1").await.len(), 1);
    no_notification(&mut listener).await;

    let replaced = api.call("PUT", "/v1/credentials/u1", Some(emis_body("SECRET-G2"))).await;
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.body["next_check_at"], json!(t0() + TimeDelta::hours(1)));
    assert_eq!(app.events("u1").await.len(), 2);
    assert_eq!(app.events("u1").await[1].evidence["change"], "replaced");

    // Microtest is stored as by import: unsupported, no token.
    let m = api
        .call(
            "PUT",
            "/v1/credentials/m1",
            Some(json!({"supplier": "microtest", "ods_code": "M12345", "token": {"linkage_key": "SECRET-DUMMY"}})),
        )
        .await;
    assert_eq!(m.status, 201);
    assert_eq!(m.body["status"], "unsupported");
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn put_over_an_invalid_token_counts_one_refresh_attempt(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[emis_line("u1", "SECRET-G1")]).await;
    make_invalid(&app.pool, "u1").await;
    let api = Api::serve(&app, &[TOKEN]).await;
    let mut listener = listener(&app.pool).await;
    let a = api.call("PUT", "/v1/credentials/u1", Some(emis_body("SECRET-G2"))).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["status"], "unchecked");
    assert_eq!(a.body["refresh_required"], false);
    assert_eq!(a.body["refresh_attempts"], 1);
    assert_eq!(
        next_notification(&mut listener).await,
        json!({"user_id": "u1", "status": "unchecked", "refresh_required": false})
    );
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn bad_put_bodies_are_rejected_in_the_error_shape_and_store_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let api = Api::serve(&app, &[TOKEN]).await;
    let bad = api
        .call(
            "PUT",
            "/v1/credentials/u1",
            Some(json!({"supplier": "tpp", "ods_code": "a81001", "token": {"account_id": "SECRET-ACC",
                        "SECRET passphrase pasted as a key": "x"}, "extra": "SECRET-X"})),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    assert_eq!(error_code(&bad), "invalid_fields");
    let mut fields: Vec<&str> =
        bad.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    fields.sort();
    assert!(fields.contains(&"ods_code"), "{fields:?}");
    assert!(fields.contains(&"extra"), "{fields:?}");
    assert!(fields.contains(&"token.passphrase"), "{fields:?}");
    for e in bad.body["errors"].as_array().unwrap() {
        assert!(e["message"].is_string());
    }

    let a = api.call("PUT", "/v1/credentials/u1", Some(json!({"supplier": "nope"}))).await;
    assert_eq!(a.status, 422);
    let a = api.call("PUT", "/v1/credentials/u1", Some(json!(["SECRET-ARRAY"]))).await;
    assert_eq!(a.status, 422);
    let long_user = "x".repeat(129);
    let a = api.call("PUT", &format!("/v1/credentials/{long_user}"), Some(emis_body("SECRET-G"))).await;
    assert_eq!(a.status, 422);
    assert_eq!(a.body["errors"][0]["field"], "user_id");

    let auth = format!("Bearer {TOKEN}");
    let malformed = api.raw("PUT", "/v1/credentials/u1", Some(&auth), Some("{\"token\": SECRET".into()), true).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(error_code(&malformed), "malformed_json");
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep = api.raw("PUT", "/v1/credentials/u1", Some(&auth), Some(nested), true).await;
    assert_eq!(deep.status, 400);
    let huge = json!({"supplier": "emis", "ods_code": "A81001",
                      "token": {"access_identity_guid": format!("SECRET-{}", "g".repeat(70 * 1024))}});
    let too_big = api.raw("PUT", "/v1/credentials/u1", Some(&auth), Some(huge.to_string()), true).await;
    assert_eq!(too_big.status, 413);
    assert_eq!(error_code(&too_big), "body_too_large");
    let no_type =
        api.raw("PUT", "/v1/credentials/u1", Some(&auth), Some(emis_body("SECRET-G").to_string()), false).await;
    assert_eq!(no_type.status, 415);
    assert_eq!(error_code(&no_type), "unsupported_media_type");

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 0);
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn refresh_outcomes_count_attempts_up_to_exhaustion(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[emis_line("u1", "SECRET-G1")]).await;
    make_invalid(&app.pool, "u1").await;
    let api = Api::serve(&app, &[TOKEN]).await;
    let mut listener = listener(&app.pool).await;
    let path = "/v1/credentials/u1/refresh-outcome";

    for (n, outcome) in [(1, "no_credentials"), (2, "dummy_credentials")] {
        let a = api.call("POST", path, Some(json!({"outcome": outcome}))).await;
        assert_eq!(a.status, 204, "{}", a.text);
        let row = app.row("u1").await;
        assert_eq!((row.refresh_attempts, row.refresh_required, row.status.as_str()), (n, true, "invalid"));
        no_notification(&mut listener).await;
    }
    let a = api.call("POST", path, Some(json!({"outcome": "failed"}))).await;
    assert_eq!(a.status, 204);
    let row = app.row("u1").await;
    assert_eq!(row.status, "invalid");
    assert_eq!(row.reason.as_deref(), Some("refresh_exhausted"));
    assert!(!row.refresh_required);
    assert_eq!(row.refresh_attempts, 3);
    assert_eq!(row.refresh_suppressed_until, Some(t0() + TimeDelta::days(7)));
    assert_eq!(
        next_notification(&mut listener).await,
        json!({"user_id": "u1", "status": "invalid", "refresh_required": false})
    );
    let events: Vec<_> = app.events("u1").await.into_iter().filter(|e| e.kind == "refresh_outcome").collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].evidence["outcome"], "no_credentials");
    assert_eq!(events[2].evidence["outcome"], "failed");
    assert_eq!(events[2].to_status, "invalid");

    // Once the window is over, attempts start again from zero.
    app.advance(TimeDelta::days(7) + TimeDelta::seconds(1));
    let a = api.call("POST", path, Some(json!({"outcome": "failed"}))).await;
    assert_eq!(a.status, 204);
    let row = app.row("u1").await;
    assert_eq!((row.refresh_attempts, row.refresh_suppressed_until), (1, None));

    let bad = api.call("POST", path, Some(json!({"outcome": "SECRET-nope"}))).await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["errors"][0]["field"], "outcome");
    let missing = api.call("POST", path, Some(json!({}))).await;
    assert_eq!(missing.status, 422);
    let auth = format!("Bearer {TOKEN}");
    let malformed = api.raw("POST", path, Some(&auth), Some("{".into()), true).await;
    assert_eq!(malformed.status, 400);
    let unknown = api.call("POST", "/v1/credentials/nobody/refresh-outcome", Some(json!({"outcome": "failed"}))).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(error_code(&unknown), "unknown_user");
    assert_eq!(app.row("u1").await.refresh_attempts, 1, "rejected reports count nothing");
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn delete_erases_the_row_and_its_ciphertext_idempotently(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[emis_line("u1", "SECRET-G1"), emis_line("u2", "SECRET-G2")]).await;
    let api = Api::serve(&app, &[TOKEN]).await;
    let a = api.call("DELETE", "/v1/credentials/u1", None).await;
    assert_eq!(a.status, 204);
    assert!(a.text.is_empty());
    let left: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM im1_credentials ORDER BY user_id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(left, ["u2"]);
    let events = app.events("u1").await;
    let last = events.last().unwrap();
    assert_eq!((last.kind.as_str(), last.to_status.as_str()), ("erasure", "unchecked"));
    let dump: String = sqlx::query_scalar("SELECT coalesce(string_agg(t::text, ' '), '') FROM im1_credential_events t")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!dump.contains("SECRET"));
    assert_eq!(api.call("GET", "/v1/credentials/u1", None).await.status, 404);

    assert_eq!(api.call("DELETE", "/v1/credentials/u1", None).await.status, 204);
    assert_eq!(api.call("DELETE", "/v1/credentials/nobody", None).await.status, 204);
    assert_eq!(app.events("u1").await.len(), events.len(), "nothing more to record");
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn check_queues_refuses_microtest_and_validates_wait(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &["valid"]).await;
    app.import(&[json!({"user_id": "m1", "supplier": "microtest", "ods_code": "M12345",
                        "token": {"linkage_key": "dummy"}})])
        .await;
    let api = Api::serve(&app, &[TOKEN]).await;

    let a = api.call("POST", "/v1/credentials/u1/check", None).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.body, json!({"status": "queued"}));
    let requested: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT priority_requested_at FROM im1_credentials WHERE user_id = 'u1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(requested, Some(t0()));

    let bad = api.call("POST", "/v1/credentials/u1/check?wait=soon", None).await;
    assert_eq!(bad.status, 400);
    assert_eq!(error_code(&bad), "bad_wait");
    let started = std::time::Instant::now();
    let timed_out = api.call("POST", "/v1/credentials/u1/check?wait=200ms", None).await;
    assert_eq!(timed_out.status, 202, "nobody checked it");
    assert!(started.elapsed() >= Duration::from_millis(200));

    let m = api.call("POST", "/v1/credentials/m1/check", None).await;
    assert_eq!(m.status, 409);
    assert_eq!(error_code(&m), "not_checkable");
    let unknown = api.call("POST", "/v1/credentials/nobody/check?wait=1s", None).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(error_code(&unknown), "unknown_user");
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn check_with_wait_answers_the_fresh_row_once_a_sweep_checks_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &["valid"]).await;
    let api = Api::serve(&app, &[TOKEN]).await;
    let engine = app.engine();
    let sweep = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sweep_with(&engine).await
    });
    let a = api.call("POST", "/v1/credentials/u1/check?wait=5s", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "valid");
    assert_eq!(a.body["last_outcome"], "valid");
    assert_eq!(a.body, serde_json::to_value(app.row("u1").await).unwrap());
    assert_eq!(sweep.await.unwrap().checks, 1);
    api.assert_no_token_text();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn every_documented_route_is_served(pool: PgPool) {
    let app = spawn_app(pool).await;
    let api = Api::serve(&app, &[TOKEN]).await;
    let doc = api.raw("GET", api::OPENAPI, None, None, false).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body, serde_json::from_str::<Value>(api::OPENAPI_DOCUMENT).unwrap());
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, methods) in api::ROUTES {
        let item = &paths[*path];
        for method in *methods {
            assert!(item.get(*method).is_some(), "{method} {path} undocumented");
            let concrete = path.replace("{user_id}", "nobody");
            let body = matches!(*method, "put" | "post").then(|| json!({}));
            let a = api.call(&method.to_uppercase(), &concrete, body).await;
            // The router serves it: an answer from a handler, never axum's bare 404/405.
            assert_ne!(a.status, 405, "{method} {path}");
            if a.status == 404 {
                assert_eq!(error_code(&a), "unknown_user", "{method} {path}");
            }
        }
    }
    api.assert_no_token_text();
}

#[tokio::test]
async fn unknown_paths_and_methods_keep_the_error_shape() {
    // No database needed: neither answer reaches a handler.
    install_crypto();
    let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    let state = im1_revalidator::admin::AdminState {
        pool,
        metrics: std::sync::Arc::new(im1_revalidator::metrics::Metrics::new()),
        liveness: std::sync::Arc::new(im1_revalidator::sweep::schedule::Liveness::default()),
        clock: im1_revalidator::clock::system(),
        recheck_interval: std::time::Duration::from_secs(86_400),
        api_tokens: std::sync::Arc::from(vec![secrecy::SecretString::from("tok")]),
        keys: std::sync::Arc::new(im1_revalidator::crypto::Keyring::parse(KEY_A).unwrap()),
        rules: im1_revalidator::policy::Rules::new(
            std::time::Duration::from_secs(86_400),
            std::time::Duration::from_secs(900),
            3,
            std::time::Duration::from_secs(7 * 86_400),
        ),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, im1_revalidator::admin::router(state)).await });
    let client = reqwest::Client::new();
    let missing = client.get(format!("http://{addr}/no/such/path")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = serde_json::from_str(&missing.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let patch = client.patch(format!("http://{addr}/v1/credentials/u1")).bearer_auth("tok").send().await.unwrap();
    assert_eq!(patch.status(), 405);
    let body: serde_json::Value = serde_json::from_str(&patch.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
