//! Regression tests for the hostile-input probe (SECURITY.md, "Hostile input tried"): a
//! NUL in the path, connections that never finish a request, a byte-order mark in an
//! import, and metrics families present from the start. Through the binary or over real
//! HTTP on loopback; the timeouts are crossed on tokio's paused clock, never by sleeping.

use std::sync::Arc;
use std::time::Duration;

use im1_revalidator::admin::{self, AdminState, server};
use im1_revalidator::metrics::Metrics;
use im1_revalidator::shutdown::Shutdown;
use im1_revalidator::sweep::schedule::Liveness;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const API_TOKEN: &str = "hostile-api-token";

/// A `run` process killed if the test fails before stopping it, so a failed assertion
/// never leaves it holding the test database.
struct Running(Option<std::process::Child>);

impl Running {
    async fn stop(mut self) -> std::process::Output {
        stop_run(self.0.take().expect("running")).await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `request` on a new connection and reads until the server closes it.
async fn exchange(port: u16, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(answer)
}

async fn json_of(answer: reqwest::Response) -> Value {
    let text = answer.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON body expected: {text}"))
}

fn get_close(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").into_bytes()
}

/// Polls `path` with one-shot connections until it answers 200 (the process is starting,
/// or a slot is being freed), and returns that answer.
async fn wait_ready(port: u16, path: &str) -> String {
    for _ in 0..400 {
        if let Ok(answer) = exchange(port, &get_close(path)).await
            && answer.starts_with(b"HTTP/1.1 200")
        {
            return String::from_utf8_lossy(&answer).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} never answered 200");
}

/// Reads one whole answer (head and a `content-length` body) from a kept-alive connection.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed mid-answer: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_nul_or_overlong_user_id_is_refused_before_sql_never_a_500(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.emis_user("u1", &[]).await;
    let (port, child) = spawn_run_with(&pool, &app, "off", &[("IM1_API_TOKENS", API_TOKEN)]);
    let child = Running(Some(child));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_status(&client, &format!("{base}/readyz"), 200).await;

    let long = "x".repeat(129);
    let paths = ["%00", "u1%00", "a%00b", "%00%00%00", "%0A", &long];
    let mut bodies = Vec::new();
    for path in paths {
        for (method, suffix, body) in [
            ("GET", "", None),
            ("DELETE", "", None),
            ("POST", "/check", None),
            ("POST", "/check?wait=1s", None),
            ("POST", "/refresh-outcome", Some(json!({"outcome": "failed"}))),
        ] {
            let mut request = client
                .request(method.parse().unwrap(), format!("{base}/v1/credentials/{path}{suffix}"))
                .bearer_auth(API_TOKEN);
            if let Some(body) = body {
                request = request.header("content-type", "application/json").body(body.to_string());
            }
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            let body = json_of(answer).await;
            assert_eq!(status, 400, "{method} {path}{suffix}: {body}");
            assert_eq!(body["error"]["code"], "bad_path", "{method} {path}{suffix}: {body}");
            bodies.push(body.to_string());
        }
        // The PUT reports the user id with the body's fields, as a 422.
        let answer = client
            .put(format!("{base}/v1/credentials/{path}"))
            .bearer_auth(API_TOKEN)
            .header("content-type", "application/json")
            .body(
                json!({"supplier": "emis", "ods_code": "A81001", "token": {"access_identity_guid": "SECRET-G"}})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 422, "PUT {path}");
        let body = json_of(answer).await;
        assert_eq!(body["errors"][0]["field"], "user_id", "PUT {path}: {body}");
        bodies.push(body.to_string());
    }
    // A NUL or an over-long value inside a token field is a field error too.
    for guid in ["SECRET-\u{0}-NUL", &format!("SECRET-{}", "g".repeat(2000))] {
        let answer = client
            .put(format!("{base}/v1/credentials/u2"))
            .bearer_auth(API_TOKEN)
            .header("content-type", "application/json")
            .body(
                json!({"supplier": "emis", "ods_code": "A81001", "token": {"access_identity_guid": guid}}).to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 422);
        let body = json_of(answer).await;
        assert_eq!(body["errors"][0]["field"], "token.access_identity_guid", "{body}");
        bodies.push(body.to_string());
    }
    // The stored user is untouched and still served.
    let answer = client.get(format!("{base}/v1/credentials/u1")).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);

    let out = child.stop().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("internal error"), "{stderr}");
    for body in &bodies {
        assert!(!body.contains("SECRET"), "{body}");
    }
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn an_import_starting_with_a_byte_order_mark_is_read_and_says_so_once(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let lines = [emis_line("u1", "SECRET-BOM-1"), emis_line("u2", "SECRET-BOM-2"), emis_line("u3", "SECRET-BOM-3")];
    let file = format!("\u{FEFF}{}\r\n{}\r\n{}\r\n", lines[0], lines[1], lines[2]);
    let out = run_binary(&["credentials", "import", "-"], binary_env(database_url(&pool), &app, &[]), file).await;
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("3 new"), "{stdout}");
    assert_eq!(stderr.matches("byte-order mark").count(), 1, "{stderr}");
    assert!(!stdout.contains("SECRET") && !stderr.contains("SECRET"));
    assert_eq!(app.row("u1").await.status, "unchecked");

