//! The TPP table, row by row, against the pure classifier, plus the request bodies and a
//! property test over random and mutated answers.

use super::*;
use rand::{Rng, SeedableRng};

const SECS_30: Option<Duration> = Some(Duration::from_secs(30));

fn classify(status: u16, body: &str) -> Answer {
    classify_authenticate_answer(status, body.as_bytes(), None)
}

fn outcome(status: u16, body: &str) -> Outcome {
    classify(status, body).outcome
}

fn error_body(code: &str) -> String {
    format!(r#"<Error errorCode="{code}" userFriendlyMessage="Friendly" technicalMessage="Technical" uuid="x-1"/>"#)
}

const REPLY: &str = r#"<AuthenticateReply uuid="a" patientId="p"><User><Person/></User></AuthenticateReply>"#;

#[test]
fn authenticate_reply_is_valid() {
    assert_eq!(outcome(200, REPLY), Outcome::Valid);
    assert_eq!(outcome(200, "<AuthenticateReply/>"), Outcome::Valid);
    let with_decl = format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n{REPLY}\n");
    assert_eq!(outcome(200, &with_decl), Outcome::Valid);
    let answer = classify(200, REPLY);
    assert_eq!(answer.evidence, Evidence::status(200));
}

#[test]
fn error_codes_follow_the_table_whatever_the_status() {
    for status in [200, 400, 401, 403, 500, 503] {
        assert_eq!(outcome(status, &error_body("9")), Outcome::Invalid(Reason::TokenRejected), "{status}");
        assert_eq!(outcome(status, &error_body("6")), Outcome::Invalid(Reason::AccessRevoked), "{status}");
        assert_eq!(outcome(status, &error_body("5")), Outcome::SupplierConfigError, "{status}");
        for code in ["0", "3", "1", "42", "-9", "99999999999999999999", "nine", ""] {
            assert!(matches!(outcome(status, &error_body(code)), Outcome::Transient { .. }), "{status} {code}");
        }
    }
    // Whitespace around the code is tolerated; only errorCode is certain to be present.
    assert_eq!(outcome(200, r#"<Error errorCode=" 9 "/>"#), Outcome::Invalid(Reason::TokenRejected));
    assert_eq!(outcome(200, r#"<Error errorCode='6'></Error>"#), Outcome::Invalid(Reason::AccessRevoked));
    assert!(matches!(outcome(200, r#"<Error userFriendlyMessage="no code"/>"#), Outcome::Transient { .. }));
}

#[test]
fn error_evidence_quotes_code_and_message() {
    let e = classify(200, &error_body("9")).evidence;
    assert_eq!(e.http_status, Some(200));
    assert_eq!(e.code.as_deref(), Some("9"));
    assert_eq!(e.message.as_deref(), Some("Friendly"));
    assert_eq!(e.detail, None);
    let e =
        classify(500, r#"<Error errorCode="6" userFriendlyMessage=" " technicalMessage="Tech &amp; more"/>"#).evidence;
    assert_eq!(e.message.as_deref(), Some("Tech & more"));
    let e = classify(200, &error_body("42")).evidence;
    assert_eq!(e.detail.as_deref(), Some("unlisted_code"));
    let e = classify(200, &error_body("0")).evidence;
    assert_eq!((e.code.as_deref(), e.detail), (Some("0"), None));
}

#[test]
fn anything_else_is_transient() {
    let cases: &[(u16, &str, &str)] = &[
        (200, "<Acknowledgement/>", "unexpected_root"),
        (200, "<LogoffReply/>", "unexpected_root"),
        (200, "<ns:Error xmlns:ns=\"urn:x\" errorCode=\"9\"/>", "unexpected_root"),
        (200, "<AuthenticateReply>", "unparseable"),
        (200, "<AuthenticateReply></Other>", "unparseable"),
        (200, "<AuthenticateReply/><AuthenticateReply/>", "unparseable"),
        (200, "<AuthenticateReply/>trailing", "unparseable"),
        (200, "not xml", "unparseable"),
        (200, "{\"json\": true}", "unparseable"),
        (200, "", "empty_body"),
        (200, "   ", "empty_body"),
        (500, "<html><body>500</body></html>", "unexpected_root"),
        (403, "<html><head><title>403</title></head><body><h1>403 Forbidden</h1><br></body></html>", "unparseable"),
        (500, REPLY, "unexpected_status"),
        (201, REPLY, "unexpected_status"),
    ];
    for (status, body, detail) in cases {
        let answer = classify(*status, body);
        assert_eq!(answer.outcome, Outcome::transient(), "{status} {body}");
        assert_eq!(answer.evidence.detail.as_deref(), Some(*detail), "{status} {body}");
        assert_eq!(answer.evidence.http_status, Some(*status));
    }
    let answer = classify(404, "");
    assert_eq!((answer.outcome, answer.evidence.detail), (Outcome::transient(), None));
    let bytes = classify_authenticate_answer(200, b"\xff\xfe<\x00A", None);
    assert_eq!(bytes.outcome, Outcome::transient());
}

#[test]
fn retry_after_is_kept_on_429_and_503_only() {
    for (status, want) in [(429, SECS_30), (503, SECS_30), (500, None), (200, None), (400, None)] {
        let answer = classify_authenticate_answer(status, b"Too many requests", SECS_30);
        assert_eq!(answer.outcome, Outcome::Transient { retry_after: want }, "{status}");
    }
    // A 503 with an Error body that is transient keeps it too.
    let answer = classify_authenticate_answer(503, error_body("0").as_bytes(), SECS_30);
    assert_eq!(answer.outcome, Outcome::Transient { retry_after: SECS_30 });
}

#[test]
fn dtds_and_entities_are_refused() {
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE Error [<!ENTITY x SYSTEM "file:///etc/passwd">]><Error errorCode="9" userFriendlyMessage="&x;"/>"#;
    let answer = classify(200, xxe);
    assert_eq!(answer.outcome, Outcome::transient());
    assert_eq!(answer.evidence.detail.as_deref(), Some("dtd_refused"));
    let laughs = concat!(
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">"#,
        r#"<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">"#,
        r#"<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]>"#,
        r#"<AuthenticateReply uuid="&lol2;"/>"#
    );
    assert_eq!(classify(200, laughs).evidence.detail.as_deref(), Some("dtd_refused"));
    // Hidden after the root, or in lower case: still refused.
    assert_eq!(classify(200, "<AuthenticateReply/><!doctype x>").evidence.detail.as_deref(), Some("dtd_refused"));
    // An undeclared entity is not expanded: the document is malformed.
    let answer = classify(200, r#"<Error errorCode="9" userFriendlyMessage="&undeclared;"/>"#);
    assert_eq!(answer.outcome, Outcome::transient());
    // The predefined entities and character references are fine.
    let e = classify(200, r#"<Error errorCode="&#57;" userFriendlyMessage="&lt;a&gt; &#x41;&apos;&quot;"/>"#);
    assert_eq!(e.outcome, Outcome::Invalid(Reason::TokenRejected));
    assert_eq!(e.evidence.message.as_deref(), Some("<a> A'\""));
}

#[test]
fn deep_nesting_is_refused_without_overflow() {
    let deep = "<a>".repeat(200_000);
    assert_eq!(classify(200, &deep).outcome, Outcome::transient());
    let deep = format!("<AuthenticateReply>{}{}</AuthenticateReply>", "<a>".repeat(100), "</a>".repeat(100));
    assert_eq!(classify(200, &deep).outcome, Outcome::transient());
}

#[test]
fn request_bodies_escape_every_value() {
    let body = authenticate_body("u-1", "A&1", "acc\"<x>", "p'&ss", "prov<1>");
    let root = xml::parse(body.as_bytes()).expect("well formed");
    assert!(root.is(None, "Authenticate"));
    assert_eq!(root.attribute("apiVersion"), Some("1"));
    assert_eq!(root.attribute("uuid"), Some("u-1"));
    assert_eq!(root.attribute("unitId"), Some("A&1"));
    assert_eq!(root.attribute("accountId"), Some("acc\"<x>"));
    assert_eq!(root.attribute("passphrase"), Some("p'&ss"));
    let app = root.child(None, "Application").expect("Application");
    assert_eq!(app.attribute("name"), Some(APPLICATION_NAME));
    assert_eq!(app.attribute("version"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(app.attribute("providerId"), Some("prov<1>"));
    assert_eq!(app.attribute("deviceType"), Some("server"));
    let logoff = xml::parse(logoff_body("u-2", "B<2").as_bytes()).expect("well formed");
    assert!(logoff.is(None, "Logoff"));
    assert_eq!(logoff.attribute("unitId"), Some("B<2"));
    assert_eq!(logoff.attribute("apiVersion"), Some("1"));
}

/// Whether a classification is a verdict or valid (anything but transient).
fn decisive(answer: &Answer) -> bool {
    !matches!(answer.outcome, Outcome::Transient { .. })
}

#[test]
fn random_and_mutated_answers_never_panic_nor_decide_wrongly() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7070);
    let samples: Vec<String> = vec![REPLY.to_owned(), error_body("9"), error_body("6"), error_body("5")];
    for _ in 0..20_000 {
        let len = rng.random_range(0..200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
        let status = [200, 400, 500, 503][rng.random_range(0..4)];
        let answer = classify_authenticate_answer(status, &bytes, None);
        assert!(!decisive(&answer), "random bytes decided: {bytes:?} → {answer:?}");
    }
    for _ in 0..20_000 {
        let sample = &samples[rng.random_range(0..samples.len())];
        let bytes = sample.as_bytes();
        // Truncation: only the complete document may decide.
        let cut = rng.random_range(0..bytes.len());
        let answer = classify_authenticate_answer(200, &bytes[..cut], None);
        assert!(!decisive(&answer), "truncated answer decided: {:?}", String::from_utf8_lossy(&bytes[..cut]));
        // One to three random byte changes: a decision must still be a complete listed shape.
        let mut mutated = bytes.to_vec();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..mutated.len());
            mutated[i] = rng.random::<u8>();
        }
        let answer = classify_authenticate_answer(200, &mutated, None);
        if decisive(&answer) {
            let root = xml::parse(&mutated).expect("a decision comes from well-formed XML");
            let shape = match answer.outcome {
                Outcome::Valid => root.is(None, "AuthenticateReply"),
                Outcome::Invalid(Reason::TokenRejected) => {
                    root.is(None, "Error") && answer.evidence.code.as_deref() == Some("9")
                }
                Outcome::Invalid(Reason::AccessRevoked) => {
                    root.is(None, "Error") && answer.evidence.code.as_deref() == Some("6")
                }
                Outcome::SupplierConfigError => root.is(None, "Error") && answer.evidence.code.as_deref() == Some("5"),
                _ => false,
            };
            assert!(shape, "{:?} → {answer:?}", String::from_utf8_lossy(&mutated));
        }
    }
}
