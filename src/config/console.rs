//! `IM1_CONSOLE_*`: where the console listens, who may sign in, and how. Validated with
//! the rest of the configuration (one pure step, every problem reported at once); the
//! password hashes are never echoed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argon2::password_hash::PasswordHash;
use secrecy::SecretString;

/// The console's variables (listed in `config::KNOWN_VARIABLES` too).
pub const VARIABLES: &[&str] = &[
    "IM1_CONSOLE_ADDR",
    "IM1_CONSOLE_USERS",
    "IM1_CONSOLE_TRUSTED_HEADER",
    "IM1_CONSOLE_TRUSTED_OPERATORS",
    "IM1_CONSOLE_TLS_CERT",
    "IM1_CONSOLE_TLS_KEY",
    "IM1_CONSOLE_SECURE_COOKIE",
    "IM1_CONSOLE_REFRESH",
];

/// What a signed-in user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads every page, and asks for a credential to be checked now (a priority check,
    /// judged like any other).
    Viewer,
    /// Reads, and acts: release or discard held verdicts, recheck, canaries.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// One `IM1_CONSOLE_USERS` entry. The hash is an argon2 PHC string (`console
/// hash-password` makes one); held as a secret so `Debug` never prints it.
#[derive(Debug, Clone)]
pub struct ConsoleUser {
    pub name: String,
    pub role: Role,
    pub hash: SecretString,
}

#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub addr: SocketAddr,
    pub users: Vec<ConsoleUser>,
    /// Behind an SSO proxy: the request header naming the signed-in user. Only trusted
    /// when set explicitly (the proxy must strip it from clients' requests).
    pub trusted_header: Option<String>,
    /// User names from the trusted header who are operators; everyone else is a viewer.
    pub trusted_operators: Vec<String>,
    /// Serve HTTPS with this certificate and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Mark the session cookie `Secure`: on by default with TLS, and to be turned on
    /// when TLS ends at a proxy in front.
    pub secure_cookie: bool,
    /// How often an open overview refreshes itself.
    pub refresh: Duration,
}

/// A user name: letters, digits and `._@-`, 1 to 64 of them (it is shown on pages and
/// written into events).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

fn text<'a>(vars: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// `None` when `IM1_CONSOLE_ADDR` is unset (the console is off). Problems are lines for
/// the configuration error, each naming its variable.
pub fn parse(vars: &HashMap<String, String>) -> Result<Option<ConsoleSettings>, Vec<String>> {
    let mut problems = Vec::new();
    let addr = text(vars, "IM1_CONSOLE_ADDR").and_then(|t| match t.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!("IM1_CONSOLE_ADDR: must be an IP address and port like 127.0.0.1:9188 (got {t:?})"));
            None
        }
    });
    let users = users(text(vars, "IM1_CONSOLE_USERS"), &mut problems);
    let trusted_header = text(vars, "IM1_CONSOLE_TRUSTED_HEADER").and_then(|h| {
        let lower = h.to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            problems.push(format!("IM1_CONSOLE_TRUSTED_HEADER: {h:?} is not a header name"));
            None
        } else if ["cookie", "authorization", "host", "content-type", "content-length"].contains(&lower.as_str()) {
            problems.push(format!("IM1_CONSOLE_TRUSTED_HEADER: {h:?} cannot carry a user name"));
            None
        } else {
            Some(lower)
        }
    });
    let mut trusted_operators = Vec::new();
    if let Some(list) = text(vars, "IM1_CONSOLE_TRUSTED_OPERATORS") {
        for (i, name) in list.split(',').map(str::trim).enumerate() {
            if valid_name(name) {
                trusted_operators.push(name.to_owned());
            } else {
                problems.push(format!(
                    "IM1_CONSOLE_TRUSTED_OPERATORS: entry {} must be 1 to 64 letters, digits or ._@-",
                    i + 1
                ));
            }
        }
        if trusted_header.is_none() && !problems.iter().any(|p| p.starts_with("IM1_CONSOLE_TRUSTED_HEADER")) {
            problems.push("IM1_CONSOLE_TRUSTED_OPERATORS: needs IM1_CONSOLE_TRUSTED_HEADER".into());
        }
    }
    let cert = text(vars, "IM1_CONSOLE_TLS_CERT").map(PathBuf::from);
    let key = text(vars, "IM1_CONSOLE_TLS_KEY").map(PathBuf::from);
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            problems.push("IM1_CONSOLE_TLS_KEY: is required when IM1_CONSOLE_TLS_CERT is set".into());
            None
        }
        (None, Some(_)) => {
            problems.push("IM1_CONSOLE_TLS_CERT: is required when IM1_CONSOLE_TLS_KEY is set".into());
            None
        }
    };
    let secure_cookie = match text(vars, "IM1_CONSOLE_SECURE_COOKIE") {
        None => tls.is_some(),
        Some(t) if t.eq_ignore_ascii_case("true") => true,
        Some(t) if t.eq_ignore_ascii_case("false") => {
            if tls.is_some() {
                problems.push("IM1_CONSOLE_SECURE_COOKIE: cannot be false when the console serves TLS".into());
            }
            false
        }
        Some(t) => {
            problems.push(format!("IM1_CONSOLE_SECURE_COOKIE: must be true or false (got {t:?})"));
            false
        }
    };
    let refresh = match text(vars, "IM1_CONSOLE_REFRESH") {
        None => Duration::from_secs(5),
        Some(t) => match super::parse_duration(t) {
            Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(3600) => d,
            _ => {
                problems.push(format!("IM1_CONSOLE_REFRESH: must be a duration from 1s to 1h (got {t:?})"));
                Duration::from_secs(5)
            }
        },
    };
    let Some(addr) = addr else {
        if problems.is_empty()
            && let Some(other) = VARIABLES[1..].iter().find(|v| text(vars, v).is_some())
        {
            problems.push(format!("{other}: is set but IM1_CONSOLE_ADDR is not (the console is off)"));
        }
        return if problems.is_empty() { Ok(None) } else { Err(problems) };
    };
    if users.is_empty() && trusted_header.is_none() && problems.is_empty() {
        problems
            .push("IM1_CONSOLE_ADDR: nobody could sign in: set IM1_CONSOLE_USERS or IM1_CONSOLE_TRUSTED_HEADER".into());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Some(ConsoleSettings { addr, users, trusted_header, trusted_operators, tls, secure_cookie, refresh }))
}

