//! The service's vocabulary: suppliers, statuses, reasons and outcomes, with the exact
//! spellings the contract uses in the database, the CLI and the API.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Generates `as_str`, `Display`, `FromStr` and `ALL` for a fieldless enum whose
/// wire spellings are given once, here, and nowhere else.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: stringify!($name), expected: &[$($text),+] }),
                }
            }
        }
    };
}

/// A string that is not one of an enum's spellings. Its message lists the allowed
/// values and never repeats the input (it may have been a token pasted in the wrong place).
#[derive(Debug, Clone, thiserror::Error)]
#[error("must be one of {}", expected.join(", "))]
pub struct UnknownValue {
    pub kind: &'static str,
    pub expected: &'static [&'static str],
}

wire_enum! {
    /// A GP clinical system supplier.
    Supplier { Emis => "emis", Tpp => "tpp", Vision => "vision", Microtest => "microtest" }
}

impl Supplier {
    /// Suppliers whose tokens can be checked over the network (Microtest's cannot).
    pub const CHECKABLE: &'static [Supplier] = &[Supplier::Emis, Supplier::Tpp, Supplier::Vision];
}

wire_enum! {
    /// A credential's standing, as RP backends read it.
    Status { Unchecked => "unchecked", Valid => "valid", Invalid => "invalid", Unsupported => "unsupported" }
}

wire_enum! {
    /// Why a credential is `invalid`.
    Reason {
        TokenRejected => "token_rejected",
        AccessRevoked => "access_revoked",
        NotRegistered => "not_registered",
        AccessRestricted => "access_restricted",
        RefreshExhausted => "refresh_exhausted",
    }
}

wire_enum! {
    /// What the last check of a credential came to (`last_outcome` in the status view).
    LastOutcome {
        Valid => "valid",
        Suspect => "suspect",
        Invalid => "invalid",
        Transient => "transient",
        PracticeUnavailable => "practice_unavailable",
        SupplierConfigError => "supplier_config_error",
        Held => "held",
        Skipped => "skipped",
    }
}

/// Reads an optional database text column into one of the enums above.
pub fn parse_opt<T: FromStr>(value: Option<&str>) -> Option<T> {
    value.and_then(|v| v.parse().ok())
}

/// A supplier's circuit breaker as this process sees it (the shared state lives in
/// `im1_supplier_state`; `safety` decides its moves, `metrics` shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed,
    Open { until: DateTime<Utc> },
    HalfOpen,
}

impl Breaker {
    /// From the stored state; an `open` row without an end is treated as half-open (the
    /// schema forbids it; this keeps a hand-edited row from blocking calls for ever).
    pub fn from_row(state: &str, open_until: Option<DateTime<Utc>>) -> Self {
        match (state, open_until) {
            ("open", Some(until)) => Breaker::Open { until },
            ("open", None) | ("half_open", _) => Breaker::HalfOpen,
            _ => Breaker::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Breaker::Closed => "closed",
            Breaker::Open { .. } => "open",
            Breaker::HalfOpen => "half_open",
        }
    }

    /// The state at `now`: an open breaker whose cool-off is over is half-open.
    pub fn at(self, now: DateTime<Utc>) -> Self {
        match self {
            Breaker::Open { until } if now >= until => Breaker::HalfOpen,
            other => other,
        }
    }
}

/// What one check of one token came to, as the supplier answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A positive success shape.
    Valid,
    /// An explicit rejection of the token, by a listed row.
    Invalid(Reason),
    /// Anything that is not a verdict on the token; `retry_after` when the supplier said.
    Transient { retry_after: Option<Duration> },
    /// The practice cannot serve patient-facing requests (not live, services disabled).
    PracticeUnavailable,
    /// The supplier says our own configuration is wrong (provider id, signing, certificate).
    SupplierConfigError,
}

impl Outcome {
    pub fn transient() -> Self {
        Outcome::Transient { retry_after: None }
    }

    /// Label used in metrics and logs (`transient`, `invalid`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::Invalid(_) => "invalid",
            Outcome::Transient { .. } => "transient",
            Outcome::PracticeUnavailable => "practice_unavailable",
            Outcome::SupplierConfigError => "supplier_config_error",
        }
    }
}

/// What the supplier said, kept with every event row so an operator can see why a
/// verdict was reached. Never holds a token: messages are scrubbed by the runner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Evidence {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Our own note when there was no supplier answer to quote (`timeout`, `connect`,
    /// `body_too_large`, `unparseable`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Evidence {
    pub fn detail(detail: impl Into<String>) -> Self {
        Evidence { detail: Some(detail.into()), ..Default::default() }
    }

    pub fn status(status: u16) -> Self {
        Evidence { http_status: Some(status), ..Default::default() }
    }

    /// Longest message kept, in characters.
    pub const MAX_MESSAGE: usize = 500;

    /// Removes any token text from the messages and bounds their length.
    pub fn scrub(&mut self, secrets: &[&str]) {
        for field in [&mut self.code, &mut self.message, &mut self.detail].into_iter().flatten() {
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                if field.contains(secret) {
                    *field = field.replace(secret, "[REDACTED]");
                }
            }
            if field.chars().count() > Self::MAX_MESSAGE {
                *field = field.chars().take(Self::MAX_MESSAGE).collect::<String>() + "…";
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in Supplier::ALL {
            assert_eq!(s.as_str().parse::<Supplier>().unwrap(), *s);
        }
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>().unwrap(), *r);
        }
        for o in LastOutcome::ALL {
            assert_eq!(o.as_str().parse::<LastOutcome>().unwrap(), *o);
        }
        let err = "EMIS".parse::<Supplier>().unwrap_err().to_string();
        assert_eq!(err, "must be one of emis, tpp, vision, microtest");
    }

    #[test]
    fn an_open_breaker_is_half_open_once_its_cooloff_is_over() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap();
        let open = Breaker::Open { until: t };
        assert_eq!(open.at(t - chrono::TimeDelta::milliseconds(1)), open);
        assert_eq!(open.at(t), Breaker::HalfOpen);
        assert_eq!(Breaker::from_row("open", Some(t)), open);
        assert_eq!(Breaker::from_row("open", None), Breaker::HalfOpen);
        assert_eq!(Breaker::from_row("half_open", None), Breaker::HalfOpen);
        assert_eq!(Breaker::from_row("closed", Some(t)), Breaker::Closed);
    }
}
