//! The redaction proof: every command and every API path run with known tokens, and no
//! token text anywhere an operator or an RP could see it: stdout, stderr (debug logs
//! included), event rows and every other table's readable columns, metrics, API bodies
//! (errors included), and no panic. `Debug` of every token-bearing type prints a redaction.

use std::time::Duration;

use sqlx::PgPool;

use crate::helpers::*;

/// Token text that must never appear: each is a distinctive part of a stored token, plus
/// the encryption key and the API bearer token.
const SECRETS: &[&str] = &[
    "SECRET-RX-EMIS-OK",
    "SECRET-RX-EMIS-REVOKED",
    "SECRET-RX-EMIS-DOWN",
    "SECRET-RX-TPP-ACC",
    "SECRET-RX-TPP-PASS",
    "SECRET-RX-VIS-ROSU",
    "SECRET-RX-VIS-KEY",
    "SECRET-RX-BAD-LINE",
    "SECRET-RX-API-PUT",
    "SECRET-RX-API-422",
    "SECRET-RX-BEARER",
    // The key material of KEY_A (base64).
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
];

fn assert_clean(place: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{place} shows {secret}:\n{text}");
    }
    assert!(!text.contains("panicked"), "{place} shows a panic:\n{text}");
}

/// Method, path, authorization, body, the status it must answer.
type ApiCall = (reqwest::Method, String, Option<String>, Option<String>, u16);

