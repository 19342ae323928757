//! Property-based fuzzing (proptest) of every parser that reads outside bytes: the import
//! line reader and line validation, the TPP and Vision XML classifiers (and the XML reader
//! under them), and the EMIS JSON classifiers. Inputs are both raw bytes and structured
//! answers with random mutations (truncation, inserted bytes), so the generators reach the
//! classifiers' rows, not only their "unparseable" exit.
//!
//! Properties beyond "never panics": an answer that does not parse is never a verdict; a
//! valid verdict needs HTTP 200; an invalid one needs the listed rejection in the body; an
//! import error never quotes a token; the line reader returns exactly the input's lines,
//! bounded. `PROPTEST_CASES=N` sets the cases per property (default below; CI runs the
//! default, `scripts/fuzz-parsers --long` a longer run).

use std::time::Duration;

use im1_revalidator::cli::import::{Line, MAX_LINE, read_bounded_line};
use im1_revalidator::suppliers::emis::{Classified, classify_end_user_session_answer, classify_session_answer};
use im1_revalidator::suppliers::tpp::classify_authenticate_answer;
use im1_revalidator::suppliers::vision::classify_configuration_answer;
use im1_revalidator::suppliers::{Outcome, xml};
use im1_revalidator::token::{parse_import_line, validate_ods_code, validate_user_id};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 1000;

fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config.failure_persistence = None;
    config
}

// ---- mutations shared by every structured generator ----

#[derive(Debug, Clone)]
enum Mutation {
    None,
    Truncate(usize),
    Insert(usize, u8),
    Flip(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => Just(Mutation::None),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => any::<usize>().prop_map(Mutation::Flip),
    ]
}

fn mutate(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let len = bytes.len().max(1);
    match *m {
        Mutation::None => {}
        Mutation::Truncate(at) => bytes.truncate(at % len),
        Mutation::Insert(at, b) => bytes.insert(at % (bytes.len() + 1), b),
        Mutation::Flip(at) if !bytes.is_empty() => {
            let i = at % bytes.len();
            bytes[i] ^= 0x20;
        }
        Mutation::Flip(_) => {}
    }
    bytes
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![200u16, 201, 204, 301, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504]),
        100u16..600,
    ]
}

fn retry_after() -> impl Strategy<Value = Option<Duration>> {
    prop::option::of((0u64..100_000).prop_map(Duration::from_secs))
}

/// Text that may carry XML-special and control characters.
fn wild_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["", " ", "9", "6", "-30", "true", "&amp;", "&lt;", "<", "&", "]]>", "\u{0}"])
            .prop_map(str::to_owned),
        "[ -~]{0,20}",
        any::<String>().prop_map(|s| s.chars().take(20).collect()),
    ]
}

// ---- the import line reader ----

/// A line's bytes: short and arbitrary (no `\n`), or a run right at the length bound.
fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..80),
        1 => (MAX_LINE - 2..=MAX_LINE + 2, any::<bool>()).prop_map(|(n, cr)| {
            let mut v = vec![b'x'; n];
            if cr {
                v[n - 1] = b'\r';
            }
            v
        }),
    ]
}

