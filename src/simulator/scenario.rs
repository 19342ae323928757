//! The simulator's scenario file: what every supplier answers by default, per-token
//! scripts, and load-shaping knobs (latency, injected errors). All fields are optional:
//!
//! ```json
//! {
//!   "default": "valid",
//!   "latency_ms": 300,
//!   "latency_spread_ms": 100,
//!   "tail_share": 0.01,
//!   "tail_ms": 5000,
//!   "error_rate": 0.0,
//!   "count_by_token": true,
//!   "tokens": {
//!     "guid-1": ["not_registered"],
//!     "guid-2": ["unavailable", "valid"],
//!     "guid-3": [{"behaviour": "rate_limited", "delay_ms": 200, "retry_after_secs": 30}, "valid"]
//!   },
//!   "vision": {"provider_id": "rp-provider-1", "practices": {"rosu-1": "A12345"}}
//! }
//! ```
//!
//! A token's script is a list of [`Step`]s: its i-th check gets `steps[min(i, len - 1)]`,
//! so the last step repeats for ever. Tokens are keyed by their identifying value: EMIS's
//! `AccessIdentityGuid`, TPP's `accountId`, Vision's `rosuAccountId`.
//!
//! Generic behaviours (`valid`, `rate_limited`, `unavailable`, ...) are rendered by every
//! supplier in its own format. A supplier-specific behaviour used on another supplier
//! (an EMIS one on TPP, a `tpp_` one on Vision, ...) is answered HTTP 400 with a
//! plain-text note naming the behaviour: every adapter classifies that as transient.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use crate::model::Supplier;

/// Generates [`Behaviour`] with its wire names given once (serde, `FromStr`, `Display`,
/// `ALL`), each with a line of documentation.
macro_rules! behaviours {
    ($($(#[doc = $doc:literal])+ $variant:ident => $text:literal,)+) => {
        /// How a simulated supplier answers one check. Names are the scenario file's
        /// spellings; each supplier-specific behaviour stands for one row of that
        /// supplier's table in im1-wire.md (its expected classification is in the doc
        /// line). TPP and Vision behaviours are prefixed `tpp_` and `vision_`; the EMIS
        /// ones predate the prefix rule. See [`Behaviour::only_for`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Behaviour {
            $($(#[doc = $doc])+ #[serde(rename = $text)] $variant,)+
        }

        impl Behaviour {
            /// Every behaviour, in documentation order.
            pub const ALL: &'static [Behaviour] = &[$(Behaviour::$variant),+];

            /// The scenario file's spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $(Behaviour::$variant => $text),+ }
            }
        }

        impl FromStr for Behaviour {
            type Err = UnknownBehaviour;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Behaviour::$variant),)+
                    _ => Err(UnknownBehaviour(s.chars().take(64).collect())),
                }
            }
        }
    };
}

