//! Logging and traces.
//!
//! Logs: tracing to stderr, JSON for machines, a human format on a terminal. Nothing that
//! holds a token implements `Display` in a way that reveals it, and no code path logs a
//! token; the redaction tests check the captured output.
//!
//! Traces: OpenTelemetry over OTLP/HTTP (protobuf), configured only by the standard
//! `OTEL_*` variables and off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. When off, no tracing layer is installed at
//! all, so spans cost what they cost before (a disabled callsite check). When on:
//!
//! - spans (never events) of this crate are exported: a log line's fields, which may name
//!   a user, never become span attributes. Span fields are chosen to carry no user id and
//!   no token (`tests/it/traces.rs` checks every attribute of a real sweep);
//! - finished spans go to a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048) that a
//!   background thread exports; a full queue drops spans, a slow or absent collector only
//!   delays that thread, never a check;
//! - every JSON log line inside a span carries `trace_id` and `span_id`, so logs and traces
//!   join.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
};
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The crate whose spans are exported (dependencies' spans are not).
const TARGET: &str = "im1_revalidator";

/// How long a process waits at exit for its last spans to be exported: a dead collector
/// delays the exit by at most this much, never a sweep.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// How traces are exported. [`TraceConfig::from_env`] reads the standard variables; tests
/// build one by hand.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// Full URL spans are posted to (`…/v1/traces`).
    pub endpoint: String,
    pub sampler: Sampling,
    /// The export queue's bound, spans per export, and the delay between exports; `None`
    /// leaves each to `OTEL_BSP_MAX_QUEUE_SIZE` (2048), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
    /// (512) and `OTEL_BSP_SCHEDULE_DELAY` (5 s), read by the SDK.
    pub max_queue_size: Option<usize>,
    pub max_export_batch_size: Option<usize>,
    pub scheduled_delay: Option<Duration>,
    /// Per export request (`OTEL_EXPORTER_OTLP_TIMEOUT`, `…_TRACES_TIMEOUT`; default 10 s).
    pub timeout: Option<Duration>,
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub service_name: &'static str,
}

impl TraceConfig {
    /// Reads `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, the `OTEL_BSP_*` queue settings
    /// and the export timeout. `Ok(None)` when no endpoint is set, or `OTEL_SDK_DISABLED=true`,
    /// or `OTEL_TRACES_EXPORTER=none`: tracing is off. A bad value is an error naming the
    /// variable. (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and
    /// `OTEL_EXPORTER_OTLP_HEADERS` are read by the SDK and exporter themselves.)
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<TraceConfig>, Vec<String>> {
        let get = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let mut problems = Vec::new();
        let endpoint = match (get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            // The signal's own variable is used as it is; the general one gets the path.
            (Some(url), _) => url,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            problems.push(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT: {endpoint:?} is not an http:// or https:// URL (OTLP over HTTP/protobuf only)"
            ));
        }
        if let Some(protocol) = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
            && protocol != "http/protobuf"
        {
            problems.push(format!("OTEL_EXPORTER_OTLP_PROTOCOL: {protocol:?} is not supported; only http/protobuf"));
        }
        let sampler = match sampler(get("OTEL_TRACES_SAMPLER").as_deref(), get("OTEL_TRACES_SAMPLER_ARG").as_deref()) {
            Ok(sampler) => sampler,
            Err(problem) => {
                problems.push(problem);
                Sampling::Sdk(Sampler::AlwaysOff)
            }
        };
        let timeout = match get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").or_else(|| get("OTEL_EXPORTER_OTLP_TIMEOUT")) {
            None => None,
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(_) => {
                    problems.push(format!("OTEL_EXPORTER_OTLP_TIMEOUT: {ms:?} is not a number of milliseconds"));
                    None
                }
            },
        };
        for name in ["OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_SCHEDULE_DELAY"] {
            if let Some(value) = get(name)
                && value.parse::<usize>().map_or(true, |n| n == 0)
            {
                problems.push(format!("{name}: {value:?} is not a positive whole number"));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        // The SDK reads OTEL_BSP_* itself (checked above so a typo is not silently ignored).
        Ok(Some(TraceConfig {
            endpoint,
            sampler,
            max_queue_size: None,
            max_export_batch_size: None,
            scheduled_delay: None,
            timeout,
            service_name: "im1-revalidator",
        }))
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument, as the specification names them. Unset is
/// `parentbased_always_on`.
fn sampler(name: Option<&str>, arg: Option<&str>) -> Result<Sampling, String> {
    let ratio = || -> Result<f64, String> {
        match arg {
            None => Ok(1.0),
            Some(text) => match text.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!("OTEL_TRACES_SAMPLER_ARG: {text:?} is not a ratio between 0 and 1")),
            },
        }
    };
    Ok(match name.unwrap_or("parentbased_always_on") {
        "always_on" => Sampling::Sdk(Sampler::AlwaysOn),
        "always_off" => Sampling::Sdk(Sampler::AlwaysOff),
        "parentbased_always_on" => Sampling::Sdk(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
        "parentbased_always_off" => Sampling::Sdk(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))),
        // A whole sweep is one trace, so a ratio over trace ids would keep all of a sweep or
        // none of it: the ratio applies to each check (and API request) instead.
        "traceidratio" | "parentbased_traceidratio" => Sampling::PerCheck(ratio()?),
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER: {other:?} is not one of always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
            ));
        }
    })
}

