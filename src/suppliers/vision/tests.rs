//! The Vision table, row by row, against the pure classifier (prefix variants,
//! WS-Addressing noise, faults with and without codes, DTD refusal), the request envelope,
//! and a property test over random and mutated answers.

use super::*;
use rand::{Rng, SeedableRng};

const SECS_30: Option<Duration> = Some(Duration::from_secs(30));

fn classify(status: u16, body: &str) -> Answer {
    classify_configuration_answer(status, body.as_bytes(), None)
}

fn outcome(status: u16, body: &str) -> Outcome {
    classify(status, body).outcome
}

/// An envelope with WS-Addressing headers around `body`, with the given SOAP prefix.
fn envelope(soap: &str, extra_decl: &str, body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?><{s}:Envelope xmlns:{s}="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:wsa="http://www.w3.org/2005/08/addressing"{extra}><{s}:Header><wsa:Action>urn:vision/visionResponse</wsa:Action>"#,
            r#"<wsa:MessageID>urn:uuid:1</wsa:MessageID><wsa:RelatesTo>urn:uuid:2</wsa:RelatesTo></{s}:Header>"#,
            r#"<{s}:Body>{body}</{s}:Body></{s}:Envelope>"#
        ),
        s = soap,
        extra = extra_decl,
        body = body
    )
}