behaviours! {
    /// A successful session (EMIS: 200 with a `SessionId`) → valid.
    Valid => "valid",
    /// EMIS: 200 with a `SessionId` and `"ApplicationLinkLevel": "Restricted"` → invalid(access_restricted).
    RestrictedLink => "restricted_link",
    /// EMIS: 500, code -1030, account status NotRegistered (as the NHS App's mocks send it) → invalid(not_registered).
    NotRegistered => "not_registered",
    /// EMIS: 403 whose message says the account is `'Restricted'` (quote sent as `\u0027`) → invalid(access_restricted).
    Restricted => "restricted",
    /// EMIS: 400, code -1030 (services access violation) → practice_unavailable.
    PracticeNotEnabled => "practice_not_enabled",
    /// EMIS: 403, code -1401 (practice not live) → practice_unavailable.
    PracticeNotLive => "practice_not_live",
    /// EMIS: 403 with an EMIS error body (an `exceptions` list, no code) → invalid(token_rejected).
    Forbidden => "forbidden",
    /// EMIS: 400, code -1104 (no user for these details) → invalid(token_rejected).
    NoUser => "no_user",
    /// EMIS: 400, code -1105 (invalid linkage) → invalid(token_rejected).
    InvalidLinkage => "invalid_linkage",
    /// EMIS: 400, code -1106 (details mismatch) → invalid(token_rejected).
    DetailsMismatch => "details_mismatch",
    /// EMIS: 400, code "-1107" as a string in the camelCase form with an exceptions list (account inactive) → invalid(token_rejected).
    AccountInactive => "account_inactive",
    /// EMIS: 400, code -1552 (patient archived) → invalid(token_rejected).
    PatientArchived => "patient_archived",
    /// EMIS: 400 with an EMIS error body and an unlisted code → transient.
    BadRequest => "bad_request",
    /// A proxy's 403 HTML page → transient.
    ProxyHtml => "proxy_html",
    /// 200 `{}` (EMIS: no `SessionId`) → transient.
    OkWithoutSession => "ok_without_session",
    /// 429 with `Retry-After` (default 10 s) → transient with retry_after.
    RateLimited => "rate_limited",
    /// 503 with `Retry-After` (default 30 s) → transient with retry_after.
    Unavailable => "unavailable",
    /// 500 with a body that is not an EMIS error body → transient.
    ServerError => "server_error",
    /// 200 with bytes that are not JSON → transient.
    Garbage => "garbage",
    /// EMIS: 401 `Missing or invalid EndUserSessionId` → renew the end-user session and retry.
    SessionExpired => "session_expired",
    /// EMIS: 400 with the bare text `Missing or invalid EndUserSessionId`, as the NHS App's mocks send it → renew and retry.
    SessionExpiredText => "session_expired_text",
    /// 404 with an empty body → transient.
    NotFound => "not_found",
    /// 200 with a body over the adapters' 1 MiB bound → transient (body_too_large).
    HugeBody => "huge_body",
    /// Never answers (sleeps an hour, or until the simulator shuts down) → transient (timeout).
    Hang => "hang",
    /// TPP: `Error` errorCode 9 (problem logging on), HTTP 200 → invalid(token_rejected).
    TppProblemLoggingOn => "tpp_problem_logging_on",
    /// TPP: `Error` errorCode 6 (no access), HTTP 200 → invalid(access_revoked).
    TppNoAccess => "tpp_no_access",
    /// TPP: `Error` errorCode 5 (invalid provider id), HTTP 200 → supplier_config_error.
    TppInvalidProvider => "tpp_invalid_provider",
    /// TPP: `Error` errorCode 0 (service unavailable), HTTP 200 → transient.
    TppServiceUnavailable => "tpp_service_unavailable",
    /// TPP: `Error` errorCode 3 (not authenticated), HTTP 200 → transient.
    TppNotAuthenticated => "tpp_not_authenticated",
    /// TPP: `Error` with an unlisted errorCode (42), HTTP 200 → transient.
    TppUnknownCode => "tpp_unknown_code",
    /// TPP: `Error` errorCode 9 with HTTP 500: classified by the body → invalid(token_rejected).
    TppErrorHttp500 => "tpp_error_http_500",
    /// TPP: HTTP 200 with a well-formed answer whose root is neither `AuthenticateReply` nor `Error` → transient.
    TppWrongRoot => "tpp_wrong_root",
    /// TPP: `AuthenticateReply` without a `suid` header → valid (no Logoff is sent).
    TppValidWithoutSuid => "tpp_valid_without_suid",
    /// TPP: `AuthenticateReply` with a `suid` whose Logoff then fails with HTTP 500 → still valid.
    TppLogoffFails => "tpp_logoff_fails",
    /// Vision: outcome error code -30 (invalid user credentials), HTTP 200 → invalid(token_rejected).
    VisionInvalidCredentials => "vision_invalid_credentials",
    /// Vision: outcome error code -19 (disabled), HTTP 200 → invalid(access_revoked).
    VisionDisabled => "vision_disabled",
    /// Vision: outcome error code -35 (access denied), HTTP 200 → invalid(access_revoked).
    VisionAccessDenied => "vision_access_denied",
    /// Vision: SOAP Fault `wsse:InvalidSecurity`, HTTP 500 → supplier_config_error.
    VisionInvalidSecurity => "vision_invalid_security",
    /// Vision: outcome error code -15 (record currently unavailable) → transient.
    VisionRecordUnavailable => "vision_record_unavailable",
    /// Vision: outcome error code -100 (unknown error) → transient.
    VisionUnknownError => "vision_unknown_error",
    /// Vision: SOAP Fault, HTTP 500, carrying `detail/visionFault/error/code` -30 → invalid(token_rejected).
    VisionFaultWithCode => "vision_fault_with_code",
    /// Vision: `successful` true without `serviceContent/configuration/account` → transient.
    VisionSuccessWithoutAccount => "vision_success_without_account",
    /// Vision: a success-shaped answer behind a DOCTYPE declaring an external entity → transient (dtd_refused).
    VisionXxe => "vision_xxe",
}

