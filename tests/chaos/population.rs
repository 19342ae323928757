//! The credentials a scenario works on, each with a known truth the simulator is scripted
//! to tell: 70 % valid, 20 % revoked, 10 % flaky (a 500, then valid).

/// Credentials in most scenarios: about seven seconds of work for three workers, so the
/// faults land mid-sweep. A scenario that needs a longer sweep asks for more
/// (`Scenario::population`).
pub const POPULATION: usize = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    Valid,
    Revoked,
    Flaky,
}

/// The truth of credential `i`: `i % 10` 0–1 revoked, 2 flaky, the rest valid.
pub fn truth(i: usize) -> Truth {
    match i % 10 {
        0 | 1 => Truth::Revoked,
        2 => Truth::Flaky,
        _ => Truth::Valid,
    }
}

/// [`truth`] in SQL: the row's credential is revoked (user ids are [`user`]'s
/// `user-NNNNNNN`).
pub const REVOKED: &str = "(substr(user_id, 6)::int % 10) IN (0, 1)";

/// How the simulator answers a token of this truth when nothing is wrong.
pub fn truth_script(t: Truth) -> serde_json::Value {
    match t {
        Truth::Valid => serde_json::json!(["valid"]),
        Truth::Revoked => serde_json::json!(["not_registered"]),
        Truth::Flaky => serde_json::json!(["server_error", "valid"]),
    }
}

pub fn token(i: usize) -> String {
    format!("chaos-token-{i:07}")
}

pub fn user(i: usize) -> String {
    format!("user-{i:07}")
}

/// One import line for credential `i`.
pub fn import_line(i: usize) -> String {
    let mut line = serde_json::json!({"user_id": user(i), "supplier": "emis", "ods_code": "A81001",
                                       "token": {"access_identity_guid": token(i)}})
    .to_string();
    line.push('\n');
    line
}

/// Supplier calls a credential needs when nothing goes wrong: valid one, revoked two (a
/// strike, then the confirmation), flaky two (a 500 retried inside the check).
pub fn expected_calls(t: Truth) -> u64 {
    match t {
        Truth::Valid => 1,
        Truth::Revoked | Truth::Flaky => 2,
    }
}