/// Reads every line of `input` through a buffer of `capacity` bytes (small buffers put
/// line ends and the bound across chunk edges).
fn read_all(input: &[u8], capacity: usize) -> Vec<Option<Vec<u8>>> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let mut reader = tokio::io::BufReader::with_capacity(capacity, input);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while let Some(line) = read_bounded_line(&mut reader, &mut buf).await.unwrap() {
            lines.push(match line {
                Line::Text(bytes) => Some(bytes.to_vec()),
                Line::TooLong => None,
            });
            assert!(buf.capacity() <= 2 * MAX_LINE, "the reader held more than the bound");
        }
        lines
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_line_reader_returns_exactly_the_input_lines_bounded(
        segments in prop::collection::vec(segment(), 0..6),
        trailing_newline in any::<bool>(),
        capacity in 1usize..300,
    ) {
        let mut input = segments.join(&b'\n');
        if trailing_newline && !segments.is_empty() {
            input.push(b'\n');
        }
        let lines = read_all(&input, capacity);
        // What the lines must be: split on '\n', a final empty piece is no line.
        let mut expected: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
        if expected.last().is_some_and(|l| l.is_empty()) {
            expected.pop();
        }
        prop_assert_eq!(lines.len(), expected.len());
        for (got, want) in lines.iter().zip(&expected) {
            if want.len() > MAX_LINE {
                prop_assert!(got.is_none(), "a line over the bound is TooLong");
            } else {
                let want = want.strip_suffix(b"\r").unwrap_or(want);
                prop_assert_eq!(got.as_deref(), Some(want));
            }
        }
    }

    #[test]
    fn import_lines_never_panic_and_never_quote_a_token(
        user in prop_oneof![Just(None), wild_text().prop_map(Some), Just(Some("u1".to_owned()))],
        supplier in prop::sample::select(vec!["emis", "tpp", "vision", "microtest", "EMIS", "", "x"]),
        ods in prop_oneof![Just("A81001".to_owned()), wild_text()],
        fields in prop::collection::vec(
            (prop::sample::select(vec!["access_identity_guid", "account_id", "passphrase", "provider_id",
                                       "rosu_account_id", "api_key", "SECRET-KEY", "x"]),
             prop_oneof![
                 "SECRET-[a-z0-9]{1,12}".prop_map(serde_json::Value::String),
                 Just(serde_json::json!(["SECRET-IN-ARRAY"])),
                 Just(serde_json::json!({"SECRET-NESTED": 1})),
                 Just(serde_json::json!(17)),
                 Just(serde_json::json!(null)),
                 Just(serde_json::json!("SECRET-\u{0}")),
             ]),
            0..4),
        token_as in prop::sample::select(vec!["object", "string", "missing"]),
        extra in any::<bool>(),
        m in mutation(),
    ) {
        let mut line = serde_json::Map::new();
        if let Some(user) = user {
            line.insert("user_id".into(), user.into());
        }
        line.insert("supplier".into(), supplier.into());
        line.insert("ods_code".into(), ods.into());
        let token: serde_json::Map<String, serde_json::Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        match token_as {
            "object" => { line.insert("token".into(), token.into()); }
            "string" => { line.insert("token".into(), "SECRET-AS-STRING".into()); }
            _ => {}
        }
        if extra {
            line.insert("SECRET-FIELD".into(), 1.into());
        }
        let bytes = mutate(serde_json::Value::Object(line).to_string().into_bytes(), &m);
        // The reader refuses invalid UTF-8 before parsing; the rest is parsed.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            match parse_import_line(text) {
                Ok(credential) => {
                    prop_assert!(validate_user_id(&credential.user_id).is_ok());
                    prop_assert!(validate_ods_code(&credential.ods_code).is_ok());
                }
                Err(problems) => {
                    prop_assert!(!problems.is_empty());
                    for p in &problems {
                        prop_assert!(!p.to_string().contains("SECRET"), "{} quotes input", p);
                    }
                }
            }
        }
    }

    #[test]
    fn import_lines_of_arbitrary_text_never_panic(text in any::<String>()) {
        if let Err(problems) = parse_import_line(&text) {
            prop_assert!(!problems.is_empty());
        }
    }
}

// ---- XML: TPP and Vision ----

/// A prefix for the SOAP and Vision namespaces, as suppliers vary them.
fn prefixes() -> impl Strategy<Value = (String, String)> {
    prop::sample::select(vec![("soap", "vision"), ("s", "v"), ("", ""), ("SOAP-ENV", "ns1")])
        .prop_map(|(a, b)| (a.to_owned(), b.to_owned()))
}

fn tpp_body() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop::sample::select(vec!["9", "6", "5", "0", "3", " 9 ", "-1", "x", "", "99999999999999999999"]),
            wild_text(),
        )
            .prop_map(|(code, msg)| format!(
                r#"<Error errorCode="{}" userFriendlyMessage="{}"/>"#,
                xml::escape(code),
                xml::escape(&msg)
            )),
        wild_text().prop_map(|t| format!("<AuthenticateReply><suid>{}</suid></AuthenticateReply>", xml::escape(&t))),
        wild_text()
            .prop_map(|t| format!("<{0}>{0}</{0}>", if t.is_empty() { "x".to_owned() } else { "Other".to_owned() })),
        Just(r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Error errorCode="9">&e;</Error>"#.to_owned()),
        (1usize..3000).prop_map(|n| format!("{}{}", "<a>".repeat(n), "</a>".repeat(n))),
    ]
}