impl Behaviour {
    /// The one supplier this behaviour belongs to, `None` for the generic ones (`valid`,
    /// `rate_limited`, `unavailable`, `server_error`, `garbage`, `hang`, `not_found`,
    /// `huge_body`, `ok_without_session`, `proxy_html`), which every supplier renders in
    /// its own format. A supplier asked for another supplier's behaviour answers HTTP 400
    /// with a plain-text note (a transient answer for every adapter).
    pub fn only_for(self) -> Option<Supplier> {
        use Behaviour as B;
        match self {
            B::Valid
            | B::RateLimited
            | B::Unavailable
            | B::ServerError
            | B::Garbage
            | B::Hang
            | B::NotFound
            | B::HugeBody
            | B::OkWithoutSession
            | B::ProxyHtml => None,
            B::RestrictedLink
            | B::NotRegistered
            | B::Restricted
            | B::PracticeNotEnabled
            | B::PracticeNotLive
            | B::Forbidden
            | B::NoUser
            | B::InvalidLinkage
            | B::DetailsMismatch
            | B::AccountInactive
            | B::PatientArchived
            | B::BadRequest
            | B::SessionExpired
            | B::SessionExpiredText => Some(Supplier::Emis),
            B::TppProblemLoggingOn
            | B::TppNoAccess
            | B::TppInvalidProvider
            | B::TppServiceUnavailable
            | B::TppNotAuthenticated
            | B::TppUnknownCode
            | B::TppErrorHttp500
            | B::TppWrongRoot
            | B::TppValidWithoutSuid
            | B::TppLogoffFails => Some(Supplier::Tpp),
            B::VisionInvalidCredentials
            | B::VisionDisabled
            | B::VisionAccessDenied
            | B::VisionInvalidSecurity
            | B::VisionRecordUnavailable
            | B::VisionUnknownError
            | B::VisionFaultWithCode
            | B::VisionSuccessWithoutAccount
            | B::VisionXxe => Some(Supplier::Vision),
        }
    }
}

/// A behaviour name that is not one of [`Behaviour::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown behaviour {0:?}; expected one of {list}", list = Behaviour::ALL.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", "))]
pub struct UnknownBehaviour(pub String);

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scripted answer: a behaviour, optionally delayed, optionally with its own
/// `Retry-After` (for `rate_limited` and `unavailable`).
///
/// In JSON either a plain name, `"valid"`, or an object,
/// `{"behaviour": "unavailable", "delay_ms": 200, "retry_after_secs": 30}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub behaviour: Behaviour,
    /// Added to the scenario's `latency_ms` before this answer.
    pub delay_ms: Option<u64>,
    /// Overrides the behaviour's default `Retry-After`.
    pub retry_after_secs: Option<u64>,
}