/// Which spans are kept.
#[derive(Debug, Clone)]
pub enum Sampling {
    /// One of the SDK's samplers (`always_on`, `always_off`, `parentbased_always_*`).
    Sdk(Sampler),
    /// `traceidratio` and `parentbased_traceidratio` with their ratio, applied per check.
    PerCheck(f64),
}

impl Sampling {
    fn boxed(&self) -> Box<dyn ShouldSample> {
        match self {
            Sampling::Sdk(sampler) => Box::new(sampler.clone()),
            Sampling::PerCheck(ratio) => Box::new(PerCheck { ratio: *ratio }),
        }
    }
}

/// The ratio sampler of this service. A sweep is one trace (sweep → claim batches → checks
/// → supplier requests, and write-backs), so sampling by trace id would keep a whole sweep
/// or nothing. Instead each `check` span, and each RP API request (`api.check`), is kept
/// with probability `ratio`, and everything under it follows it; the sweep's skeleton
/// (sweep, claim batches, write-backs, canaries: a few spans per thousand checks) is always
/// kept, so a kept check always has its parents. A priority check is always kept (its
/// request was the operator's reason to look). With ratio 0 nothing is kept.
#[derive(Debug, Clone)]
pub struct PerCheck {
    pub ratio: f64,
}

/// Spans that are a unit of work an operator follows: sampled one by one.
const SAMPLED_UNITS: [&str; 2] = ["check", "api.check"];

impl ShouldSample for PerCheck {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        _trace_id: TraceId,
        name: &str,
        _kind: &opentelemetry::trace::SpanKind,
        attributes: &[opentelemetry::KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let parent = parent.filter(|cx| cx.has_active_span()).map(|cx| cx.span().span_context().clone());
        let keep = match &parent {
            Some(p) if !p.is_sampled() => false,
            _ if self.ratio <= 0.0 => false,
            _ if SAMPLED_UNITS.contains(&name) => {
                let priority = attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "priority" && kv.value == opentelemetry::Value::Bool(true));
                priority || rand::random::<f64>() < self.ratio
            }
            _ => true,
        };
        SamplingResult {
            decision: if keep { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop },
            attributes: Vec::new(),
            trace_state: parent.map(|p| p.trace_state().clone()).unwrap_or_default(),
        }
    }
}

/// The tracer provider: an OTLP/HTTP protobuf exporter (reqwest, rustls with ring) behind a
/// batch processor whose queue is bounded. Builds the HTTP client, so call it outside an
/// async context or let the exporter build it on its own thread (it does).
pub fn provider(config: &TraceConfig) -> Result<SdkTracerProvider, String> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(config.endpoint.clone());
    if let Some(timeout) = config.timeout {
        exporter = exporter.with_timeout(timeout);
    }
    // No retries inside the exporter: a failed batch is dropped, the next one tried.
    let exporter = exporter
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the trace exporter: {e}"))?;
    let mut batch = BatchConfigBuilder::default();
    if let Some(n) = config.max_queue_size {
        batch = batch.with_max_queue_size(n);
    }
    if let Some(n) = config.max_export_batch_size {
        batch = batch.with_max_export_batch_size(n);
    }
    if let Some(delay) = config.scheduled_delay {
        batch = batch.with_scheduled_delay(delay);
    }
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch.build()).build();
    let env_names_service = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !env_names_service {
        resource = resource.with_service_name(config.service_name);
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(config.sampler.boxed())
        .with_resource(resource.build())
        .build())
}

