//! The EMIS table row by row through the classifier, in the order rows are tried, and a bad
//! configuration refused without a panic. The adapter over HTTP is in `tests/it/emis_adapter.rs`.

use super::*;
use crate::model::Reason;

const SECS_30: Option<Duration> = Some(Duration::from_secs(30));

fn classify(status: u16, body: &str) -> Classified {
    classify_session_answer(status, body.as_bytes(), None)
}

/// The final answer's outcome; panics on `SessionExpired`.
fn outcome(status: u16, body: &str) -> Outcome {
    match classify(status, body) {
        Classified::Answer(answer) => answer.outcome,
        Classified::SessionExpired(e) => panic!("session expired: {e:?}"),
    }
}

fn evidence(status: u16, body: &str) -> Evidence {
    match classify(status, body) {
        Classified::Answer(answer) => answer.evidence,
        Classified::SessionExpired(e) => e,
    }
}

fn invalid(reason: Reason) -> Outcome {
    Outcome::Invalid(reason)
}

fn pascal(code: &str, message: &str) -> String {
    format!(r#"{{"ErrorReference":"ref","Message":"{message}","InternalResponseCode":{code}}}"#)
}

fn camel(code: &str, message: &str, exception: &str) -> String {
    format!(
        r#"{{"internalResponseCode":"{code}","message":"{message}","internalResponseMessage":"","exceptions":[{{"message":"{exception}","exceptionId":"x"}}]}}"#
    )
}

#[test]
fn row_1_success_with_session_id() {
    assert_eq!(outcome(200, r#"{"SessionId":"abc","ApplicationLinkLevel":"Linked"}"#), Outcome::Valid);
    assert_eq!(outcome(200, r#"{"sessionId":"abc"}"#), Outcome::Valid);
    assert_eq!(
        outcome(200, r#"{"SessionId":"abc","ApplicationLinkLevel":"Restricted"}"#),
        invalid(Reason::AccessRestricted)
    );
    assert_eq!(
        outcome(200, r#"{"sessionid":"abc","applicationLinkLevel":"restricted"}"#),
        invalid(Reason::AccessRestricted)
    );
    // An empty or non-string SessionId is not a success shape.
    assert_eq!(outcome(200, r#"{"SessionId":""}"#), Outcome::transient());
    assert_eq!(outcome(200, r#"{"SessionId":"  "}"#), Outcome::transient());
    assert_eq!(outcome(200, r#"{"SessionId":17}"#), Outcome::transient());
    // Only a 200 is a success.
    assert_eq!(outcome(201, r#"{"SessionId":"abc"}"#), Outcome::transient());
    assert_eq!(outcome(500, r#"{"SessionId":"abc"}"#), Outcome::transient());
}

#[test]
fn row_2_end_user_session_rejected() {
    assert!(matches!(classify(401, ""), Classified::SessionExpired(_)));
    assert!(matches!(classify(401, "<html>nope</html>"), Classified::SessionExpired(_)));
    for status in [400, 403, 500, 503] {
        let body = r#"{"Message":"Missing or invalid EndUserSessionId"}"#;
        assert!(matches!(classify(status, body), Classified::SessionExpired(_)), "{status}");
        // As the NHS App's mocks send it: the bare phrase, not JSON.
        assert!(
            matches!(classify(status, "Missing or invalid EndUserSessionId"), Classified::SessionExpired(_)),
            "{status}"
        );
        let camel = camel("-1001", "error", "missing or invalid endUserSessionId");
        assert!(matches!(classify(status, &camel), Classified::SessionExpired(_)), "{status}");
    }
    let Classified::SessionExpired(e) = classify(400, "Missing or invalid EndUserSessionId") else { unreachable!() };
    assert_eq!(e.http_status, Some(400));
    assert_eq!(e.message.as_deref(), Some("Missing or invalid EndUserSessionId"));
}

#[test]
fn row_3_not_registered() {
    // The NHS App's mocks: HTTP 500, code -1030.
    let body = pascal("-1030", "User account status is NotRegistered");
    assert_eq!(outcome(500, &body), invalid(Reason::NotRegistered));
    assert_eq!(outcome(400, &body), invalid(Reason::NotRegistered));
    assert_eq!(outcome(403, &body), invalid(Reason::NotRegistered));
    let body = camel("-1030", "Services access violation", "Account status: NOTREGISTERED");
    assert_eq!(outcome(500, &body), invalid(Reason::NotRegistered));
    // Needs an EMIS error body and one of the listed statuses.
    assert_eq!(outcome(500, r#"{"Message":"account status NotRegistered"}"#), Outcome::transient());
    assert_eq!(outcome(502, &pascal("-1030", "NotRegistered")), Outcome::transient());
    assert_eq!(outcome(500, "NotRegistered"), Outcome::transient());
}

#[test]
fn row_4_restricted_message() {
    // \u0027 decoded before matching.
    let body = r#"{"Message":"The account is \u0027Restricted\u0027","InternalResponseCode":-1006}"#;
    assert_eq!(outcome(403, body), invalid(Reason::AccessRestricted));
    assert_eq!(outcome(400, body), invalid(Reason::AccessRestricted));
    let body = camel("-1006", "", "Account state is 'RESTRICTED'");
    assert_eq!(outcome(400, &body), invalid(Reason::AccessRestricted));
    // Unquoted is not this row: a 403 falls to token_rejected, a 400 to transient.
    assert_eq!(outcome(403, &pascal("-1006", "Restricted")), invalid(Reason::TokenRejected));
    assert_eq!(outcome(400, &pascal("-1006", "Restricted")), Outcome::transient());
    // Not on a 500.
    assert_eq!(outcome(500, body.as_str()), Outcome::transient());
}

#[test]
fn row_5_practice_unavailable() {
    for status in [400, 403] {
        assert_eq!(outcome(status, &pascal("-1030", "Services access violation")), Outcome::PracticeUnavailable);
        assert_eq!(outcome(status, &pascal("\"-1030\"", "Services access violation")), Outcome::PracticeUnavailable);
        assert_eq!(outcome(status, &pascal("-1401", "Practice not live")), Outcome::PracticeUnavailable);
        assert_eq!(outcome(status, &camel("-1401", "x", "y")), Outcome::PracticeUnavailable);
    }
    // A 500 with -1030 but no NotRegistered message is not a practice signal.
    assert_eq!(outcome(500, &pascal("-1030", "Services access violation")), Outcome::transient());
}

#[test]
fn row_6_forbidden_with_emis_body() {
    assert_eq!(outcome(403, &pascal("-1000", "Forbidden")), invalid(Reason::TokenRejected));
    assert_eq!(outcome(403, r#"{"message":"Forbidden","exceptions":[]}"#), invalid(Reason::TokenRejected));
    assert_eq!(outcome(403, &pascal("\"-1104\"", "x")), invalid(Reason::TokenRejected));
}

#[test]
fn row_7_linkage_codes() {
    for code in ["-1104", "-1105", "-1106", "-1107", "-1552"] {
        assert_eq!(outcome(400, &pascal(code, "x")), invalid(Reason::TokenRejected), "{code}");
        assert_eq!(outcome(400, &pascal(&format!("\"{code}\""), "x")), invalid(Reason::TokenRejected), "{code}");
        assert_eq!(outcome(400, &camel(code, "x", "y")), invalid(Reason::TokenRejected), "{code}");
        // Only on a 400.
        assert_eq!(outcome(500, &pascal(code, "x")), Outcome::transient(), "{code}");
        assert_eq!(outcome(409, &pascal(code, "x")), Outcome::transient(), "{code}");
    }
}

#[test]
fn row_8_other_400_with_emis_body() {
    let e = evidence(400, &pascal("-1001", "The request is invalid"));
    assert_eq!(outcome(400, &pascal("-1001", "The request is invalid")), Outcome::transient());
    assert_eq!(e.detail.as_deref(), Some("unlisted_code"));
    assert_eq!(outcome(400, r#"{"message":"bad","exceptions":[{"message":"x"}]}"#), Outcome::transient());
    // A code that is not a number never matches a listed one.
    assert_eq!(outcome(400, &pascal("\"-1104x\"", "x")), Outcome::transient());
    assert_eq!(outcome(400, &pascal("-1104.0", "x")), Outcome::transient());
}

#[test]
fn row_9_400_403_without_emis_body() {
    let html = "<html><body><h1>403 Forbidden</h1></body></html>";
    assert_eq!(outcome(403, html), Outcome::transient());
    assert_eq!(outcome(400, html), Outcome::transient());
    assert_eq!(evidence(403, html).detail.as_deref(), Some("not_emis_error_body"));
    assert_eq!(outcome(403, r#"{"Message":"Forbidden"}"#), Outcome::transient());
    assert_eq!(outcome(403, ""), Outcome::transient());
    // A null code is no code.
    assert_eq!(outcome(403, r#"{"InternalResponseCode":null}"#), Outcome::transient());
}

#[test]
fn row_10_everything_else_is_transient() {
    assert_eq!(outcome(200, "{}"), Outcome::transient());
    assert_eq!(evidence(200, "{}").detail.as_deref(), Some("no_session_id"));
    assert_eq!(outcome(200, "\u{0}not json"), Outcome::transient());
    assert_eq!(evidence(200, "not json").detail.as_deref(), Some("unparseable"));
    assert_eq!(outcome(200, "[1,2]"), Outcome::transient());
    assert_eq!(outcome(200, ""), Outcome::transient());
    assert_eq!(outcome(500, r#"{"Message":"An error has occurred."}"#), Outcome::transient());
    assert_eq!(outcome(502, ""), Outcome::transient());
    assert_eq!(outcome(404, ""), Outcome::transient());
    assert_eq!(outcome(302, ""), Outcome::transient());
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(outcome(200, &deep), Outcome::transient());
}

#[test]
fn retry_after_is_kept_on_429_and_503_only() {
    for status in [429, 503] {
        let Classified::Answer(a) = classify_session_answer(status, b"", SECS_30) else { unreachable!() };
        assert_eq!(a.outcome, Outcome::Transient { retry_after: SECS_30 });
    }
    let Classified::Answer(a) = classify_session_answer(500, b"", SECS_30) else { unreachable!() };
    assert_eq!(a.outcome, Outcome::transient());
}

#[test]
fn evidence_quotes_status_code_and_first_message() {
    let e = evidence(400, &camel("-1107", "", "Account inactive"));
    assert_eq!(e.http_status, Some(400));
    assert_eq!(e.code.as_deref(), Some("-1107"));
    assert_eq!(e.message.as_deref(), Some("Account inactive"));
    let e = evidence(400, &pascal("-1104", "No user"));
    assert_eq!(e.code.as_deref(), Some("-1104"));
    assert_eq!(e.message.as_deref(), Some("No user"));
    assert_eq!(e.detail, None);
}

#[test]
fn rows_are_tried_in_order() {
    // 403 whose message says NotRegistered: row 3 before row 6.
    assert_eq!(outcome(403, &pascal("-1000", "status NotRegistered")), invalid(Reason::NotRegistered));
    // 400 with -1030: practice (row 5), not transient (row 8).
    assert_eq!(outcome(400, &pascal("-1030", "x")), Outcome::PracticeUnavailable);
    // 403 with -1401: practice (row 5) before token_rejected (row 6).
    assert_eq!(outcome(403, &pascal("-1401", "x")), Outcome::PracticeUnavailable);
    // 'Restricted' (row 4) before the practice codes (row 5).
    assert_eq!(outcome(400, &pascal("-1030", "'Restricted'")), invalid(Reason::AccessRestricted));
    // NotRegistered (row 3) before 'Restricted' (row 4).
    assert_eq!(outcome(400, &pascal("-1030", "NotRegistered and 'Restricted'")), invalid(Reason::NotRegistered));
    // The session row (2) before everything but success.
    let body = pascal("-1104", "Missing or invalid EndUserSessionId");
    assert!(matches!(classify(400, &body), Classified::SessionExpired(_)));
    // Success (row 1) before everything.
    let body = r#"{"SessionId":"s","Message":"Missing or invalid EndUserSessionId"}"#;
    assert_eq!(outcome(200, body), Outcome::Valid);
}

#[test]
fn end_user_session_answers() {
    assert_eq!(classify_end_user_session_answer(200, br#"{"EndUserSessionId":"abc"}"#, None), Ok("abc".into()));
    assert_eq!(classify_end_user_session_answer(200, br#"{"endUserSessionId":"abc"}"#, None), Ok("abc".into()));
    let failures: [(u16, &[u8], &str); 5] = [
        (200, b"{}", "end_user_session_no_id"),
        (200, br#"{"EndUserSessionId":""}"#, "end_user_session_no_id"),
        (200, b"<html>", "end_user_session_unparseable"),
        (500, b"", "end_user_session_failed"),
        (401, br#"{"Message":"Bad application","InternalResponseCode":-1}"#, "end_user_session_failed"),
    ];
    for (status, body, detail) in failures {
        let answer = classify_end_user_session_answer(status, body, SECS_30).unwrap_err();
        assert_eq!(answer.outcome, Outcome::transient(), "{status}");
        assert_eq!(answer.evidence.detail.as_deref(), Some(detail), "{status}");
        assert_eq!(answer.evidence.http_status, Some(status));
    }
    for status in [429, 503] {
        let answer = classify_end_user_session_answer(status, b"", SECS_30).unwrap_err();
        assert_eq!(answer.outcome, Outcome::Transient { retry_after: SECS_30 });
    }
}

#[test]
fn bad_configuration_is_a_config_error_not_a_panic() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = HttpClient::new(reqwest::Client::builder().build().unwrap());
    let adapter = EmisAdapter::new(http.clone(), "not a url", "app".into(), Duration::from_secs(1));
    let token = Token::from_value(Supplier::Emis, &serde_json::json!({"access_identity_guid": "g"})).unwrap();
    let target = CheckTarget { ods_code: "A12345", token: &token };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer = rt.block_on(adapter.check(target));
    assert_eq!(answer.outcome, Outcome::SupplierConfigError);
    assert_eq!(answer.evidence.detail.as_deref(), Some("invalid_base_url"));
    let adapter = EmisAdapter::new(http, "http://127.0.0.1:9", "bad\napp".into(), Duration::from_secs(1));
    let answer = rt.block_on(adapter.check(target));
    assert_eq!(answer.evidence.detail.as_deref(), Some("invalid_application_id"));
    assert!(!format!("{adapter:?}").contains("bad"));
}
