//! Reading variables one at a time: each problem is recorded and a default stands in, so
//! one pass over the map finds every problem. Values are echoed shortened and quoted, and
//! secret ones never (see the rules in [`super`]).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::file::is_variable_name;
use super::{KNOWN_VARIABLES, SECRET_VARIABLES, format_duration, parse_duration};

/// Names in our namespace, in any case (`im1_lease` is a typo for `IM1_LEASE`).
pub(super) fn is_ours(name: &str) -> bool {
    name.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("IM1_"))
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_9187_TCP_ADDR` and the like
/// for every Service in the namespace, so a Service named `im1` or `im1-revalidator` puts
/// `IM1_…` variables into every pod. They are not settings, and refusing to start over them
/// would break a plain deployment. The shapes are matched closely (the bare `_PORT` form
/// only with its `tcp://` value) so that a typo such as `IM1_ADMIN_PORT=9000` is still
/// reported rather than silently ignored.
pub(super) fn is_kubernetes_service_link(name: &str, value: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.ends_with("_SERVICE_PORT") || name.contains("_SERVICE_PORT_") {
        return true;
    }
    // `<SERVICE>_PORT_<number>_<PROTOCOL>[_PROTO|_PORT|_ADDR]`
    let port_form = name.match_indices("_PORT_").any(|(at, marker)| {
        let mut parts = name[at + marker.len()..].split('_');
        let number_ok = parts.next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let protocol_ok = parts.next().is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
        let suffix_ok = match parts.next() {
            None => true,
            Some(s) => matches!(s, "PROTO" | "PORT" | "ADDR") && parts.next().is_none(),
        };
        number_ok && protocol_ok && suffix_ok
    });
    // `<SERVICE>_PORT=tcp://10.0.0.7:9187`
    let bare_port = name.ends_with("_PORT") && ["tcp://", "udp://", "sctp://"].iter().any(|p| value.starts_with(p));
    port_form || bare_port
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// At most 60 characters of a non-secret value, quoted and escaped, for a message.
pub(super) fn shown(value: &str) -> String {
    const LIMIT: usize = 60;
    if value.chars().count() <= LIMIT {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(LIMIT).collect();
        format!("{cut:?}…")
    }
}

pub(super) fn shorten(value: &str) -> String {
    value.chars().take(20).collect()
}

/// Edit distance, for "did you mean" suggestions on unknown names.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb)).min(row[j] + 1).min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The smallest value a duration setting accepts.
#[derive(Clone, Copy)]
pub(super) enum Floor {
    Zero,
    AboveZero,
    AtLeast(Duration),
}

/// Reads variables one by one, recording problems and carrying on with defaults so that
/// every problem is found in one pass.
pub(super) struct Reader<'a> {
    pub(super) vars: &'a HashMap<String, String>,
    pub(super) problems: Vec<String>,
    /// Variables that were set but invalid, so cross-checks skip them rather than report
    /// a second, misleading problem about a default that stood in.
    pub(super) failed: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    /// The trimmed value; `None` when unset or blank.
    pub(super) fn text(&self, name: &'static str) -> Option<&'a str> {
        debug_assert!(KNOWN_VARIABLES.contains(&name), "{name} must be listed in KNOWN_VARIABLES");
        self.vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub(super) fn problem(&mut self, name: &'static str, what: &str) {
        self.problems.push(format!("{name}: {what}"));
        self.failed.push(name);
    }

    /// A problem with the value echoed, unless the variable is secret.
    pub(super) fn invalid(&mut self, name: &'static str, what: &str, value: &str) {
        if SECRET_VARIABLES.contains(&name) {
            self.problem(name, &format!("{what} (value not shown)"));
        } else {
            self.problem(name, &format!("{what} (got {})", shown(value)));
        }
    }

    pub(super) fn has_failed(&self, name: &str) -> bool {
        self.failed.contains(&name)
    }

    pub(super) fn unknown_variables(&mut self) {
        let mut unknown: Vec<&String> = self
            .vars
            .iter()
            .filter(|(k, v)| is_ours(k) && !KNOWN_VARIABLES.contains(&k.as_str()) && !is_kubernetes_service_link(k, v))
            .map(|(k, _)| k)
            .collect();
        unknown.sort();
        for name in unknown {
            let upper = name.to_ascii_uppercase();
            let suggestion = KNOWN_VARIABLES
                .iter()
                .map(|known| (edit_distance(&upper, known), known))
                .min()
                .filter(|(distance, _)| *distance <= 2);
            let printable = if is_variable_name(name) { name.clone() } else { shown(name) };
            self.problems.push(match suggestion {
                Some((_, known)) => format!("{printable}: not a known setting (did you mean {known}?)"),
                None => format!("{printable}: not a known setting"),
            });
        }
    }

    pub(super) fn duration(&mut self, name: &'static str, default: Duration, floor: Floor) -> Duration {
        let Some(text) = self.text(name) else {
            return default;
        };
        let too_small = |d: Duration| match floor {
            Floor::Zero => None,
            Floor::AboveZero => (d.is_zero()).then(|| "must be more than 0s".to_owned()),
            Floor::AtLeast(min) => (d < min).then(|| format!("must be at least {}", format_duration(min))),
        };
        match parse_duration(text) {
            Ok(d) => match too_small(d) {
                Some(bound) => {
                    self.problem(name, &format!("{bound} (got {})", format_duration(d)));
                    default
                }
                None => d,
            },
            Err(why) => {
                self.invalid(name, &format!("{why}; durations look like 500ms, 90s, 15m, 1h30m or 7d"), text);
                default
            }
        }
    }

    pub(super) fn whole<T>(&mut self, name: &'static str, default: T, min: T, max: T) -> T
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(text) = self.text(name) else {
            return default;
        };
        match text.parse::<T>() {
            Ok(n) if n >= min && n <= max => n,
            _ => {
                self.invalid(name, &format!("must be a whole number from {min} to {max}"), text);
                default
            }
        }
    }

    /// A share in (0, 1].
    pub(super) fn share(&mut self, name: &'static str, default: f64) -> f64 {
        let Some(text) = self.text(name) else {
            return default;
        };
        match text.parse::<f64>() {
            Ok(x) if x > 0.0 && x <= 1.0 => x,
            _ => {
                self.invalid(name, "must be a number greater than 0 and at most 1, like 0.5", text);
                default
            }
        }
    }

    pub(super) fn path(&mut self, name: &'static str) -> Option<PathBuf> {
        self.text(name).map(PathBuf::from)
    }

    pub(super) fn both_or_neither(&mut self, (a, a_set): (&'static str, bool), (b, b_set): (&'static str, bool)) {
        if a_set && !b_set {
            self.problem(b, &format!("is required when {a} is set"));
        } else if b_set && !a_set {
            self.problem(a, &format!("is required when {b} is set"));
        }
    }

    pub(super) fn api_tokens(&mut self) -> Vec<SecretString> {
        let Some(text) = self.text("IM1_API_TOKENS") else {
            return Vec::new();
        };
        let mut tokens = Vec::new();
        for (index, token) in text.split(',').enumerate() {
            let token = token.trim();
            if token.is_empty() {
                self.problem(
                    "IM1_API_TOKENS",
                    &format!("entry {} is empty (check for a doubled or trailing comma)", index + 1),
                );
            } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                // A bearer token with a space in it could never be sent in a header.
                self.problem(
                    "IM1_API_TOKENS",
                    &format!("entry {} contains whitespace or control characters", index + 1),
                );
            } else {
                tokens.push(SecretString::from(token.to_owned()));
            }
        }
        tokens
    }
}