fn import_file() -> String {
    [
        r#"{"user_id":"rx-ok","supplier":"emis","ods_code":"A81001","token":{"access_identity_guid":"SECRET-RX-EMIS-OK"}}"#,
        r#"{"user_id":"rx-revoked","supplier":"emis","ods_code":"A81001","token":{"access_identity_guid":"SECRET-RX-EMIS-REVOKED"}}"#,
        r#"{"user_id":"rx-down","supplier":"emis","ods_code":"A81001","token":{"access_identity_guid":"SECRET-RX-EMIS-DOWN"}}"#,
        r#"{"user_id":"rx-tpp","supplier":"tpp","ods_code":"B81001","token":{"account_id":"SECRET-RX-TPP-ACC","passphrase":"SECRET-RX-TPP-PASS"}}"#,
        r#"{"user_id":"rx-vision","supplier":"vision","ods_code":"C81001","token":{"rosu_account_id":"SECRET-RX-VIS-ROSU","api_key":"SECRET-RX-VIS-KEY"}}"#,
        // Bad lines: an unknown field next to a token, a token field in the wrong place.
        r#"{"user_id":"rx-bad","supplier":"emis","ods_code":"A81001","token":{"access_identity_guid":"SECRET-RX-BAD-LINE","extra":"SECRET-RX-BAD-LINE"}}"#,
        r#"{"user_id":"SECRET-RX-BAD-LINE","supplier":"emis","ods_code":"SECRET-RX-BAD-LINE","token":"SECRET-RX-BAD-LINE"}"#,
        r#"not json at all SECRET-RX-BAD-LINE"#,
    ]
    .join("\n")
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn no_command_api_path_table_or_metric_ever_shows_a_token(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.sim.script("SECRET-RX-EMIS-REVOKED", steps(&["not_registered"]));
    app.sim.script("SECRET-RX-EMIS-DOWN", steps(&["server_error"]));
    let (tpp, vision) = (app.running.tpp_url(), app.running.vision_url());
    let env = binary_env(
        database_url(&pool),
        &app,
        &[
            ("IM1_TPP_URL", &tpp),
            ("IM1_TPP_PROVIDER_ID", "provider"),
            ("IM1_VISION_URL", &vision),
            ("IM1_VISION_PROVIDER_ID", "provider"),
            ("IM1_CONFIRM_AFTER", "0s"),
            ("IM1_API_TOKENS", "SECRET-RX-BEARER"),
            ("RUST_LOG", "debug"),
        ],
    );

    let mut transcript = String::new();
    let mut command = async |args: &[&str], stdin: String, want: i32| {
        let (code, out, err) = outcome(&run_binary(args, env.clone(), stdin).await);
        assert_eq!(code, want, "{args:?}: {err}");
        assert_clean(&format!("{args:?}"), &format!("{out}\n{err}"));
        transcript.push_str(&out);
    };
    command(&["migrate"], String::new(), 0).await;
    command(&["check-config"], String::new(), 0).await;
    command(&["credentials", "import"], import_file(), 2).await;
    command(&["credentials", "import", "--skip-invalid"], import_file(), 0).await;
    command(&["credentials", "import", "--skip-invalid"], import_file(), 0).await;
    command(&["sweep", "--dry-run", "--json"], String::new(), 0).await;
    command(&["sweep"], String::new(), 0).await;
    command(&["recheck", "--all"], String::new(), 0).await;
    command(&["sweep", "--json"], String::new(), 0).await;
    command(&["status"], String::new(), 0).await;
    command(&["status", "--json"], String::new(), 0).await;
    command(&["recheck", "--user", "rx-ok"], String::new(), 0).await;
    command(&["credentials", "canary", "add", "rx-ok", "--note", "ops"], String::new(), 0).await;
    command(&["credentials", "canary", "list", "--json"], String::new(), 0).await;
    command(&["recheck", "--all"], String::new(), 0).await;
    command(&["sweep"], String::new(), 0).await;
    command(&["guard", "list", "--json"], String::new(), 0).await;
    command(&["guard", "discard", "--supplier", "emis"], String::new(), 0).await;
    assert!(transcript.contains("rx-ok"), "the commands did print their results");

    // The service and every API path, good and bad requests alike.
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (port, child) = spawn_run_with(&pool, &app, "off", &extra);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_status(&client, &format!("{base}/readyz"), 200).await;
    let bearer = "Bearer SECRET-RX-BEARER";
    let put = serde_json::json!({"supplier": "emis", "ods_code": "A81001",
                                  "token": {"access_identity_guid": "SECRET-RX-API-PUT"}});
    let bad_put = serde_json::json!({"supplier": "emis", "ods_code": "A81001",
                                      "token": {"access_identity_guid": "SECRET-RX-API-422", "oops": "SECRET-RX-API-422"}});
    let calls: Vec<ApiCall> = vec![
        (reqwest::Method::GET, "/v1/credentials/rx-ok".into(), Some(bearer.into()), None, 200),
        (reqwest::Method::GET, "/v1/credentials/rx-nobody".into(), Some(bearer.into()), None, 404),
        (reqwest::Method::PUT, "/v1/credentials/rx-api".into(), Some(bearer.into()), Some(put.to_string()), 201),
        (reqwest::Method::PUT, "/v1/credentials/rx-api".into(), Some(bearer.into()), Some(bad_put.to_string()), 422),
        (
            reqwest::Method::PUT,
            "/v1/credentials/rx-api".into(),
            Some(bearer.into()),
            Some("SECRET-RX-API-422 {".into()),
            400,
        ),
        (
            reqwest::Method::PUT,
            "/v1/credentials/rx-api".into(),
            Some("Bearer SECRET-RX-API-422".into()),
            Some(put.to_string()),
            401,
        ),
        (reqwest::Method::POST, "/v1/credentials/rx-api/check?wait=5s".into(), Some(bearer.into()), None, 200),
        (
            reqwest::Method::POST,
            "/v1/credentials/rx-revoked/refresh-outcome".into(),
            Some(bearer.into()),
            Some(r#"{"outcome": "SECRET-RX-API-422"}"#.into()),
            422,
        ),
        (
            reqwest::Method::POST,
            "/v1/credentials/rx-revoked/refresh-outcome".into(),
            Some(bearer.into()),
            Some(r#"{"outcome": "no_credentials"}"#.into()),
            204,
        ),
        (reqwest::Method::DELETE, "/v1/credentials/rx-api".into(), Some(bearer.into()), None, 204),
        (reqwest::Method::GET, "/v1/openapi.json".into(), None, None, 200),
        (reqwest::Method::GET, "/metrics".into(), None, None, 200),
        (reqwest::Method::GET, "/healthz".into(), None, None, 200),
    ];
    for (method, path, auth, body, want) in calls {
        let mut request = client.request(method.clone(), format!("{base}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        // Generous: this test is about what answers contain, never how fast they come, and
        // the whole suite (browser tests included) shares two cores.
        let response = request.timeout(Duration::from_secs(90)).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        assert_clean(&format!("{method} {path}"), &text);
    }
    let out = stop_run(child).await;
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("DEBUG") || stderr.contains("\"level\":\"DEBUG\""), "debug logs were on: {stderr}");
    assert_clean("run's output", &format!("{stdout}\n{stderr}"));

    // Every table an operator or an RP can read, as text.
    for table in [
        "im1_credential_status",
        "im1_credential_events",
        "im1_sweeps",
        "im1_supplier_state",
        "im1_held_verdicts",
        "im1_canaries",
        "im1_processes",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {table} t")))
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_clean(table, &rows.join("\n"));
    }
    // The credentials table holds ciphertext only.
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT encode(token_ciphertext, 'escape') FROM im1_credentials WHERE token_ciphertext IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!stored.is_empty());
    assert_clean("stored ciphertext", &stored.join("\n"));
}

#[test]
fn debug_of_every_token_bearing_type_is_redacted() {
    let line = r#"{"user_id":"u","supplier":"tpp","ods_code":"B81001","token":{"account_id":"SECRET-RX-TPP-ACC","passphrase":"SECRET-RX-TPP-PASS","provider_id":"SECRET-RX-VIS-KEY"}}"#;
    let credential = im1_revalidator::token::parse_import_line(line).expect("valid line");
    assert_clean("NewCredential", &format!("{credential:?} {credential:#?}"));
    let vars: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", "postgres://user:SECRET-RX-BEARER@db/im1"),
        ("IM1_ENCRYPTION_KEYS", KEY_A),
        ("IM1_API_TOKENS", "SECRET-RX-BEARER"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = im1_revalidator::config::Settings::from_vars(&vars).unwrap();
    assert_clean("Settings", &format!("{settings:?}"));
    let keys = settings.keys.as_ref().unwrap();
    assert_clean("Keyring", &format!("{keys:?}"));
    let sealed = keys.encrypt("u", &secrecy::SecretString::from("SECRET-RX-EMIS-OK"));
    let opened = keys.decrypt("u", &sealed).unwrap();
    assert_clean("decrypted plaintext", &format!("{opened:?}"));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_redirect_is_never_followed_so_the_token_goes_nowhere_else(pool: PgPool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let app = spawn_app(pool).await;
    // Anything that answers in the supplier's place with a redirect to a host of its own.
    let stolen = Arc::new(AtomicU64::new(0));
    let thief = {
        let stolen = stolen.clone();
        axum::Router::new().fallback(move || {
            let stolen = stolen.clone();
            async move {
                stolen.fetch_add(1, Ordering::Relaxed);
                "thanks"
            }
        })
    };
    let thief_listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let thief_addr = thief_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(thief_listener, thief).await });
    let redirector = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, format!("http://{thief_addr}/collect"))],
        )
    });
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, redirector).await });

    app.import(&[emis_line("u1", "SECRET-RX-REDIRECTED")]).await;
    let mut vars = app.vars.clone();
    vars.insert("IM1_EMIS_URL".into(), format!("http://{addr}/emis"));
    let report = sweep_with(&app.engine_with(&vars)).await;
    assert_eq!(report.outcomes.get("transient"), Some(&1), "{report:?}");
    assert_eq!(stolen.load(Ordering::Relaxed), 0, "the redirect was followed: the token went to another host");
    assert_eq!(app.row("u1").await.status, "unchecked");
}
