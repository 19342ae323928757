//! Traces: a real sweep against the simulator, exported over OTLP/HTTP (protobuf) to an
//! in-process receiver (an axum route decoding with `opentelemetry-proto`). The span tree,
//! the attributes, the link from an API request to the priority check it caused, the trace
//! id on log lines, that no attribute carries a user id or a token, and that a dead, absent
//! or stuck collector neither fails nor holds up a sweep while the export queue stays bounded.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use im1_revalidator::admin::{self, AdminState};
use im1_revalidator::metrics::Metrics;
use im1_revalidator::shutdown::Shutdown;
use im1_revalidator::sweep::schedule::Liveness;
use im1_revalidator::telemetry::{self, DispatchCell, TraceConfig, WithTraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use prost::Message;
use secrecy::SecretString;
use sqlx::PgPool;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

use crate::helpers::*;

/// What the receiver got: every span, with the resource attributes of its batch.
#[derive(Default)]
struct Received {
    spans: Mutex<Vec<Span>>,
    resources: Mutex<Vec<Vec<KeyValue>>>,
    requests: AtomicUsize,
    /// While open, every export request waits (a collector that has stopped answering).
    gate: Option<tokio::sync::Semaphore>,
}

async fn receive(State(received): State<Arc<Received>>, body: Bytes) -> StatusCode {
    received.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(gate) = &received.gate {
        // Closed means released: acquire then fails at once.
        let _ = gate.acquire().await;
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else { return StatusCode::BAD_REQUEST };
    for resource_spans in request.resource_spans {
        received.resources.lock().unwrap().push(resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
        for scope in resource_spans.scope_spans {
            received.spans.lock().unwrap().extend(scope.spans);
        }
    }
    StatusCode::OK
}

/// An OTLP/HTTP receiver on loopback; its `/v1/traces` endpoint.
async fn receiver(received: Arc<Received>) -> String {
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive)).with_state(received);
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1/traces")
}

fn config(endpoint: String, queue: usize, batch: usize) -> TraceConfig {
    TraceConfig {
        endpoint,
        sampler: telemetry::Sampling::Sdk(Sampler::AlwaysOn),
        max_queue_size: Some(queue),
        max_export_batch_size: Some(batch),
        scheduled_delay: None,
        // Longer than any test: a stuck export is only ever ended by the test releasing it.
        timeout: Some(Duration::from_secs(120)),
        service_name: "im1-revalidator-test",
    }
}

/// The provider, built off the async thread (the exporter builds a blocking HTTP client).
async fn provider(config: TraceConfig) -> SdkTracerProvider {
    tokio::task::spawn_blocking(move || telemetry::provider(&config)).await.unwrap().expect("provider builds")
}

/// Exports everything queued, off the async thread (the receiver runs on this one).
async fn flush(provider: &SdkTracerProvider) {
    let provider = provider.clone();
    tokio::task::spawn_blocking(move || provider.force_flush()).await.unwrap().expect("spans flushed");
}

async fn shut_down(provider: SdkTracerProvider) {
    tokio::task::spawn_blocking(move || {
        let _ = provider.shutdown_with_timeout(Duration::from_secs(1));
    })
    .await
    .unwrap();
}

/// Log lines written as the service writes them (JSON, with trace ids), kept in memory.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }
}

