//! Trace settings from the OTEL_* variables, the per-check sampler, and traceparent parsing.
//! The spans of a real sweep, received over OTLP/HTTP, are checked in tests/it/traces.rs.

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> =
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned()
}

#[test]
fn off_without_an_endpoint_or_when_disabled() {
    assert!(TraceConfig::from_env(env(&[])).unwrap().is_none());
    assert!(TraceConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).unwrap().is_none());
    let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")];
    assert!(TraceConfig::from_env(env(&[on[0], ("OTEL_SDK_DISABLED", "true")])).unwrap().is_none());
    assert!(TraceConfig::from_env(env(&[on[0], ("OTEL_TRACES_EXPORTER", "none")])).unwrap().is_none());
    let config = TraceConfig::from_env(env(&on)).unwrap().unwrap();
    assert_eq!(config.endpoint, "http://collector:4318/v1/traces");
    let config =
        TraceConfig::from_env(env(&[on[0], ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c/x")])).unwrap().unwrap();
    assert_eq!(config.endpoint, "https://c/x");
}

#[test]
fn samplers_follow_the_specification_names() {
    let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/");
    let sampler_of = |pairs: &[(&str, &str)]| {
        let mut all = vec![base];
        all.extend_from_slice(pairs);
        format!("{:?}", TraceConfig::from_env(env(&all)).unwrap().unwrap().sampler)
    };
    assert_eq!(sampler_of(&[]), format!("{:?}", Sampling::Sdk(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))));
    assert_eq!(
        sampler_of(&[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.1")]),
        format!("{:?}", Sampling::PerCheck(0.1))
    );
    assert_eq!(sampler_of(&[("OTEL_TRACES_SAMPLER", "traceidratio")]), format!("{:?}", Sampling::PerCheck(1.0)));
    assert_eq!(
        sampler_of(&[("OTEL_TRACES_SAMPLER", "always_off")]),
        format!("{:?}", Sampling::Sdk(Sampler::AlwaysOff))
    );
}

fn decide(sampler: &PerCheck, parent: Option<bool>, name: &str, priority: bool) -> bool {
    use opentelemetry::trace::{SpanKind, TraceContextExt};
    let parent = parent.map(|sampled| {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let sc = SpanContext::new(TraceId::from(7), SpanId::from(9), flags, false, TraceState::default());
        opentelemetry::Context::new().with_remote_span_context(sc)
    });
    let attributes = [opentelemetry::KeyValue::new("priority", priority)];
    let result = sampler.should_sample(parent.as_ref(), TraceId::from(7), name, &SpanKind::Internal, &attributes, &[]);
    result.decision == SamplingDecision::RecordAndSample
}

#[test]
fn the_ratio_picks_checks_and_keeps_the_sweep_skeleton() {
    let none = PerCheck { ratio: 0.0 };
    let all = PerCheck { ratio: 1.0 };
    // The skeleton: roots and children of kept spans are kept at any ratio above 0.
    assert!(decide(&all, None, "sweep", false));
    assert!(decide(&all, Some(true), "claim", false));
    assert!(decide(&all, Some(true), "check", false));
    assert!(!decide(&none, None, "sweep", false));
    // A check is kept with the ratio's probability, a priority check always; what is
    // under a dropped span is dropped.
    assert!(!decide(&none, Some(true), "check", false));
    assert!(!decide(&PerCheck { ratio: 1e-12 }, Some(true), "check", false));
    assert!(decide(&PerCheck { ratio: 1e-12 }, Some(true), "check", true));
    assert!(!decide(&all, Some(false), "supplier.request", false));
    assert!(!decide(&all, Some(false), "check", true));
    let tenth = PerCheck { ratio: 0.1 };
    let kept = (0..10_000).filter(|_| decide(&tenth, Some(true), "check", false)).count();
    assert!((500..1500).contains(&kept), "{kept} of 10,000 checks kept at 0.1");
}

#[test]
fn bad_values_are_named() {
    let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    let problems = |pairs: &[(&str, &str)]| {
        let mut all = vec![base];
        all.extend_from_slice(pairs);
        TraceConfig::from_env(env(&all)).unwrap_err().join("\n")
    };
    assert!(problems(&[("OTEL_TRACES_SAMPLER", "sometimes")]).contains("OTEL_TRACES_SAMPLER:"));
    assert!(
        problems(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")])
            .contains("OTEL_TRACES_SAMPLER_ARG")
    );
    assert!(problems(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).contains("http/protobuf"));
    assert!(problems(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).contains("OTEL_BSP_MAX_QUEUE_SIZE"));
    assert!(problems(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).contains("OTEL_EXPORTER_OTLP_TIMEOUT"));
    let bad_url = TraceConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")])).unwrap_err();
    assert!(bad_url[0].contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{bad_url:?}");
}

#[test]
fn traceparents_round_trip_and_garbage_is_refused() {
    let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let sc = parse_traceparent(text).unwrap();
    assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    assert!(sc.is_sampled());
    for bad in [
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert!(parse_traceparent(bad).is_none(), "{bad}");
    }
}