fn vision_body() -> impl Strategy<Value = String> {
    let envelope = |(soap, vision): (String, String), inner: String| {
        let (sp, vp) = (
            if soap.is_empty() { String::new() } else { format!("{soap}:") },
            if vision.is_empty() { String::new() } else { format!("{vision}:") },
        );
        let sdecl = if soap.is_empty() { "xmlns".to_owned() } else { format!("xmlns:{soap}") };
        let vdecl = if vision.is_empty() { "xmlns".to_owned() } else { format!("xmlns:{vision}") };
        let inner = inner.replace("{v}", &vp).replace("{s}", &sp);
        if soap.is_empty() {
            // One default namespace cannot be both: the Vision parts get their own.
            format!(
                r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body>{}</Body></Envelope>"#,
                inner.replace("<visionResponse>", r#"<visionResponse xmlns="urn:vision">"#)
            )
        } else {
            format!(
                r#"<{sp}Envelope {sdecl}="http://schemas.xmlsoap.org/soap/envelope/" {vdecl}="urn:vision"><{sp}Body>{inner}</{sp}Body></{sp}Envelope>"#
            )
        }
    };
    prop_oneof![
        (prefixes(), any::<bool>(), any::<bool>()).prop_map(move |(p, ok, account)| envelope(
            p,
            format!(
                "<{{v}}visionResponse><{{v}}serviceHeader><{{v}}outcome><{{v}}successful>{}</{{v}}successful></{{v}}outcome></{{v}}serviceHeader><{{v}}serviceContent><{{v}}configuration>{}</{{v}}configuration></{{v}}serviceContent></{{v}}visionResponse>",
                if ok { "true" } else { "false" },
                if account { "<{v}account/>" } else { "" }
            )
        )),
        (prefixes(), prop::sample::select(vec!["-30", "-19", "-35", "-15", "-100", "7", "", "x", " -30 "]), wild_text())
            .prop_map(move |(p, code, d)| envelope(
                p,
                format!(
                    "<{{v}}visionResponse><{{v}}serviceHeader><{{v}}outcome><{{v}}successful>false</{{v}}successful><{{v}}error><{{v}}code>{}</{{v}}code><{{v}}description>{}</{{v}}description></{{v}}error></{{v}}outcome></{{v}}serviceHeader></{{v}}visionResponse>",
                    xml::escape(code),
                    xml::escape(&d)
                )
            )),
        (prefixes(), prop::sample::select(vec!["wsse:InvalidSecurity", "soap:Server", "", "Client"]),
         prop::sample::select(vec!["-30", "-35", "1", ""]))
            .prop_map(move |(p, fc, code)| envelope(
                p,
                format!(
                    "<{{s}}Fault><faultcode>{}</faultcode><faultstring>f</faultstring><detail><{{v}}visionFault><{{v}}error><{{v}}code>{}</{{v}}code></{{v}}error></{{v}}visionFault></detail></{{s}}Fault>",
                    fc, code
                )
            )),
        tpp_body(),
    ]
}

/// An answer that does not parse as XML is never a verdict; Valid needs 200.
fn check_xml_answer(status: u16, body: &[u8], outcome: &Outcome) -> Result<(), TestCaseError> {
    if xml::parse(body).is_err() {
        prop_assert!(matches!(outcome, Outcome::Transient { .. }), "unparseable body gave {:?}", outcome);
    }
    if *outcome == Outcome::Valid {
        prop_assert_eq!(status, 200);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tpp_answers_are_classified_without_panics_and_only_listed_rejections_invalidate(
        status in status(), body in tpp_body(), m in mutation(), retry_after in retry_after(),
    ) {
        let body = mutate(body.into_bytes(), &m);
        let answer = classify_authenticate_answer(status, &body, retry_after);
        check_xml_answer(status, &body, &answer.outcome)?;
        if let Outcome::Invalid(_) = answer.outcome {
            let root = xml::parse(&body).expect("a verdict came from a parsed body");
            prop_assert!(root.is(None, "Error"));
            let code = root.attribute("errorCode").map(str::trim).and_then(|c| c.parse::<i64>().ok());
            prop_assert!(matches!(code, Some(9 | 6)), "invalid from code {:?}", code);
        }
        prop_assert_eq!(classify_authenticate_answer(status, &body, retry_after), answer, "deterministic");
    }

    #[test]
    fn vision_answers_are_classified_without_panics_and_only_listed_rejections_invalidate(
        status in status(), body in vision_body(), m in mutation(), retry_after in retry_after(),
    ) {
        let body = mutate(body.into_bytes(), &m);
        let answer = classify_configuration_answer(status, &body, retry_after);
        check_xml_answer(status, &body, &answer.outcome)?;
        if let Outcome::Invalid(_) = answer.outcome {
            let code = answer.evidence.code.as_deref().map(str::trim).and_then(|c| c.parse::<i64>().ok());
            prop_assert!(matches!(code, Some(-30 | -19 | -35)), "invalid from code {:?}", code);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_xml_classifiers(
        status in status(), body in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let tpp = classify_authenticate_answer(status, &body, None);
        check_xml_answer(status, &body, &tpp.outcome)?;
        let vision = classify_configuration_answer(status, &body, None);
        check_xml_answer(status, &body, &vision.outcome)?;
    }
}

// ---- EMIS JSON ----

fn emis_body() -> impl Strategy<Value = String> {
    let code = prop_oneof![
        prop::sample::select(vec![-1030i64, -1401, -1104, -1105, -1106, -1107, -1552, -1, 0])
            .prop_map(serde_json::Value::from),
        prop::sample::select(vec!["-1104", " -1030 ", "", "x"]).prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!(1.5e300)),
    ];
    let message = prop_oneof![
        prop::sample::select(vec![
            "Account status NotRegistered",
            "access is 'Restricted'",
            "Missing or invalid EndUserSessionId",
            "",
        ])
        .prop_map(str::to_owned),
        wild_text(),
    ];
    prop_oneof![
        (code, message, prop::option::of(wild_text())).prop_map(|(code, message, session)| {
            let mut body = serde_json::json!({"InternalResponseCode": code, "Message": message});
            if let Some(s) = session {
                body["SessionId"] = s.into();
            }
            body.to_string()
        }),
        (wild_text(), any::<bool>()).prop_map(|(session, restricted)| {
            serde_json::json!({"SessionId": session, "LinkRestricted": restricted,
                               "UserPatientLinks": [{"AssociationType": if restricted { "Restricted" } else { "Self" }}]})
                .to_string()
        }),
        wild_text().prop_map(|s| serde_json::json!({"EndUserSessionId": s}).to_string()),
        Just("<html>proxy</html>".to_owned()),
        (1usize..3000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn emis_answers_are_classified_without_panics_and_only_listed_rejections_invalidate(
        status in status(), body in emis_body(), m in mutation(), retry_after in retry_after(),
    ) {
        let body = mutate(body.into_bytes(), &m);
        match classify_session_answer(status, &body, retry_after) {
            Classified::Answer(answer) => {
                if let Outcome::Invalid(_) = answer.outcome {
                    prop_assert!(matches!(status, 200 | 400 | 403 | 500), "invalid from HTTP {}", status);
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok(), "invalid from unparseable JSON");
                }
                if answer.outcome == Outcome::Valid {
                    prop_assert_eq!(status, 200);
                }
            }
            Classified::SessionExpired(_) => {}
        }
        if classify_end_user_session_answer(status, &body, retry_after).is_ok() {
            prop_assert_eq!(status, 200);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_emis_classifiers(
        status in status(), body in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        if let Classified::Answer(answer) = classify_session_answer(status, &body, None)
            && serde_json::from_slice::<serde_json::Value>(&body).is_err()
        {
            prop_assert!(matches!(answer.outcome, Outcome::Transient { .. }), "{:?}", answer.outcome);
        }
        let _ = classify_end_user_session_answer(status, &body, None);
    }
}