/// A `visionResponse` with prefix `p` ("" for the default namespace) declared on itself.
fn response(p: &str, successful: &str, error: Option<&str>, content: &str) -> String {
    let q = |n: &str| if p.is_empty() { n.to_owned() } else { format!("{p}:{n}") };
    let decl = if p.is_empty() { r#" xmlns="urn:vision""#.to_owned() } else { format!(r#" xmlns:{p}="urn:vision""#) };
    let error = error.map_or(String::new(), |code| {
        format!(
            "<{e}><{c}>{code}</{c}><{d}>Described</{d}><{g}>Diagnosed</{g}></{e}>",
            e = q("error"),
            c = q("code"),
            d = q("description"),
            g = q("diagnostic")
        )
    });
    format!(
        "<{r}{decl}><{x}>ignored</{x}><{sh}><{o}><{s}>{successful}</{s}>{error}</{o}></{sh}><{sc}>{content}</{sc}></{r}>",
        r = q("visionResponse"),
        x = q("unknownElement"),
        sh = q("serviceHeader"),
        o = q("outcome"),
        s = q("successful"),
        sc = q("serviceContent"),
    )
}

fn configuration(p: &str) -> String {
    let q = |n: &str| if p.is_empty() { n.to_owned() } else { format!("{p}:{n}") };
    format!("<{c}><{a}><{n}>Someone</{n}></{a}></{c}>", c = q("configuration"), a = q("account"), n = q("name"))
}

fn success(soap: &str, p: &str, successful: &str) -> String {
    envelope(soap, "", &response(p, successful, None, &configuration(p)))
}

fn coded(code: &str) -> String {
    envelope("soap", "", &response("vision", "false", Some(code), ""))
}

fn fault(faultcode: &str, vision_code: Option<&str>) -> String {
    let detail = vision_code.map_or(String::new(), |code| {
        format!(
            r#"<detail><v:visionFault xmlns:v="urn:vision"><v:error><v:category>Auth</v:category><v:code>{code}</v:code><v:text>Texted</v:text></v:error></v:visionFault></detail>"#
        )
    });
    envelope(
        "soap",
        "",
        &format!(
            "<soap:Fault><faultcode>{faultcode}</faultcode><faultstring>Stringed</faultstring>{detail}</soap:Fault>"
        ),
    )
}

#[test]
fn success_with_an_account_is_valid_whatever_the_prefixes() {
    for (soap, p) in [("soap", "vision"), ("s", "v"), ("SOAP-ENV", ""), ("soapenv", "x")] {
        for successful in ["true", "True", "TRUE", " true "] {
            let body = success(soap, p, successful);
            assert_eq!(outcome(200, &body), Outcome::Valid, "{body}");
        }
    }
    // Vision declared on the envelope rather than on visionResponse.
    let on_envelope = envelope(
        "soap",
        r#" xmlns:vision="urn:vision""#,
        &response("vision", "true", None, &configuration("vision")).replace(r#" xmlns:vision="urn:vision""#, ""),
    );
    assert_eq!(outcome(200, &on_envelope), Outcome::Valid);
    assert_eq!(classify(200, &on_envelope).evidence, Evidence::status(200));
}

#[test]
fn names_match_by_namespace_never_by_prefix() {
    // The `vision` prefix bound to another namespace is not Vision.
    let wrong_ns = success("soap", "vision", "true").replace("urn:vision", "urn:not-vision");
    assert_eq!(outcome(200, &wrong_ns), Outcome::transient());
    // A SOAP 1.2 envelope namespace is not the SOAP 1.1 one.
    let soap12 = success("soap", "vision", "true")
        .replace("http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope");
    assert_eq!(outcome(200, &soap12), Outcome::transient());
    // No namespace at all.
    let bare = "<Envelope><Body><visionResponse><serviceHeader><outcome><successful>true</successful></outcome></serviceHeader><serviceContent><configuration><account/></configuration></serviceContent></visionResponse></Body></Envelope>";
    assert_eq!(outcome(200, bare), Outcome::transient());
    // An undeclared prefix is malformed.
    assert_eq!(outcome(200, "<soap:Envelope><soap:Body/></soap:Envelope>"), Outcome::transient());
}

#[test]
fn success_without_an_account_or_not_successful_is_transient() {
    let no_account = envelope("soap", "", &response("vision", "true", None, "<vision:configuration/>"));
    let answer = classify(200, &no_account);
    assert_eq!(answer.outcome, Outcome::transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("no_account"));
    let not_successful = envelope("soap", "", &response("vision", "false", None, &configuration("vision")));
    assert_eq!(classify(200, &not_successful).evidence.detail.as_deref(), Some("no_outcome"));
    let yes = envelope("soap", "", &response("vision", "yes", None, &configuration("vision")));
    assert_eq!(outcome(200, &yes), Outcome::transient());
    // Valid needs HTTP 200.
    assert_eq!(outcome(500, &success("soap", "vision", "true")), Outcome::transient());
    // The account must be under serviceContent/configuration, not anywhere.
    let misplaced = envelope("soap", "", &response("vision", "true", None, "<vision:account/>"));
    assert_eq!(outcome(200, &misplaced), Outcome::transient());
}

#[test]
fn error_codes_follow_the_table_whatever_the_status() {
    for status in [200, 400, 500] {
        assert_eq!(outcome(status, &coded("-30")), Outcome::Invalid(Reason::TokenRejected));
        assert_eq!(outcome(status, &coded("-19")), Outcome::Invalid(Reason::AccessRevoked));
        assert_eq!(outcome(status, &coded(" -35 ")), Outcome::Invalid(Reason::AccessRevoked));
        for code in ["-15", "-100", "-1", "0", "30", "VZ201", ""] {
            assert!(matches!(outcome(status, &coded(code)), Outcome::Transient { .. }), "{status} {code}");
        }
    }
    let e = classify(200, &coded("-30")).evidence;
    assert_eq!(e.code.as_deref(), Some("-30"));
    assert_eq!(e.message.as_deref(), Some("Described — Diagnosed"));
    assert_eq!(e.http_status, Some(200));
    assert_eq!(classify(200, &coded("-15")).evidence.detail, None);
    assert_eq!(classify(200, &coded("-7")).evidence.detail.as_deref(), Some("unlisted_code"));
    // The same codes with other prefixes.
    let v = envelope("s", "", &response("v", "false", Some("-30"), ""));
    assert_eq!(outcome(200, &v), Outcome::Invalid(Reason::TokenRejected));
    let default_ns = envelope("SOAP-ENV", "", &response("", "false", Some("-19"), ""));
    assert_eq!(outcome(200, &default_ns), Outcome::Invalid(Reason::AccessRevoked));
}

#[test]
fn faults() {
    for code in ["wsse:InvalidSecurity", "wsse:InvalidSecurityToken", "soap:Client.InvalidSecurity"] {
        for status in [200, 500] {
            let answer = classify(status, &fault(code, None));
            assert_eq!(answer.outcome, Outcome::SupplierConfigError, "{code}");
            assert_eq!(answer.evidence.code.as_deref(), Some(code));
            assert_eq!(answer.evidence.message.as_deref(), Some("Stringed"));
        }
    }
    // A code in detail/visionFault/error is classified by the same table.
    assert_eq!(outcome(500, &fault("soap:Server", Some("-30"))), Outcome::Invalid(Reason::TokenRejected));
    assert_eq!(outcome(200, &fault("soap:Server", Some("-35"))), Outcome::Invalid(Reason::AccessRevoked));
    assert_eq!(outcome(500, &fault("soap:Server", Some("-15"))), Outcome::transient());
    let e = classify(500, &fault("soap:Server", Some("-30"))).evidence;
    assert_eq!((e.code.as_deref(), e.message.as_deref()), (Some("-30"), Some("Auth — Texted")));
    // InvalidSecurity wins over a code: it is about our signature, not the token.
    assert_eq!(outcome(500, &fault("wsse:InvalidSecurity", Some("-30"))), Outcome::SupplierConfigError);
    // A Client fault without a Vision code is our request refused as sent: our side,
    // never a verdict (the shape real Vision refuses an old-shaped header with).
    for code in ["soap:Client", "Client", "s:Client.Validation", "env:Sender"] {
        let answer = classify(500, &fault(code, None));
        assert_eq!(answer.outcome, Outcome::SupplierConfigError, "{code}");
        assert_eq!(answer.evidence.detail.as_deref(), Some("request_refused"), "{code}");
    }
    // ... but a Vision code in a Client fault still goes by the table.
    assert_eq!(outcome(500, &fault("soap:Client", Some("-30"))), Outcome::Invalid(Reason::TokenRejected));
    assert_eq!(outcome(500, &fault("soap:Client", Some("-15"))), Outcome::transient());
    // Names that only contain the word are not Client faults.
    assert_eq!(outcome(500, &fault("soap:ClientTimeout", None)), Outcome::transient());
    // Any other fault is transient.
    let answer = classify(500, &fault("soap:Server", None));
    assert_eq!(answer.outcome, Outcome::transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("soap_fault"));
    assert_eq!(answer.evidence.code.as_deref(), Some("soap:Server"));
    // A visionFault outside detail does not count.
    let loose = envelope(
        "soap",
        "",
        r#"<soap:Fault><faultcode>soap:Server</faultcode><v:visionFault xmlns:v="urn:vision"><v:error><v:code>-30</v:code></v:error></v:visionFault></soap:Fault>"#,
    );
    assert_eq!(outcome(500, &loose), Outcome::transient());
}

#[test]
fn anything_else_is_transient() {
    let cases: &[(u16, &str, &str)] = &[
        (200, "", "empty_body"),
        (200, "not xml", "unparseable"),
        (200, "<html><body>hi</body></html>", "not_a_soap_envelope"),
        (200, r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"/>"#, "not_a_soap_envelope"),
        (
            200,
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body/></soap:Envelope>"#,
            "no_vision_response",
        ),
        (403, "<html><head><title>403</title></head><body><br></body></html>", "unparseable"),
    ];
    for (status, body, detail) in cases {
        let answer = classify(*status, body);
        assert_eq!(answer.outcome, Outcome::transient(), "{body}");
        assert_eq!(answer.evidence.detail.as_deref(), Some(*detail), "{body}");
    }
    let truncated = success("soap", "vision", "true");
    let truncated = &truncated[..truncated.len() - 5];
    assert_eq!(classify(200, truncated).evidence.detail.as_deref(), Some("unparseable"));
}

#[test]
fn retry_after_is_kept_on_429_and_503_only() {
    for (status, want) in [(429, SECS_30), (503, SECS_30), (500, None), (200, None)] {
        let answer = classify_configuration_answer(status, b"<html>busy</html>", SECS_30);
        assert_eq!(answer.outcome, Outcome::Transient { retry_after: want }, "{status}");
    }
}

#[test]
fn dtds_xxe_and_billion_laughs_are_refused() {
    let valid = success("soap", "vision", "true");
    let body = valid.trim_start_matches(r#"<?xml version="1.0" encoding="utf-8"?>"#);
    let xxe = format!(r#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>{body}"#)
        .replace("Someone", "&xxe;");
    let answer = classify(200, &xxe);
    assert_eq!(answer.outcome, Outcome::transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("dtd_refused"));
    let laughs = format!(
        concat!(
            r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">"#,
            r#"<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]>{}"#
        ),
        body.replace("Someone", "&lol2;")
    );
    assert_eq!(classify(200, &laughs).evidence.detail.as_deref(), Some("dtd_refused"));
    // Without the DTD the entity is undeclared: malformed, never expanded.
    assert_eq!(classify(200, &body.replace("Someone", "&xxe;")).evidence.detail.as_deref(), Some("unparseable"));
    // Predefined entities, character references and CDATA are fine.
    let fine = body.replace("Someone", "&lt;&#65;&#x42;<![CDATA[<x>]]>");
    assert_eq!(outcome(200, &fine), Outcome::Valid);
}

fn header<'a>(ods: &'a str, rosu: &'a str, key: &'a str, provider: &'a str) -> ServiceHeader<'a> {
    ServiceHeader {
        id: Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap(),
        creation_time: "2026-12-01T10:00:00.734Z".parse().unwrap(),
        national_code: ods,
        rosu_account_id: rosu,
        api_key: key,
        provider_id: provider,
    }
}

/// The local names of an element's children, in order.
fn names(element: &Element) -> Vec<&str> {
    element.children.iter().map(|c| c.name.as_str()).collect()
}

#[test]
fn the_envelope_is_escaped_and_namespaced() {
    let envelope = configuration_envelope(&header("A<1", "ro<su>", "k&y\"'", "prov&"));
    let root = xml::parse(envelope.as_bytes()).expect("well formed");
    assert!(root.is(Some(SOAP_ENV), "Envelope"));
    assert!(root.child(Some(SOAP_ENV), "Header").is_some());
    let request = root.path(Some(SOAP_ENV), &["Body"]).and_then(|b| b.child(Some(VISION_NS), "visionRequest"));
    let request = request.expect("visionRequest");
    let text = |path: &[&str]| request.path(Some(VISION_NS), path).map(|e| e.text.clone());
    assert_eq!(text(&["serviceDefinition", "name"]).as_deref(), Some(SERVICE_NAME));
    assert_eq!(text(&["serviceDefinition", "version"]).as_deref(), Some(SERVICE_VERSION));
    assert_eq!(text(&["serviceHeader", "id"]).as_deref(), Some("0f8fad5b-d9cb-469f-a165-70867728950e"));
    // To the second, as im1-wire.md's example: the milliseconds are dropped.
    assert_eq!(text(&["serviceHeader", "creationTime"]).as_deref(), Some("2026-12-01T10:00:00"));
    assert_eq!(text(&["serviceHeader", "target", "nationalCode"]).as_deref(), Some("A<1"));
    assert_eq!(text(&["serviceHeader", "credentials", "rosuAccountId"]).as_deref(), Some("ro<su>"));
    assert_eq!(text(&["serviceHeader", "credentials", "apiKey"]).as_deref(), Some("k&y\"'"));
    assert_eq!(text(&["serviceHeader", "opsReference", "provider"]).as_deref(), Some("prov&"));
    assert_eq!(text(&["serviceHeader", "opsReference", "accountId"]).as_deref(), Some("prov&"));
    assert!(request.child(Some(VISION_NS), "serviceContent").is_some());

    // Every element in the Vision namespace, in the NHS App client's order; the old
    // shape's `odsCode` and `providerId` are gone.
    let service_header = request.child(Some(VISION_NS), "serviceHeader").expect("serviceHeader");
    assert_eq!(names(service_header), ["id", "creationTime", "target", "credentials", "opsReference"]);
    assert!(service_header.children.iter().all(|c| c.namespace.as_deref() == Some(VISION_NS)));
    let child = |name: &str| service_header.child(Some(VISION_NS), name).expect(name);
    assert_eq!(names(child("target")), ["nationalCode"]);
    assert_eq!(names(child("credentials")), ["rosuAccountId", "apiKey"]);
    assert_eq!(names(child("opsReference")), ["provider", "accountId"]);
    assert!(request.find(Some(VISION_NS), "odsCode").is_none());
    assert!(request.find(Some(VISION_NS), "providerId").is_none());
}

fn decisive(answer: &Answer) -> bool {
    !matches!(answer.outcome, Outcome::Transient { .. })
}

#[test]
fn random_and_mutated_answers_never_panic_nor_decide_wrongly() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5150);
    let samples = [
        success("soap", "vision", "true"),
        success("s", "v", "True"),
        coded("-30"),
        coded("-19"),
        fault("wsse:InvalidSecurity", None),
        fault("soap:Server", Some("-35")),
    ];
    for _ in 0..20_000 {
        let len = rng.random_range(0..300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
        let answer = classify_configuration_answer([200, 500][rng.random_range(0..2)], &bytes, None);
        assert!(!decisive(&answer), "random bytes decided: {bytes:?} → {answer:?}");
    }
    for _ in 0..20_000 {
        let sample = samples[rng.random_range(0..samples.len())].as_bytes();
        let cut = rng.random_range(0..sample.len());
        let answer = classify_configuration_answer(200, &sample[..cut], None);
        assert!(!decisive(&answer), "truncated answer decided: {:?}", String::from_utf8_lossy(&sample[..cut]));
        let mut mutated = sample.to_vec();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..mutated.len());
            mutated[i] = rng.random::<u8>();
        }
        let answer = classify_configuration_answer(200, &mutated, None);
        if decisive(&answer) {
            // A decision needs a well-formed SOAP 1.1 envelope with the listed shape.
            let root = xml::parse(&mutated).expect("a decision comes from well-formed XML");
            assert!(root.is(Some(SOAP_ENV), "Envelope"), "{:?}", String::from_utf8_lossy(&mutated));
            let body = root.child(Some(SOAP_ENV), "Body").expect("a Body");
            let shape = match &answer.outcome {
                Outcome::Valid => body
                    .child(Some(VISION_NS), "visionResponse")
                    .and_then(|r| r.path(Some(VISION_NS), &["serviceContent", "configuration", "account"]))
                    .is_some(),
                Outcome::Invalid(_) => {
                    matches!(answer.evidence.code.as_deref().map(str::trim), Some("-30" | "-19" | "-35"))
                }
                Outcome::SupplierConfigError => body.child(Some(SOAP_ENV), "Fault").is_some(),
                _ => false,
            };
            assert!(shape, "{:?} → {answer:?}", String::from_utf8_lossy(&mutated));
        }
    }
}
