//! Properties over arbitrary answers: the classifier never panics, and `valid` or `invalid`
//! only ever comes from an answer that has the listed shape, checked here by an oracle
//! written independently of the classifier.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::*;

/// Fragments that make random bodies look like EMIS answers often enough to matter.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"SessionId\"",
    "\"sessionId\"",
    "\"abc\"",
    "\"\"",
    "\"InternalResponseCode\"",
    "\"internalResponseCode\"",
    "-1104",
    "\"-1107\"",
    "-1030",
    "-1401",
    "\"Exceptions\"",
    "\"exceptions\"",
    "\"Message\"",
    "\"message\"",
    "\"NotRegistered\"",
    "\"account status NotRegistered\"",
    "\"'Restricted'\"",
    "\"\\u0027Restricted\\u0027\"",
    "\"ApplicationLinkLevel\"",
    "\"Restricted\"",
    "null",
    "true",
    "12",
    "<html>",
    "\"Missing or invalid EndUserSessionId\"",
];

const KEYS: &[&str] = &[
    "SessionId",
    "sessionId",
    "SESSIONID",
    "InternalResponseCode",
    "internalResponseCode",
    "Exceptions",
    "exceptions",
    "Message",
    "message",
    "internalResponseMessage",
    "ApplicationLinkLevel",
    "ErrorReference",
    "EndUserSessionId",
    "Other",
];

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..8) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => serde_json::json!([-1104, -1105, -1106, -1107, -1552, -1030, -1401, -1, 0][rng.random_range(0..9)]),
        3 if depth < 2 => Value::Array((0..rng.random_range(0..3)).map(|_| random_object(rng, depth + 1)).collect()),
        _ => {
            let texts = [
                "",
                " ",
                "s-1",
                "-1107",
                "Restricted",
                "account status NotRegistered",
                "The account is 'Restricted'",
                "Missing or invalid EndUserSessionId",
                "Linked",
                "notregistered",
            ];
            Value::String(texts[rng.random_range(0..texts.len())].to_owned())
        }
    }
}

fn random_object(rng: &mut StdRng, depth: u32) -> Value {
    let mut map = serde_json::Map::new();
    for _ in 0..rng.random_range(0..5) {
        map.insert(KEYS[rng.random_range(0..KEYS.len())].to_owned(), random_value(rng, depth));
    }
    Value::Object(map)
}

fn random_body(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_bool(0.5) {
        return random_object(rng, 0).to_string().into_bytes();
    }
    if rng.random_bool(0.3) {
        let len = rng.random_range(0..256);
        return (0..len).map(|_| rng.random::<u8>()).collect();
    }
    let parts = rng.random_range(0..24);
    (0..parts).map(|_| FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]).collect::<String>().into_bytes()
}

fn object(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn has_key(map: &serde_json::Map<String, Value>, key: &str) -> bool {
    map.keys().any(|k| k.eq_ignore_ascii_case(key))
}

/// The listed shapes: a 200 with a non-empty SessionId, or an EMIS error body (an
/// InternalResponseCode or an Exceptions list) on 400, 403 or 500.
fn verdict_shape_present(status: u16, body: &[u8]) -> bool {
    let Some(map) = object(body) else { return false };
    let session = map
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("SessionId") && v.as_str().is_some_and(|s| !s.trim().is_empty()));
    let emis_error = has_key(&map, "InternalResponseCode") || has_key(&map, "Exceptions");
    (status == 200 && session) || (matches!(status, 400 | 403 | 500) && emis_error)
}

#[test]
fn arbitrary_answers_never_panic_and_never_judge_without_the_listed_shape() {
    let mut rng = StdRng::seed_from_u64(0x0001_u64.wrapping_mul(2_654_435_761));
    let statuses = [200u16, 201, 204, 400, 401, 403, 404, 429, 500, 502, 503];
    let mut verdicts = 0;
    for _ in 0..20_000 {
        let status = if rng.random_bool(0.9) { statuses[rng.random_range(0..statuses.len())] } else { rng.random() };
        let body = random_body(&mut rng);
        let classified = classify_session_answer(status, &body, None);
        if let Classified::Answer(Answer { outcome: Outcome::Valid | Outcome::Invalid(_), .. }) = &classified {
            verdicts += 1;
            assert!(
                verdict_shape_present(status, &body),
                "verdict without the listed shape: {status} {:?} -> {classified:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // The generator must reach verdicts too, or the property proves nothing.
    assert!(verdicts > 50, "only {verdicts} verdicts generated");
}

#[test]
fn truncations_of_a_valid_answer_are_never_valid() {
    let full = br#"{"SessionId":"s-123","ApplicationLinkLevel":"Linked","Name":"x"}"#;
    assert!(matches!(
        classify_session_answer(200, full, None),
        Classified::Answer(Answer { outcome: Outcome::Valid, .. })
    ));
    for cut in 0..full.len() {
        let classified = classify_session_answer(200, &full[..cut], None);
        assert!(
            !matches!(classified, Classified::Answer(Answer { outcome: Outcome::Valid | Outcome::Invalid(_), .. })),
            "prefix of {cut} bytes judged: {classified:?}"
        );
    }
}