impl Step {
    pub const fn new(behaviour: Behaviour) -> Step {
        Step { behaviour, delay_ms: None, retry_after_secs: None }
    }

    pub const fn delayed(mut self, delay_ms: u64) -> Step {
        self.delay_ms = Some(delay_ms);
        self
    }

    pub const fn retry_after(mut self, secs: u64) -> Step {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl Default for Step {
    fn default() -> Self {
        Step::new(Behaviour::Valid)
    }
}

impl From<Behaviour> for Step {
    fn from(behaviour: Behaviour) -> Self {
        Step::new(behaviour)
    }
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.delay_ms.is_none() && self.retry_after_secs.is_none() {
            return self.behaviour.serialize(serializer);
        }
        let mut s = serializer.serialize_struct("Step", 3)?;
        s.serialize_field("behaviour", &self.behaviour)?;
        if let Some(delay) = self.delay_ms {
            s.serialize_field("delay_ms", &delay)?;
        } else {
            s.skip_field("delay_ms")?;
        }
        if let Some(secs) = self.retry_after_secs {
            s.serialize_field("retry_after_secs", &secs)?;
        } else {
            s.skip_field("retry_after_secs")?;
        }
        s.end()
    }
}

/// The object form of a [`Step`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepObject {
    behaviour: Behaviour,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    retry_after_secs: Option<u64>,
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A hand-written visitor rather than `#[serde(untagged)]`, so a typo reports the
        // list of behaviours instead of "did not match any variant".
        struct StepVisitor;

        impl<'de> Visitor<'de> for StepVisitor {
            type Value = Step;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a behaviour name or {\"behaviour\", \"delay_ms\", \"retry_after_secs\"}")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Step, E> {
                v.parse::<Behaviour>().map(Step::new).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Step, A::Error> {
                let o = StepObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Step { behaviour: o.behaviour, delay_ms: o.delay_ms, retry_after_secs: o.retry_after_secs })
            }
        }

        deserializer.deserialize_any(StepVisitor)
    }
}

/// The whole scenario file. See the module documentation for its shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// How tokens without a script are answered.
    pub default: Step,
    /// Added before every answer of every supplier endpoint: the mean, when
    /// `latency_spread_ms` is set.
    pub latency_ms: u64,
    /// The standard deviation of a log-normal latency whose mean is `latency_ms` (real GP
    /// systems answer in a few hundred milliseconds, never in exactly the same time). 0:
    /// every answer waits exactly `latency_ms`.
    pub latency_spread_ms: u64,
    /// The share of answers (0.0 to 1.0) that wait `tail_ms` instead: a slow tail.
    pub tail_share: f64,
    /// How long a tail answer waits.
    pub tail_ms: u64,
    /// The share of answers (0.0 to 1.0) turned into a 503 without `Retry-After`.
    pub error_rate: f64,
    /// Count checks per token. Off for benchmarks with millions of tokens, where the
    /// per-token map would dominate the simulator's cost; scripts work either way.
    pub count_by_token: bool,
    /// Per-token scripts, keyed by the token's identifying value (EMIS: the
    /// `AccessIdentityGuid`).
    pub tokens: BTreeMap<String, Vec<Step>>,
    /// What the Vision endpoint holds each request's `serviceHeader` to, beyond its shape.
    pub vision: VisionExpectations,
}