/// Counts the `check` spans the code creates (whether or not they are exported).
#[derive(Clone, Default)]
struct CountChecks(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> Layer<S> for CountChecks {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "check" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The subscriber `init` installs when tracing is on (JSON logs at info with trace ids, the
/// OpenTelemetry layer), as this thread's default. `#[sqlx::test]` runs a current-thread
/// runtime, so every task of the test is under it.
fn subscribe(provider: &SdkTracerProvider, logs: &Logs, checks: &CountChecks) -> tracing::subscriber::DefaultGuard {
    let cell = DispatchCell::default();
    let writer = logs.clone();
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .event_format(WithTraceId::new(telemetry::json_format(), cell.clone()))
        .with_writer(move || writer.clone())
        .with_filter(tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::registry()
        .with(fmt)
        .with(telemetry::layer(provider))
        .with(cell.layer())
        .with(checks.clone());
    tracing::subscriber::set_default(subscriber)
}

fn value(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().map(value).collect::<Vec<_>>().join(","),
        Some(any_value::Value::KvlistValue(kv)) => kv
            .values
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map(value).unwrap_or_default()))
            .collect(),
        Some(any_value::Value::BytesValue(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(value).unwrap_or_default())).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every string a span carries: name, attribute keys and values, events, links, status.
fn all_text(span: &Span) -> Vec<String> {
    let mut text = vec![span.name.clone(), span.trace_state.clone()];
    let kvs = span
        .attributes
        .iter()
        .chain(span.events.iter().flat_map(|e| e.attributes.iter()))
        .chain(span.links.iter().flat_map(|l| l.attributes.iter()));
    for kv in kvs {
        text.push(kv.key.clone());
        text.push(kv.value.as_ref().map(value).unwrap_or_default());
    }
    text.extend(span.events.iter().map(|e| e.name.clone()));
    text.extend(span.status.iter().map(|s| s.message.clone()));
    text
}

const TOKEN: &str = "rp-api-token-trace";

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_sweep_is_one_trace_of_claims_checks_requests_and_write_backs_without_user_ids_or_tokens(pool: PgPool) {
    let mut app = spawn_app(pool).await;
    // One retry, at once, so a flaky answer shows two requests under one check.
    app.vars.insert("IM1_RETRY_ATTEMPTS".into(), "1".into());
    app.vars.insert("IM1_RETRY_MAX_DELAY".into(), "0s".into());
    // Distinctive user ids and tokens, so any of them in an attribute is found.
    let users = [
        ("user-7c1e5a-valid", "tok-93f0b2-valid", vec!["valid"]),
        ("user-7c1e5a-strike", "tok-93f0b2-strike", vec!["not_registered"]),
        ("user-7c1e5a-flaky", "tok-93f0b2-flaky", vec!["server_error", "valid"]),
        ("user-7c1e5a-down", "tok-93f0b2-down", vec!["server_error"]),
        ("user-7c1e5a-asked", "tok-93f0b2-asked", vec!["valid"]),
    ];
    for (user, token, script) in &users {
        app.sim.script(token, steps(script));
        app.import(&[emis_line(user, token)]).await;
    }

    let received = Arc::new(Received::default());
    let provider = provider(config(receiver(received.clone()).await, 2048, 512)).await;
    let logs = Logs::default();
    let checks = CountChecks::default();
    let guard = subscribe(&provider, &logs, &checks);

    // An RP asks for a check of one credential through the API (its span is the link's
    // target), then the sweep makes it and every other.
    let settings = app.settings();
    let state = AdminState {
        pool: app.pool.clone(),
        metrics: Arc::new(Metrics::new()),
        liveness: Arc::new(Liveness::default()),
        clock: Arc::new(app.clock.clone()),
        recheck_interval: settings.recheck_interval,
        api_tokens: vec![SecretString::from(TOKEN)].into(),
        keys: Arc::new(settings.keys.clone().expect("keys configured")),
        rules: im1_revalidator::sweep::rules(&settings),
    };
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(admin::serve(listener, admin::router(state), Shutdown::never()));
    let asked = reqwest::Client::new()
        .post(format!("{base}/v1/credentials/user-7c1e5a-asked/check"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status().as_u16(), 202);

    let report = app.sweep().await;
    assert_eq!(report.checks, 5);
    drop(guard);
    flush(&provider).await;
    shut_down(provider).await;

    let spans = received.spans.lock().unwrap().clone();
    let by_name = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let ids: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let parent_name = |s: &Span| ids.get(&s.parent_span_id).map(|p| p.name.clone()).unwrap_or_default();

    // The API request: a root span of its own trace.
    let api = by_name("api.check");
    assert_eq!(api.len(), 1, "{:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    let api = api[0];
    assert_eq!(attrs(api)["http.route"], "/v1/credentials/{user_id}/check");

    // One sweep: the root of its trace, carrying the counts.
    let sweep = by_name("sweep");
    assert_eq!(sweep.len(), 1);
    let sweep = sweep[0];
    assert!(sweep.parent_span_id.is_empty(), "the sweep is a root span");
    let a = attrs(sweep);
    assert_eq!(a["checks"], "5");
    assert_eq!(a["result"], "completed");
    assert_eq!(a["outcomes.valid"], "3");
    assert_eq!(a["outcomes.suspect"], "1");
    assert_eq!(a["outcomes.transient"], "1");
    assert_eq!(a["trigger"], "command");

    // Claim batches under the sweep; checks under the claims; requests under the checks;
    // write-backs under the sweep. All in the sweep's trace.
    let claims = by_name("claim");
    assert!(!claims.is_empty());
    for c in &claims {
        assert_eq!(c.parent_span_id, sweep.span_id);
    }
    let check_spans = by_name("check");
    assert_eq!(check_spans.len(), 5);
    assert_eq!(checks.0.load(Ordering::SeqCst), 5);
    for c in &check_spans {
        assert_eq!(parent_name(c), "claim");
        assert_eq!(c.trace_id, sweep.trace_id);
        let a = attrs(c);
        assert_eq!(a["supplier"], "emis");
        assert_eq!(a["ods_code"], "A81001");
        assert_eq!(a["breaker"], "closed");
    }
    let outcome_of = |c: &&Span| attrs(c)["outcome"].clone();
    let strike = check_spans.iter().find(|c| outcome_of(c) == "suspect").expect("the first strike's check");
    assert_eq!(attrs(strike)["strike"], "first");
    assert_eq!(attrs(strike)["reason"], "not_registered");
    assert_eq!(attrs(strike)["attempts"], "1");
    let down = check_spans.iter().find(|c| outcome_of(c) == "transient").expect("the transient check");
    assert_eq!(down.status.as_ref().map(|s| s.code), Some(SpanStatus::Error as i32), "a transient check is an error");
    assert_eq!(attrs(down)["attempts"], "2");
    // Supplier requests are named `{method} {route}`, as OpenTelemetry names HTTP client spans.
    let requests: Vec<&Span> =
        spans.iter().filter(|s| attrs(s).contains_key("http.request.method") && s.name != "api.check").collect();
    assert!(
        requests.iter().any(|r| r.name == "POST /emis/sessions"),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for r in &requests {
        assert_eq!(parent_name(r), "check");
        let a = attrs(r);
        assert_eq!(a["http.request.method"], "POST");
        assert!(a["url.template"].starts_with("/emis/"), "{a:?}");
        assert!(a.contains_key("http.response.status_code"), "{a:?}");
        assert_eq!(a["breaker"], "closed");
    }
    // The flaky credential: one check, two requests to the check endpoint, retry 0 then 1,
    // 500 then 200; the 500 is an error.
    let flaky = check_spans
        .iter()
        .find(|c| attrs(c)["attempts"] == "2" && outcome_of(c) == "valid")
        .expect("the retried check");
    let mut tries: Vec<(String, String, Option<i32>)> = requests
        .iter()
        .filter(|r| r.parent_span_id == flaky.span_id && attrs(r)["url.template"] == "/emis/sessions")
        .map(|r| {
            (
                attrs(r)["retry"].clone(),
                attrs(r)["http.response.status_code"].clone(),
                r.status.as_ref().map(|s| s.code),
            )
        })
        .collect();
    tries.sort();
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!((tries[0].0.as_str(), tries[0].1.as_str()), ("0", "500"));
    assert_eq!(tries[0].2, Some(SpanStatus::Error as i32));
    assert_eq!((tries[1].0.as_str(), tries[1].1.as_str()), ("1", "200"));
    let writes = by_name("write_back");
    assert!(!writes.is_empty());
    assert_eq!(writes.iter().map(|w| attrs(w)["rows"].parse::<u64>().unwrap()).sum::<u64>(), 5);
    for w in &writes {
        assert_eq!(w.parent_span_id, sweep.span_id);
        assert_eq!(attrs(w)["lost"], "0");
    }

    // The priority check links to the API request that caused it.
    let priority: Vec<_> = check_spans.iter().filter(|c| attrs(c)["priority"] == "true").collect();
    assert_eq!(priority.len(), 1);
    assert_eq!(priority[0].links.len(), 1);
    assert_eq!(priority[0].links[0].trace_id, api.trace_id);
    assert_eq!(priority[0].links[0].span_id, api.span_id);

    // No user id and no token anywhere: names, attributes, events, links, status, resource.
    let secrets: Vec<&str> = users.iter().flat_map(|(u, t, _)| [*u, *t]).chain(["7c1e5a", "93f0b2", TOKEN]).collect();
    let resources = received.resources.lock().unwrap().clone();
    assert!(resources.iter().flatten().any(|kv| kv.key == "service.name"));
    let resource_text =
        resources.iter().flatten().map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map(value).unwrap_or_default()));
    for text in spans.iter().flat_map(all_text).chain(resource_text) {
        for secret in &secrets {
            assert!(!text.contains(secret), "span text {text:?} contains {secret:?}");
        }
    }
    // Spans carry no log events (their fields may name a user).
    assert!(spans.iter().all(|s| s.events.is_empty()));

    // Every log line inside the sweep carries its trace id, so logs and traces join.
    let trace_id = hex(&sweep.trace_id);
    let lines = logs.lines();
    let ours: Vec<_> = lines
        .iter()
        .filter(|l| {
            matches!(l["message"].as_str(), Some("sweep started" | "sweep finished" | "credential standing changed"))
        })
        .collect();
    assert!(ours.len() >= 3, "{lines:?}");
    for line in ours {
        assert_eq!(line["trace_id"].as_str(), Some(trace_id.as_str()), "{line}");
        assert!(line["span_id"].as_str().is_some_and(|s| s.len() == 16), "{line}");
    }
}

/// A sweep with tracing exporting to `endpoint`: it completes with the same report as
/// without, whatever the collector does.
async fn sweep_beside(
    app: &TestApp,
    provider: &SdkTracerProvider,
    users: usize,
) -> (im1_revalidator::sweep::SweepReport, usize) {
    let logs = Logs::default();
    let checks = CountChecks::default();
    let guard = subscribe(provider, &logs, &checks);
    let report = app.sweep().await;
    drop(guard);
    assert_eq!(report.checks, users as u64);
    assert_eq!(report.outcomes.get("valid").copied(), Some(users as u64));
    assert!(!report.interrupted);
    (report, checks.0.load(Ordering::SeqCst))
}

async fn import_valid(app: &TestApp, users: usize) {
    let lines: Vec<_> = (0..users).map(|i| emis_line(&format!("u{i:03}"), &format!("guid-{i:03}"))).collect();
    app.import(&lines).await;
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn an_absent_or_black_hole_collector_never_fails_a_sweep(pool: PgPool) {
    let app = spawn_app(pool).await;
    import_valid(&app, 30).await;

    // Absent: nothing listens on the port (connection refused).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let absent = provider(config(format!("http://127.0.0.1:{port}/v1/traces"), 64, 8)).await;
    sweep_beside(&app, &absent, 30).await;
    shut_down(absent).await;

    // A black hole: accepts connections and never answers. The sweep is the same.
    app.advance(chrono::TimeDelta::days(3));
    let hole = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = hole.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hole.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let black_hole = provider(config(format!("http://{addr}/v1/traces"), 64, 8)).await;
    sweep_beside(&app, &black_hole, 30).await;
    assert!(!held.lock().unwrap().is_empty(), "the exporter did try the black hole");
    shut_down(black_hole).await;
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_stuck_collector_holds_at_most_the_bounded_queue(pool: PgPool) {
    let app = spawn_app(pool).await;
    import_valid(&app, 40).await;
    // The collector takes the first export and does not answer it until released.
    let received = Arc::new(Received { gate: Some(tokio::sync::Semaphore::new(0)), ..Default::default() });
    let (queue, batch) = (16, 4);
    let provider = provider(config(receiver(received.clone()).await, queue, batch)).await;
    let (_, checks) = sweep_beside(&app, &provider, 40).await;
    // Each check is at least two spans (the check, its request): far more than the queue.
    assert!(2 * checks > queue + batch, "{checks}");
    // Release the collector and export what was kept.
    received.gate.as_ref().unwrap().close();
    flush(&provider).await;
    shut_down(provider).await;
    let spans = received.spans.lock().unwrap().clone();
    let unique: HashSet<Vec<u8>> = spans.iter().map(|s| s.span_id.clone()).collect();
    assert!(!unique.is_empty(), "the first batch arrived");
    assert!(
        unique.len() <= queue + batch,
        "{} spans were kept for a collector that was not answering; the queue holds {queue} and one export {batch}",
        unique.len()
    );
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn the_binary_exports_its_sweep_from_otel_variables_and_its_log_lines_carry_the_trace_id(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.emis_user("user-5d2b8f", &["valid"]).await;
    let received = Arc::new(Received::default());
    let endpoint = receiver(received.clone()).await;
    let base = endpoint.trim_end_matches("/v1/traces").to_owned();
    let env = binary_env(
        database_url(&pool),
        &app,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
            ("OTEL_SERVICE_NAME", "im1-trace-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test"),
        ],
    );
    let out = run_binary(&["sweep", "--json"], env.clone(), String::new()).await;
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 0, "{stderr}");
    // The process exported its spans before it exited.
    let spans = received.spans.lock().unwrap().clone();
    let sweep = spans.iter().find(|s| s.name == "sweep").expect("the sweep span was exported at exit");
    assert!(spans.iter().any(|s| s.name == "check" && s.trace_id == sweep.trace_id));
    let resources = received.resources.lock().unwrap().clone();
    let resource: HashMap<String, String> =
        resources[0].iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(value).unwrap_or_default())).collect();
    assert_eq!(resource["service.name"], "im1-trace-test");
    assert_eq!(resource["deployment.environment.name"], "test");
    for text in spans.iter().flat_map(all_text) {
        assert!(!text.contains("5d2b8f"), "{text}");
    }
    // Its JSON log lines inside the sweep carry the sweep's trace id.
    let finished = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "sweep finished")
        .unwrap_or_else(|| panic!("no `sweep finished` line in {stderr}"));
    assert_eq!(finished["trace_id"].as_str(), Some(hex(&sweep.trace_id).as_str()), "{finished}");

    // A value it cannot use stops it before any work, naming the variable.
    let mut bad = env;
    bad.push(("OTEL_TRACES_SAMPLER".into(), "sometimes".into()));
    let out = run_binary(&["sweep"], bad, String::new()).await;
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("OTEL_TRACES_SAMPLER"), "{stderr}");
}