/// `name:role:hash` entries separated by `;` (a PHC string holds `,` and `$` but no `;`).
fn users(spec: Option<&str>, problems: &mut Vec<String>) -> Vec<ConsoleUser> {
    let Some(spec) = spec else { return Vec::new() };
    let mut users: Vec<ConsoleUser> = Vec::new();
    for (i, entry) in spec.split(';').map(str::trim).enumerate() {
        let n = i + 1;
        if entry.is_empty() {
            problems.push(format!("IM1_CONSOLE_USERS: entry {n} is empty (check for a doubled or trailing ';')"));
            continue;
        }
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
            problems.push(format!("IM1_CONSOLE_USERS: entry {n} must be name:role:hash (value not shown)"));
            continue;
        };
        if !valid_name(name) {
            problems.push(format!("IM1_CONSOLE_USERS: entry {n}: the name must be 1 to 64 letters, digits or ._@-"));
            continue;
        }
        let role = match role {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            _ => {
                problems.push(format!("IM1_CONSOLE_USERS: entry {n} ({name}): the role must be viewer or operator"));
                continue;
            }
        };
        if !is_argon2_hash(hash) {
            problems.push(format!(
                "IM1_CONSOLE_USERS: entry {n} ({name}): the hash is not an argon2 PHC string (make one with \
                 `im1-revalidator console hash-password`; value not shown)"
            ));
            continue;
        }
        if users.iter().any(|u| u.name == name) {
            problems.push(format!("IM1_CONSOLE_USERS: entry {n}: {name} is listed twice"));
            continue;
        }
        users.push(ConsoleUser { name: name.to_owned(), role, hash: SecretString::from(hash.to_owned()) });
    }
    users
}

/// Whether `text` parses as a PHC string of one of the argon2 variants.
pub fn is_argon2_hash(text: &str) -> bool {
    PasswordHash::new(text).is_ok_and(|h| ["argon2id", "argon2i", "argon2d"].contains(&h.algorithm.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$O3QpPZ0RB7lXLsUZ5ZHH0Cj8BaE4W/PkoLRDNtX0IYk";

    #[test]
    fn off_unless_an_address_is_given() {
        assert!(parse(&vars(&[])).unwrap().is_none());
        let problems = parse(&vars(&[("IM1_CONSOLE_USERS", &format!("a:viewer:{HASH}"))])).unwrap_err();
        assert!(problems[0].contains("IM1_CONSOLE_ADDR is not"), "{problems:?}");
    }

    #[test]
    fn users_roles_and_the_trusted_header() {
        let s = parse(&vars(&[
            ("IM1_CONSOLE_ADDR", "127.0.0.1:9188"),
            ("IM1_CONSOLE_USERS", &format!("alice:operator:{HASH}; bob:viewer:{HASH}")),
            ("IM1_CONSOLE_TRUSTED_HEADER", "X-Forwarded-User"),
            ("IM1_CONSOLE_TRUSTED_OPERATORS", "carol"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.users.len(), 2);
        assert_eq!((s.users[0].name.as_str(), s.users[0].role), ("alice", Role::Operator));
        assert_eq!(s.users[1].role, Role::Viewer);
        assert_eq!(s.trusted_header.as_deref(), Some("x-forwarded-user"));
        assert_eq!(s.trusted_operators, ["carol"]);
        assert!(!s.secure_cookie);
        assert!(!format!("{s:?}").contains("argon2id"), "Debug must not print hashes");
    }

    #[test]
    fn every_problem_is_named_and_no_hash_is_echoed() {
        let problems = parse(&vars(&[
            ("IM1_CONSOLE_ADDR", "nowhere"),
            ("IM1_CONSOLE_USERS", "alice:root:$argon2id$SECRETISH;;bob:viewer:notahash;x"),
            ("IM1_CONSOLE_TLS_CERT", "/c.pem"),
            ("IM1_CONSOLE_SECURE_COOKIE", "maybe"),
            ("IM1_CONSOLE_REFRESH", "0s"),
        ]))
        .unwrap_err();
        let all = problems.join("\n");
        for want in [
            "IM1_CONSOLE_ADDR",
            "role must be",
            "entry 2 is empty",
            "not an argon2",
            "entry 4 must be",
            "TLS_KEY",
            "SECURE_COOKIE",
            "REFRESH",
        ] {
            assert!(all.contains(want), "{want} missing from {all}");
        }
        assert!(!all.contains("SECRETISH") && !all.contains("notahash"), "{all}");
    }

    #[test]
    fn an_address_without_anyone_to_sign_in_is_refused() {
        let problems = parse(&vars(&[("IM1_CONSOLE_ADDR", "127.0.0.1:9188")])).unwrap_err();
        assert!(problems[0].contains("nobody could sign in"), "{problems:?}");
    }
}