/// The layer that turns this crate's spans into OpenTelemetry spans. Events are not
/// exported (their fields may name a user); errors set a span's status explicitly.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(TARGET))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_error_events_to_status(false)
        .with_error_events_to_exceptions(false)
        .with_error_fields_to_exceptions(false)
        .with_filter(filter_fn(|meta| meta.is_span() && meta.target().starts_with(TARGET)))
}

/// Keeps the tracer provider for the process's life; dropping it exports what is queued
/// (waiting at most `SHUTDOWN_TIMEOUT`, three seconds).
#[must_use = "dropping the guard stops trace export"]
pub struct Guard(Option<SdkTracerProvider>);

impl Guard {
    /// Whether traces are exported.
    pub fn tracing(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level. With an
/// OTLP endpoint configured, also exports traces; a bad `OTEL_*` value is an error naming it.
/// Call before the async runtime starts.
pub fn init(default_level: &str) -> Result<Guard, Vec<String>> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{default_level},sqlx=warn")));
    let config = TraceConfig::from_env(|name| std::env::var(name).ok())?;
    let Some(config) = config else {
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        // A second init (tests) is harmless: the first subscriber stays.
        let _ = if std::io::stderr().is_terminal() {
            builder.compact().try_init()
        } else {
            builder.json().flatten_event(true).with_current_span(false).try_init()
        };
        return Ok(Guard(None));
    };
    let provider = provider(&config).map_err(|e| vec![e])?;
    let dispatch = DispatchCell::default();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if std::io::stderr().is_terminal() {
        fmt.compact().boxed()
    } else {
        fmt.json().event_format(WithTraceId::new(json_format(), dispatch.clone())).boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(layer(&provider))
        .with(dispatch.layer())
        .try_init();
    Ok(Guard(Some(provider)))
}

/// The JSON line format the service uses (one object per line, event fields flattened).
pub fn json_format() -> Format<Json> {
    tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(false)
}

/// The dispatcher a subscriber runs under, caught when it is built, so the log formatter can
/// ask the OpenTelemetry layer for a span's trace id (from inside an event, the thread's
/// current dispatcher is not reachable).
#[derive(Clone, Default)]
pub struct DispatchCell(Arc<OnceLock<tracing::dispatcher::WeakDispatch>>);

impl DispatchCell {
    /// A layer that only records the dispatcher it is registered with.
    pub fn layer<S: Subscriber>(&self) -> impl Layer<S> + Send + Sync + 'static {
        CatchDispatch(self.clone())
    }

    fn get(&self) -> Option<tracing::Dispatch> {
        self.0.get().and_then(|weak| weak.upgrade())
    }
}

struct CatchDispatch(DispatchCell);

impl<S: Subscriber> Layer<S> for CatchDispatch {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = (self.0).0.set(subscriber.downgrade());
    }
}

/// A JSON event format with `"trace_id"` and `"span_id"` first on every line written
/// inside a span (nothing added outside one, or while tracing is off).
pub struct WithTraceId<F> {
    inner: F,
    dispatch: DispatchCell,
}

impl<F> WithTraceId<F> {
    pub fn new(inner: F, dispatch: DispatchCell) -> Self {
        WithTraceId { inner, dispatch }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.parent_span().and_then(|span| {
            let dispatch = self.dispatch.get()?;
            let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let sc = cx.span().span_context().clone();
            sc.is_valid().then_some(sc)
        });
        let Some(sc) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                write!(writer, "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}", sc.trace_id(), sc.span_id())
            }
            None => writer.write_str(&line),
        }
    }
}

/// The current span's W3C `traceparent`, when traces are on and it is sampled: stored with a
/// priority check so the check, in whichever process makes it, links back to the request.
pub fn current_traceparent() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled())
        .then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// Parses a W3C `traceparent` (version 00); None for anything else.
pub fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

/// Links `span` to the span a `traceparent` names (an API request that asked for a check).
pub fn link(span: &tracing::Span, traceparent: Option<&str>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let Some(sc) = traceparent.and_then(parse_traceparent)
        && !span.is_disabled()
    {
        span.add_link(sc);
    }
}

/// Marks `span` failed (OpenTelemetry status `Error`) with a short description that must
/// carry no user id or token.
pub fn set_error(span: &tracing::Span, description: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !span.is_disabled() {
        span.set_status(opentelemetry::trace::Status::error(description.to_owned()));
    }
}

#[cfg(test)]
mod tests;