/// What the simulated Vision endpoint expects of a request's `serviceHeader` beyond its
/// shape (which it always checks): the RP's provider id and each token's practice. A part
/// left unset is checked for form only.
///
/// ```json
/// {"vision": {"provider_id": "rp-provider-1", "practices": {"rosu-1": "A12345"}}}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionExpectations {
    /// `opsReference/provider` and `opsReference/accountId` must both equal it. Unset:
    /// any non-empty value, the two alike.
    pub provider_id: Option<String>,
    /// Each token's practice, keyed by `rosuAccountId`: `target/nationalCode` must equal
    /// it. A token not listed needs a well-formed ODS code only.
    pub practices: BTreeMap<String, String>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            default: Step::default(),
            latency_ms: 0,
            latency_spread_ms: 0,
            tail_share: 0.0,
            tail_ms: 0,
            error_rate: 0.0,
            count_by_token: true,
            tokens: BTreeMap::new(),
            vision: VisionExpectations::default(),
        }
    }
}

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("could not read the scenario file: {0}")]
    Read(#[from] std::io::Error),
    #[error("the scenario is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the scenario is not valid: {0}")]
    Invalid(String),
}

impl Scenario {
    /// Parses and validates a scenario.
    pub fn from_json(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = serde_json::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads, parses and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        Scenario::from_json(&std::fs::read_to_string(path)?)
    }

    /// `error_rate` and `tail_share` within 0..=1 and every script non-empty.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(ScenarioError::Invalid("error_rate must be between 0.0 and 1.0".into()));
        }
        if !(0.0..=1.0).contains(&self.tail_share) {
            return Err(ScenarioError::Invalid("tail_share must be between 0.0 and 1.0".into()));
        }
        if self.tokens.values().any(Vec::is_empty) {
            return Err(ScenarioError::Invalid("a token's script must list at least one step".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_names_match_serde() {
        for b in Behaviour::ALL {
            let json = serde_json::to_string(b).unwrap();
            assert_eq!(json, format!("\"{}\"", b.as_str()));
            assert_eq!(b.as_str().parse::<Behaviour>().unwrap(), *b);
        }
        let err = "nope".parse::<Behaviour>().unwrap_err().to_string();
        assert!(err.contains("valid, restricted_link"), "{err}");
    }

    #[test]
    fn steps_read_both_forms() {
        let steps: Vec<Step> = serde_json::from_str(
            r#"["valid", {"behaviour": "unavailable", "delay_ms": 200, "retry_after_secs": 30}, {"behaviour": "hang"}]"#,
        )
        .unwrap();
        assert_eq!(
            steps,
            [
                Step::new(Behaviour::Valid),
                Step::new(Behaviour::Unavailable).delayed(200).retry_after(30),
                Step::new(Behaviour::Hang),
            ]
        );
        let back = serde_json::to_string(&steps).unwrap();
        assert_eq!(back, r#"["valid",{"behaviour":"unavailable","delay_ms":200,"retry_after_secs":30},"hang"]"#);
    }

    #[test]
    fn step_errors_are_helpful() {
        let err = serde_json::from_str::<Step>(r#""vaild""#).unwrap_err().to_string();
        assert!(err.contains("unknown behaviour \"vaild\""), "{err}");
        let err = serde_json::from_str::<Step>(r#"{"behaviour": "valid", "delay": 1}"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `delay`"), "{err}");
        assert!(serde_json::from_str::<Step>("3").is_err());
    }

    #[test]
    fn scenario_defaults_and_validation() {
        let s = Scenario::from_json("{}").unwrap();
        assert_eq!(s, Scenario::default());
        assert!(s.count_by_token);
        let s = Scenario::from_json(
            r#"{"default": "unavailable", "latency_ms": 5, "error_rate": 0.25, "count_by_token": false,
                "tokens": {"a": ["not_registered"], "b": ["unavailable", "valid"]}}"#,
        )
        .unwrap();
        assert_eq!(s.default, Step::new(Behaviour::Unavailable));
        assert_eq!(s.tokens["b"].len(), 2);
        assert!(!s.count_by_token);
        assert!(Scenario::from_json(r#"{"error_rate": 1.5}"#).is_err());
        assert!(Scenario::from_json(r#"{"tokens": {"a": []}}"#).is_err());
        assert!(Scenario::from_json(r#"{"defualt": "valid"}"#).is_err());
    }
}