    // Only the very start is skipped: a mark starting a later line is that line's error.
    let file = format!("{}\n\u{FEFF}{}\n", emis_line("u4", "g4"), emis_line("u5", "g5"));
    let out = run_binary(&["credentials", "import", "-"], binary_env(database_url(&pool), &app, &[]), file).await;
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 2: line: is not valid JSON"), "{stderr}");
    assert!(!stderr.contains("byte-order mark"), "{stderr}");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_fresh_run_exports_every_contract_family_at_zero(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (port, child) = spawn_run(&pool, &app, "off");
    let child = Running(Some(child));
    let client = reqwest::Client::new();
    let text = wait_for_status(&client, &format!("http://127.0.0.1:{port}/metrics"), 200).await;
    let mut expected: Vec<String> = im1_revalidator::model::LastOutcome::ALL
        .iter()
        .map(|o| format!("im1_checks_total{{supplier=\"emis\",outcome=\"{}\"}} 0", o.as_str()))
        .collect();
    expected.extend(
        im1_revalidator::metrics::SKIP_REASONS
            .iter()
            .map(|why| format!("im1_rows_skipped_total{{supplier=\"emis\",why=\"{why}\"}} 0")),
    );
    for status in ["unchecked", "valid", "invalid"] {
        expected.push(format!("im1_credentials{{supplier=\"emis\",status=\"{status}\"}} 0"));
    }
    expected.extend(
        [
            "im1_credentials{supplier=\"microtest\",status=\"unsupported\"} 0",
            "im1_check_duration_seconds_count{supplier=\"emis\"} 0",
            "im1_refresh_required{supplier=\"emis\"} 0",
            "im1_credentials_unverified{supplier=\"emis\"} 0",
            "im1_supplier_circuit_open{supplier=\"emis\"} 0",
            "im1_invalidation_guard_held{supplier=\"emis\"} 0",
            "im1_supplier_config_errors_total{supplier=\"emis\"} 0",
            "im1_canary_failures_total{supplier=\"emis\"} 0",
            "im1_sweep_duration_seconds_count 0",
            "im1_last_sweep_success_timestamp_seconds 0.0",
            "im1_next_sweep_timestamp_seconds 0.0",
            "im1_admin_connections_refused_total 0",
            "im1_admin_requests_timed_out_total 0",
        ]
        .map(str::to_owned),
    );
    let lines: Vec<&str> = text.lines().collect();
    for series in &expected {
        assert!(lines.contains(&series.as_str()), "{series} missing from:\n{text}");
    }
    // Suppliers that are not configured get no check series.
    assert!(!text.contains("im1_checks_total{supplier=\"tpp\""), "{text}");
    child.stop().await;
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn connections_over_the_cap_are_refused_and_a_freed_slot_serves_again(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (port, child) = spawn_run_with(&pool, &app, "off", &[("IM1_ADMIN_MAX_CONNECTIONS", "3")]);
    let child = Running(Some(child));
    wait_ready(port, "/v1/openapi.json").await;
    // Three kept-alive connections, each answered once, hold the three slots. (A slot the
    // last one-shot poll still held is refused; that connection is simply tried again.)
    let mut held = Vec::new();
    while held.len() < 3 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(b"GET /v1/openapi.json HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await.unwrap();
        match &first {
            b"HTTP/1.1 200" => {
                read_answer(&mut stream).await;
                held.push(stream);
            }
            b"HTTP/1.1 503" => continue,
            other => panic!("unexpected answer {}", String::from_utf8_lossy(other)),
        }
        assert!(held.len() <= 3);
    }
    // A fourth gets 503 in the error shape, and is closed.
    let refused = String::from_utf8(exchange(port, b"").await.unwrap()).unwrap();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains(r#""code":"too_many_connections""#), "{refused}");
    // The held ones still work.
    held[0].write_all(b"GET /v1/openapi.json HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    assert!(read_answer(&mut held[0]).await.starts_with("HTTP/1.1 200"));
    // Closing one frees its slot (once the server has seen the close).
    drop(held.pop());
    wait_ready(port, "/v1/openapi.json").await;
    let metrics = wait_ready(port, "/metrics").await;
    let refusals = metrics
        .lines()
        .find_map(|l| l.strip_prefix("im1_admin_connections_refused_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("refusal counter");
    assert!(refusals >= 1, "{metrics}");
    drop(held);
    child.stop().await;
}

/// The admin router on loopback with `limits`, for the paused-clock tests (no database
/// call is made: `/v1/openapi.json` and `/healthz` read none).
async fn serve_paused(limits: server::Limits) -> u16 {
    let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://unused@127.0.0.1:1/unused").unwrap();
    let state = AdminState {
        pool,
        metrics: Arc::new(Metrics::new()),
        liveness: Arc::new(Liveness::default()),
        clock: im1_revalidator::clock::system(),
        recheck_interval: Duration::from_secs(86_400),
        api_tokens: vec![SecretString::from(API_TOKEN)].into(),
        keys: Arc::new(im1_revalidator::crypto::Keyring::parse(KEY_A).unwrap()),
        rules: im1_revalidator::sweep::rules(
            &im1_revalidator::config::Settings::from_vars(&Default::default()).unwrap(),
        ),
    };
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve_with(listener, admin::router(state), limits, Shutdown::never()));
    port
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_finishes_its_request_head_is_closed_at_the_header_timeout() {
    let limits = server::Limits { header_timeout: Duration::from_secs(10), ..Default::default() };
    let port = serve_paused(limits).await;

    // Half a request line, then nothing: closed when the header timeout runs out, not before.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let opened = tokio::time::Instant::now();
    slow.write_all(b"GET /v1/openapi.json HT").await.unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest).await;
    let held = opened.elapsed();
    assert!(held >= Duration::from_secs(10), "closed after {held:?}");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));

    // One that finishes its head within the timeout is answered.
    let mut patient = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    patient.write_all(b"GET /v1/openapi.json HT").await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    patient.write_all(b"TP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    assert!(read_answer(&mut patient).await.starts_with("HTTP/1.1 200"));

    // Idle after an answer (keep-alive): closed at the same timeout, counted from the answer.
    let answered = tokio::time::Instant::now();
    let mut after = Vec::new();
    let _ = patient.read_to_end(&mut after).await;
    assert!(answered.elapsed() >= Duration::from_secs(10), "idle connection closed after {:?}", answered.elapsed());
    assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));

    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let opened = tokio::time::Instant::now();
    let _ = silent.read_to_end(&mut Vec::new()).await;
    assert!(opened.elapsed() >= Duration::from_secs(10));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_request_stuck_behind_the_database_answers_503_and_a_long_poll_keeps_its_wait(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.emis_user("u1", &[]).await;
    // A check of this one never answers, so its priority request stays pending.
    app.emis_user("slow", &["hang"]).await;
    let (port, child) = spawn_run_with(
        &pool,
        &app,
        "off",
        &[("IM1_API_TOKENS", API_TOKEN), ("IM1_ADMIN_REQUEST_TIMEOUT", "1s"), ("IM1_SHUTDOWN_GRACE", "0s")],
    );
    let child = Running(Some(child));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_status(&client, &format!("{base}/readyz"), 200).await;

    // The table locked by another session: the read waits, and the request timeout answers.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE im1_credentials IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let answer = client.get(format!("{base}/v1/credentials/u1")).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    let body = json_of(answer).await;
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    lock.rollback().await.unwrap();
    let answer = client.get(format!("{base}/v1/credentials/u1")).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);

    // A check's wait, longer than the request timeout, is served in full: 202 when it ends.
    let answer =
        client.post(format!("{base}/v1/credentials/slow/check?wait=2s")).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 202);
    let body = json_of(answer).await;
    assert_eq!(body, json!({"status": "queued"}));
    app.sim.release_waiters();
    child.stop().await;
}
