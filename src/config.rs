//! Typed settings, built from the environment (and an optional `KEY=VALUE` file) in one
//! pure, validating step, before any I/O.
//!
//! [`Settings::from_vars`] reads a plain map so tests need no process environment, and it
//! collects every problem rather than stopping at the first: an operator fixing a
//! deployment sees the whole list at once (`check-config`, or the start of any command).
//!
//! Rules every message follows:
//! - it starts with the variable's name and says what is wrong and what is accepted;
//! - it never contains the value of a secret variable ([`SECRET_VARIABLES`]), nor key
//!   material, nor a config file line (a line may hold a secret);
//! - non-secret values are echoed, quoted and shortened, so a typo is easy to spot.
//!
//! A variable set to an empty or blank value counts as unset, so templated deployments
//! (`IM1_EMIS_URL: ${EMIS_URL:-}`) can leave a setting at its default.
//!
//! Unknown `IM1_*` variables are problems too, with a suggestion when the name is close to
//! a known one: `IM1_LEASES=5m` silently doing nothing is worse than refusing to start.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Timelike as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Year};
use secrecy::SecretString;

use crate::crypto::Keyring;
use crate::model::Supplier;

/// Rows per claim and write-back when `IM1_BATCH_SIZE` is unset: where the sweep
/// benchmark measured the best throughput (README, "Performance").
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Every variable this program reads. Anything else starting with `IM1_` is reported as
/// unknown, so a new setting must be added here (a unit test checks that every name read
/// is listed).
pub const KNOWN_VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "IM1_CONFIG",
    "IM1_ENCRYPTION_KEYS",
    "IM1_EMIS_URL",
    "IM1_EMIS_APPLICATION_ID",
    "IM1_EMIS_CLIENT_CERT",
    "IM1_EMIS_CLIENT_KEY",
    "IM1_EMIS_CA_CERT",
    "IM1_EMIS_RATE",
    "IM1_EMIS_BURST",
    "IM1_EMIS_MAX_IN_FLIGHT",
    "IM1_TPP_URL",
    "IM1_TPP_PROVIDER_ID",
    "IM1_TPP_CLIENT_CERT",
    "IM1_TPP_CLIENT_KEY",
    "IM1_TPP_CA_CERT",
    "IM1_TPP_RATE",
    "IM1_TPP_BURST",
    "IM1_TPP_MAX_IN_FLIGHT",
    "IM1_VISION_URL",
    "IM1_VISION_PROVIDER_ID",
    "IM1_VISION_CLIENT_CERT",
    "IM1_VISION_CLIENT_KEY",
    "IM1_VISION_CA_CERT",
    "IM1_VISION_RATE",
    "IM1_VISION_BURST",
    "IM1_VISION_MAX_IN_FLIGHT",
    "IM1_VISION_SIGNING_CERT",
    "IM1_VISION_SIGNING_KEY",
    "IM1_SCHEDULE",
    "IM1_TIMEZONE",
    "IM1_RECHECK_INTERVAL",
    "IM1_CONFIRM_AFTER",
    "IM1_HTTP_TIMEOUT",
    "IM1_CHECK_TIMEOUT",
    "IM1_CONCURRENCY",
    "IM1_BATCH_SIZE",
    "IM1_LEASE",
    "IM1_MAX_REFRESH_ATTEMPTS",
    "IM1_REFRESH_SUPPRESSION",
    "IM1_BREAKER_THRESHOLD",
    "IM1_BREAKER_MIN_CALLS",
    "IM1_BREAKER_COOLDOWN",
    "IM1_BREAKER_WINDOW",
    "IM1_GUARD_THRESHOLD",
    "IM1_GUARD_MIN_CHECKS",
    "IM1_GUARD_WINDOW",
    "IM1_ADMIN_ADDR",
    "IM1_ADMIN_MAX_CONNECTIONS",
    "IM1_ADMIN_HEADER_TIMEOUT",
    "IM1_ADMIN_REQUEST_TIMEOUT",
    "IM1_API_TOKENS",
    "IM1_RETRY_ATTEMPTS",
    "IM1_RETRY_MAX_DELAY",
    "IM1_SHUTDOWN_GRACE",
    "IM1_EVENT_RETENTION",
    "IM1_CONSOLE_ADDR",
    "IM1_CONSOLE_USERS",
    "IM1_CONSOLE_TRUSTED_HEADER",
    "IM1_CONSOLE_TRUSTED_OPERATORS",
    "IM1_CONSOLE_TLS_CERT",
    "IM1_CONSOLE_TLS_KEY",
    "IM1_CONSOLE_SECURE_COOKIE",
    "IM1_CONSOLE_REFRESH",
];

/// Variables whose values are never echoed in a message.
pub const SECRET_VARIABLES: &[&str] = &["DATABASE_URL", "IM1_ENCRYPTION_KEYS", "IM1_API_TOKENS", "IM1_CONSOLE_USERS"];

/// The sweep schedule when `IM1_SCHEDULE` is unset.
pub const DEFAULT_SCHEDULE: &str = "*/5 * * * *";

/// The longest duration accepted anywhere: longer is surely a typo, and it keeps every
/// `now + duration` far from the limits of timestamp arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// All the problems found in the configuration, one per line when displayed.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self { problems: vec![problem.into()] }
    }
}

/// The validated configuration. Secrets are [`SecretString`]s, whose `Debug` is a
/// redaction, and the key ring prints ids only, so `{:?}` of this is safe to log.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Optional here because `demo` and `simulate` run without one; commands that need it
    /// call [`Settings::require_database`].
    pub database_url: Option<SecretString>,
    /// Optional for the same reason; see [`Settings::require_keys`].
    pub keys: Option<Keyring>,
    /// `None` when the supplier is disabled (its URL unset).
    pub emis: Option<SupplierSettings>,
    pub tpp: Option<SupplierSettings>,
    pub vision: Option<SupplierSettings>,
    pub schedule: Schedule,
    /// The zone [`Settings::schedule`] is read in.
    pub timezone: Tz,
    /// How long a verdict stands before the next check (the sweep adds jitter).
    pub recheck_interval: Duration,
    /// A first invalid answer is confirmed by a second one at least this much later.
    pub confirm_after: Duration,
    /// Per HTTP request; never more than `check_timeout`.
    pub http_timeout: Duration,
    /// One whole check, all its requests and retries.
    pub check_timeout: Duration,
    /// Checks in flight per process.
    pub concurrency: usize,
    /// How long a dead process's claims block others. At least 5s, so heartbeats have
    /// time to land before a live claim could be taken over.
    pub lease: Duration,
    pub max_refresh_attempts: u32,
    pub refresh_suppression: Duration,
    /// Share of transient outcomes in the window that opens a supplier's breaker (0, 1].
    pub breaker_threshold: f64,
    pub breaker_min_calls: u32,
    pub breaker_cooldown: Duration,
    /// The breaker's rolling window (`IM1_BREAKER_WINDOW`, an extension; at least 1s).
    pub breaker_window: Duration,
    /// Share of invalid answers in the window that makes the guard hold verdicts (0, 1].
    pub guard_threshold: f64,
    pub guard_min_checks: u32,
    pub guard_window: Duration,
    pub admin_addr: SocketAddr,
    /// Connections the admin listener serves at once; one more is answered 503 and closed.
    pub admin_max_connections: usize,
    /// How long a connection may take to send a request's headers, counted from when it
    /// opens or from the end of its last answer (so also the idle keep-alive timeout).
    pub admin_header_timeout: Duration,
    /// How long any admin request may take, body included; a check's `?wait` is added.
    pub admin_request_timeout: Duration,
    /// Bearer tokens for the RP API; empty means the API answers 404.
    pub api_tokens: Vec<SecretString>,
    /// Retries of a transient answer inside one check (0 = none).
    pub retry_attempts: u32,
    pub retry_max_delay: Duration,
    pub shutdown_grace: Duration,
    /// Rows per claim and per write-back statement (`IM1_BATCH_SIZE`): the sweep's two
    /// statements per batch are spread over this many checks.
    pub batch_size: usize,
    /// WS-Security signing for Vision: both or neither (unsigned when neither).
    pub vision_signing_cert: Option<PathBuf>,
    pub vision_signing_key: Option<PathBuf>,
    pub event_retention: Duration,
    /// The operator console (`IM1_CONSOLE_*`, validated in `console::settings`); `None`
    /// when `IM1_CONSOLE_ADDR` is unset.
    pub console: Option<crate::console::settings::ConsoleSettings>,
}

/// One enabled supplier's connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SupplierSettings {
    pub supplier: Supplier,
    /// Base URL, validated as http(s), without a trailing `/`.
    pub url: String,
    /// EMIS application id, or TPP / Vision provider id.
    pub id: String,
    pub tls: TlsFiles,
    /// Requests per second, shared by all live processes.
    pub rate: f64,
    pub burst: u32,
    pub max_in_flight: u32,
}

/// PEM file paths for mutual TLS and a private CA. Only stored here; they are read (and
/// their contents checked) when the HTTP client is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Set together with `client_key`, or neither is.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
}

/// When `run` sweeps.
#[derive(Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per process, read in place; boxing would only complicate matching on it"
)]
pub enum Schedule {
    /// `run` serves the API and metrics without sweeping (sweeps come from elsewhere).
    Off,
    /// A 5-field (minute first) or 6-field (second first) cron expression.
    Cron { expression: String, cron: Cron },
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The parsed pattern's own Debug is a wall of bit sets; the text says it all.
        match self {
            Schedule::Off => f.write_str("Off"),
            Schedule::Cron { expression, .. } => write!(f, "Cron({expression:?})"),
        }
    }
}

impl Schedule {
    /// `off` (any case), or a cron expression of exactly 5 or 6 fields that fires at
    /// least once. Errors say what is wrong without the variable's name.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Schedule::Off);
        }
        // Counted here because croner also takes 7 fields (a year) and `@daily`-style
        // nicknames, which the contract does not offer.
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "must be off or a cron expression of 5 fields (minute hour day month weekday) \
                 or 6 (second first); found {fields} field{}",
                if fields == 1 { "" } else { "s" }
            ));
        }
        let cron = CronParser::builder()
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| format!("is not a valid cron expression ({e})"))?;
        // A day that never comes (`0 0 30 2 *`) parses but would stop sweeps for good.
        // croner searches thousands of years ahead before giving up, so a pattern with no
        // fire after a fixed start (chosen to keep this step pure) has none at all.
        let fires = NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .is_some_and(|start| cron.find_next_occurrence(&start, false).is_ok());
        if !fires {
            return Err("never fires (it names a date that does not exist)".to_owned());
        }
        Ok(Schedule::Cron { expression: text.split_whitespace().collect::<Vec<_>>().join(" "), cron })
    }

    /// The next fire time strictly after `after`, with the expression read as wall-clock
    /// time in `tz`. `None` when the schedule is off.
    ///
    /// Daylight saving follows croner (the Open Cron Pattern Specification): a fixed-time
    /// job whose time is skipped in spring runs once at the first instant after the gap,
    /// and one whose time is repeated in autumn runs once, at the earlier instant; an
    /// interval job (`*/5 * * * *`) runs on real instants only, both halves of a repeat.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let Schedule::Cron { cron, .. } = self else {
            return None;
        };
        // Fire times are whole seconds. Searching strictly after the whole second at or
        // before `after` finds the first fire strictly after `after` itself, however
        // croner treats fractions.
        let whole = after.with_nanosecond(0)?;
        let next = cron.find_next_occurrence(&whole.with_timezone(&tz), false).ok()?;
        let next = next.with_timezone(&Utc);
        // Guards the caller's `sleep_until(next)` loop against ever spinning.
        (next > after).then_some(next)
    }
}

impl Settings {
    /// Builds settings from a variable map (the environment merged with an optional
    /// config file). Pure: no I/O, no clock. Collects every problem.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let mut r = Reader { vars, problems: Vec::new(), failed: Vec::new() };
        r.unknown_variables();

        let database_url = r.text("DATABASE_URL").and_then(|url| {
            let scheme_ok = ["postgres://", "postgresql://"]
                .iter()
                .any(|s| url.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)));
            if scheme_ok {
                Some(SecretString::from(url.to_owned()))
            } else {
                r.problem("DATABASE_URL", "must be a postgres:// or postgresql:// URL (value not shown)");
                None
            }
        });
        let keys = r.text("IM1_ENCRYPTION_KEYS").and_then(|spec| match Keyring::parse(spec) {
            Ok(keys) => Some(keys),
            Err(problems) => {
                for p in problems {
                    r.problem("IM1_ENCRYPTION_KEYS", &p);
                }
                None
            }
        });

        let emis = r.supplier(Supplier::Emis);
        let tpp = r.supplier(Supplier::Tpp);
        let vision = r.supplier(Supplier::Vision);

        let schedule = match r.text("IM1_SCHEDULE") {
            None => Schedule::parse(DEFAULT_SCHEDULE).unwrap_or(Schedule::Off),
            Some(text) => Schedule::parse(text).unwrap_or_else(|why| {
                r.invalid("IM1_SCHEDULE", &why, text);
                Schedule::Off
            }),
        };
        let timezone = match r.text("IM1_TIMEZONE") {
            None => Tz::UTC,
            Some(text) => text.parse::<Tz>().unwrap_or_else(|_| {
                r.invalid("IM1_TIMEZONE", "must be an IANA time zone name like Europe/London or UTC", text);
                Tz::UTC
            }),
        };

        let recheck_interval = r.duration("IM1_RECHECK_INTERVAL", secs(24 * 3600), Floor::AboveZero);
        let confirm_after = r.duration("IM1_CONFIRM_AFTER", secs(15 * 60), Floor::Zero);
        let http_timeout = r.duration("IM1_HTTP_TIMEOUT", secs(10), Floor::AboveZero);
        let check_timeout = r.duration("IM1_CHECK_TIMEOUT", secs(30), Floor::AboveZero);
        if !r.has_failed("IM1_HTTP_TIMEOUT") && !r.has_failed("IM1_CHECK_TIMEOUT") && http_timeout > check_timeout {
            r.problem(
                "IM1_HTTP_TIMEOUT",
                &format!(
                    "must not be longer than IM1_CHECK_TIMEOUT ({} > {})",
                    format_duration(http_timeout),
                    format_duration(check_timeout)
                ),
            );
        }
        let concurrency = r.whole("IM1_CONCURRENCY", 64usize, 1, 10_000);
        let batch_size = r.whole("IM1_BATCH_SIZE", DEFAULT_BATCH_SIZE, 1, 10_000);
        let lease = r.duration("IM1_LEASE", secs(120), Floor::AtLeast(secs(5)));
        let max_refresh_attempts = r.whole("IM1_MAX_REFRESH_ATTEMPTS", 3u32, 1, 1_000);
        let refresh_suppression = r.duration("IM1_REFRESH_SUPPRESSION", secs(7 * 86_400), Floor::Zero);
        let breaker_threshold = r.share("IM1_BREAKER_THRESHOLD", 0.5);
        let breaker_min_calls = r.whole("IM1_BREAKER_MIN_CALLS", 20u32, 1, 1_000_000);
        let breaker_cooldown = r.duration("IM1_BREAKER_COOLDOWN", secs(60), Floor::Zero);
        let breaker_window = r.duration("IM1_BREAKER_WINDOW", secs(60), Floor::AtLeast(secs(1)));
        let guard_threshold = r.share("IM1_GUARD_THRESHOLD", 0.1);
        let guard_min_checks = r.whole("IM1_GUARD_MIN_CHECKS", 50u32, 1, 1_000_000);
        let guard_window = r.duration("IM1_GUARD_WINDOW", secs(3600), Floor::AboveZero);
        let default_addr = SocketAddr::from(([0, 0, 0, 0], 9187));
        let admin_addr = match r.text("IM1_ADMIN_ADDR") {
            None => default_addr,
            Some(text) => text.parse().unwrap_or_else(|_| {
                r.invalid("IM1_ADMIN_ADDR", "must be an IP address and port like 0.0.0.0:9187 or [::]:9187", text);
                default_addr
            }),
        };
        let admin_max_connections = r.whole("IM1_ADMIN_MAX_CONNECTIONS", 256usize, 1, 100_000);
        let admin_header_timeout = r.duration("IM1_ADMIN_HEADER_TIMEOUT", secs(10), Floor::AboveZero);
        let admin_request_timeout = r.duration("IM1_ADMIN_REQUEST_TIMEOUT", secs(10), Floor::AboveZero);
        let api_tokens = r.api_tokens();
        let retry_attempts = r.whole("IM1_RETRY_ATTEMPTS", 3u32, 0, 10);
        let retry_max_delay = r.duration("IM1_RETRY_MAX_DELAY", secs(5), Floor::Zero);
        let shutdown_grace = r.duration("IM1_SHUTDOWN_GRACE", secs(25), Floor::Zero);
        let vision_signing_cert = r.path("IM1_VISION_SIGNING_CERT");
        let vision_signing_key = r.path("IM1_VISION_SIGNING_KEY");
        r.both_or_neither(
            ("IM1_VISION_SIGNING_CERT", vision_signing_cert.is_some()),
            ("IM1_VISION_SIGNING_KEY", vision_signing_key.is_some()),
        );
        let event_retention = r.duration("IM1_EVENT_RETENTION", secs(400 * 86_400), Floor::AboveZero);
        let console = crate::console::settings::parse(vars).unwrap_or_else(|problems| {
            r.problems.extend(problems);
            None
        });

        if !r.problems.is_empty() {
            return Err(ConfigError { problems: r.problems });
        }
        Ok(Settings {
            database_url,
            keys,
            emis,
            tpp,
            vision,
            schedule,
            timezone,
            recheck_interval,
            confirm_after,
            http_timeout,
            check_timeout,
            concurrency,
            batch_size,
            lease,
            max_refresh_attempts,
            refresh_suppression,
            breaker_threshold,
            breaker_min_calls,
            breaker_cooldown,
            breaker_window,
            guard_threshold,
            guard_min_checks,
            guard_window,
            admin_addr,
            admin_max_connections,
            admin_header_timeout,
            admin_request_timeout,
            api_tokens,
            retry_attempts,
            retry_max_delay,
            shutdown_grace,
            vision_signing_cert,
            vision_signing_key,
            event_retention,
            console,
        })
    }

    /// Reads the process environment, plus the file named by `file` or else by
    /// `IM1_CONFIG` (`KEY=VALUE` lines, `#` comments, blank lines). The environment wins
    /// over the file, so one variable can be overridden without editing it.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut env = HashMap::new();
        for (name, value) in std::env::vars_os() {
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => {
                    env.insert(name, value);
                }
                (Ok(name), Err(_)) if is_ours(&name) || name == "DATABASE_URL" => {
                    problems.push(format!("{name}: is not valid UTF-8"))
                }
                // Other programs' variables are none of our business.
                _ => {}
            }
        }
        let path = match file {
            Some(path) => Some(path.to_path_buf()),
            None => env.get("IM1_CONFIG").map(|p| p.trim()).filter(|p| !p.is_empty()).map(PathBuf::from),
        };
        let mut vars = match path {
            None => HashMap::new(),
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => parse_config_file(&text, &path.display().to_string()).unwrap_or_else(|mut found| {
                    problems.append(&mut found);
                    HashMap::new()
                }),
                Err(e) => {
                    problems.push(format!("IM1_CONFIG: cannot read {}: {}", path.display(), e.kind()));
                    HashMap::new()
                }
            },
        };
        vars.extend(env);
        match Settings::from_vars(&vars) {
            Ok(settings) if problems.is_empty() => Ok(settings),
            Ok(_) => Err(ConfigError { problems }),
            Err(mut e) => {
                problems.append(&mut e.problems);
                Err(ConfigError { problems })
            }
        }
    }

    /// The database URL, for commands that cannot run without one.
    pub fn require_database(&self) -> Result<&SecretString, ConfigError> {
        self.database_url.as_ref().ok_or_else(|| ConfigError::one("DATABASE_URL is required for this command"))
    }

    /// The key ring, for commands that read or write tokens.
    pub fn require_keys(&self) -> Result<&Keyring, ConfigError> {
        self.keys.as_ref().ok_or_else(|| {
            ConfigError::one("IM1_ENCRYPTION_KEYS is required for this command (id:base64key[,id:base64key…])")
        })
    }

    /// A supplier's settings; `None` when it is disabled (and always for Microtest, whose
    /// tokens cannot be checked).
    pub fn supplier(&self, s: Supplier) -> Option<&SupplierSettings> {
        match s {
            Supplier::Emis => self.emis.as_ref(),
            Supplier::Tpp => self.tpp.as_ref(),
            Supplier::Vision => self.vision.as_ref(),
            Supplier::Microtest => None,
        }
    }

    /// Every enabled supplier, in [`Supplier::CHECKABLE`] order.
    pub fn enabled_suppliers(&self) -> impl Iterator<Item = &SupplierSettings> {
        Supplier::CHECKABLE.iter().filter_map(|s| self.supplier(*s))
    }
}

/// Parses a duration: whole numbers with units `d`, `h`, `m`, `s`, `ms`, largest first and
/// each at most once: `0s`, `500ms`, `90s`, `15m`, `1h30m`, `7d`, `1d12h`. Rejects empty,
/// negative, fractional, unit-less and unknown-unit input, and anything over 36500 days
/// (a typo, and a risk of overflow in timestamp arithmetic). The error describes the
/// problem without repeating the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "use d, h, m, s or ms, like 1h30m";
    let text = s.trim();
    if text.is_empty() {
        return Err("is empty".to_owned());
    }
    if text.starts_with('-') {
        return Err("must not be negative".to_owned());
    }
    let too_large = || format!("is too large (at most {})", format_duration(MAX_DURATION));
    let mut total: u128 = 0;
    // Units must shrink from left to right; this is the size of the last one seen.
    let mut previous_unit_ms: u128 = u128::MAX;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        if digits.is_empty() {
            let c = after.chars().next().unwrap_or(' ');
            return Err(if c.is_ascii_alphabetic() {
                "needs a number before each unit".to_owned()
            } else {
                format!("contains an unexpected character {c:?}")
            });
        }
        if after.starts_with(['.', ',']) {
            return Err("must use whole numbers (write 1h30m, not 1.5h)".to_owned());
        }
        let unit_end = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_ms: u128 = match unit {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" if after.is_empty() => return Err(format!("needs a unit after the number ({UNITS})")),
            "" => {
                let c = after.chars().next().unwrap_or(' ');
                return Err(format!("contains an unexpected character {c:?}"));
            }
            other => return Err(format!("has an unknown unit {:?} ({UNITS})", shorten(other))),
        };
        if unit_ms >= previous_unit_ms {
            return Err("must give units from largest to smallest, each at most once (like 1d12h or 1h30m)".to_owned());
        }
        previous_unit_ms = unit_ms;
        let amount: u128 = digits.parse().map_err(|_| too_large())?;
        total = amount.checked_mul(unit_ms).and_then(|v| total.checked_add(v)).ok_or_else(too_large)?;
        if total > MAX_DURATION.as_millis() {
            return Err(too_large());
        }
        rest = after;
    }
    let millis = u64::try_from(total).map_err(|_| too_large())?;
    Ok(Duration::from_millis(millis))
}

/// Writes a duration the way [`parse_duration`] reads it (`1h30m`, `500ms`, `0s`), to
/// whole milliseconds.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        let n = ms / size;
        if n > 0 {
            // Writing to a String cannot fail.
            let _ = write!(out, "{n}{unit}");
            ms -= n * size;
        }
    }
    out
}

/// Parses a config file's text into variables. `source` names the file in messages.
/// Lines are `KEY=VALUE` (an `export ` prefix is allowed, and one pair of matching quotes
/// around the value is removed); blank lines and lines starting with `#` are skipped.
/// There are no trailing comments: `#` may be part of a value. Messages give line numbers,
/// never line text, because a line may hold a secret.
pub fn parse_config_file(text: &str, source: &str) -> Result<HashMap<String, String>, Vec<String>> {
    let mut vars = HashMap::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((name, value)) = line.split_once('=') else {
            problems.push(format!("{source} line {number}: expected KEY=VALUE"));
            continue;
        };
        let name = name.trim();
        if !is_variable_name(name) {
            problems.push(format!("{source} line {number}: the name before '=' is not a variable name"));
            continue;
        }
        if name == "IM1_CONFIG" {
            problems.push(format!("{source} line {number}: IM1_CONFIG cannot be set inside a config file"));
            continue;
        }
        // IM1_* names are judged (with suggestions) with the merged variables; anything else
        // in a file written for us is a typo, since the file feeds nothing but us.
        if !is_ours(name) && !KNOWN_VARIABLES.contains(&name) {
            problems.push(format!("{source} line {number}: {name} is not a known setting"));
            continue;
        }
        if let Some(first) = first_line.get(name) {
            problems.push(format!("{source} line {number}: {name} is already set on line {first}"));
            continue;
        }
        first_line.insert(name.to_owned(), number);
        vars.insert(name.to_owned(), unquote(value.trim()).to_owned());
    }
    if problems.is_empty() { Ok(vars) } else { Err(problems) }
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote).and_then(|v| v.strip_suffix(quote)) {
            return inner;
        }
    }
    value
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// Names in our namespace, in any case (`im1_lease` is a typo for `IM1_LEASE`).
fn is_ours(name: &str) -> bool {
    name.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("IM1_"))
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_9187_TCP_ADDR` and the like
/// for every Service in the namespace, so a Service named `im1` or `im1-revalidator` puts
/// `IM1_…` variables into every pod. They are not settings, and refusing to start over them
/// would break a plain deployment. The shapes are matched closely (the bare `_PORT` form
/// only with its `tcp://` value) so that a typo such as `IM1_ADMIN_PORT=9000` is still
/// reported rather than silently ignored.
fn is_kubernetes_service_link(name: &str, value: &str) -> bool {
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

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// At most 60 characters of a non-secret value, quoted and escaped, for a message.
fn shown(value: &str) -> String {
    const LIMIT: usize = 60;
    if value.chars().count() <= LIMIT {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(LIMIT).collect();
        format!("{cut:?}…")
    }
}

fn shorten(value: &str) -> String {
    value.chars().take(20).collect()
}

/// Edit distance, for "did you mean" suggestions on unknown names.
fn edit_distance(a: &str, b: &str) -> usize {
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
enum Floor {
    Zero,
    AboveZero,
    AtLeast(Duration),
}

/// Reads variables one by one, recording problems and carrying on with defaults so that
/// every problem is found in one pass.
struct Reader<'a> {
    vars: &'a HashMap<String, String>,
    problems: Vec<String>,
    /// Variables that were set but invalid, so cross-checks skip them rather than report
    /// a second, misleading problem about a default that stood in.
    failed: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    /// The trimmed value; `None` when unset or blank.
    fn text(&self, name: &'static str) -> Option<&'a str> {
        debug_assert!(KNOWN_VARIABLES.contains(&name), "{name} must be listed in KNOWN_VARIABLES");
        self.vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn problem(&mut self, name: &'static str, what: &str) {
        self.problems.push(format!("{name}: {what}"));
        self.failed.push(name);
    }

    /// A problem with the value echoed, unless the variable is secret.
    fn invalid(&mut self, name: &'static str, what: &str, value: &str) {
        if SECRET_VARIABLES.contains(&name) {
            self.problem(name, &format!("{what} (value not shown)"));
        } else {
            self.problem(name, &format!("{what} (got {})", shown(value)));
        }
    }

    fn has_failed(&self, name: &str) -> bool {
        self.failed.contains(&name)
    }

    fn unknown_variables(&mut self) {
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

    fn duration(&mut self, name: &'static str, default: Duration, floor: Floor) -> Duration {
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

    fn whole<T>(&mut self, name: &'static str, default: T, min: T, max: T) -> T
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
    fn share(&mut self, name: &'static str, default: f64) -> f64 {
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

    fn path(&mut self, name: &'static str) -> Option<PathBuf> {
        self.text(name).map(PathBuf::from)
    }

    fn both_or_neither(&mut self, (a, a_set): (&'static str, bool), (b, b_set): (&'static str, bool)) {
        if a_set && !b_set {
            self.problem(b, &format!("is required when {a} is set"));
        } else if b_set && !a_set {
            self.problem(a, &format!("is required when {b} is set"));
        }
    }

    fn api_tokens(&mut self) -> Vec<SecretString> {
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

    /// One supplier's variables. The optional ones are validated even when the supplier
    /// is disabled, so a typo surfaces before the day it is switched on.
    fn supplier(&mut self, supplier: Supplier) -> Option<SupplierSettings> {
        let v = SupplierVars::of(supplier)?;
        let url_text = self.text(v.url);
        let url = url_text.and_then(|text| self.supplier_url(v.url, text));
        let id = self.text(v.id).map(str::to_owned);
        if id.as_deref().is_some_and(|id| id.chars().any(char::is_control)) {
            self.problem(v.id, "must not contain control characters");
        }
        let tls = TlsFiles {
            client_cert: self.path(v.client_cert),
            client_key: self.path(v.client_key),
            ca_cert: self.path(v.ca_cert),
        };
        self.both_or_neither((v.client_cert, tls.client_cert.is_some()), (v.client_key, tls.client_key.is_some()));
        let rate = match self.text(v.rate) {
            None => 50.0,
            Some(text) => match text.parse::<f64>() {
                Ok(x) if x > 0.0 && x <= 100_000.0 => x,
                _ => {
                    self.invalid(v.rate, "must be a number of requests per second above 0 and at most 100000", text);
                    50.0
                }
            },
        };
        let burst = self.whole(v.burst, 50u32, 1, 100_000);
        let max_in_flight = self.whole(v.max_in_flight, 32u32, 1, 10_000);
        match (url_text, id) {
            // The URL is the switch: without it the supplier is disabled.
            (None, _) => None,
            (Some(_), None) => {
                self.problem(v.id, &format!("is required when {} is set", v.url));
                None
            }
            // `url` is `None` here only when the URL was invalid, already reported.
            (Some(_), Some(id)) => Some(SupplierSettings { supplier, url: url?, id, tls, rate, burst, max_in_flight }),
        }
    }

    fn supplier_url(&mut self, name: &'static str, text: &str) -> Option<String> {
        let parsed = match reqwest::Url::parse(text) {
            Ok(url) => url,
            Err(e) => {
                self.invalid(name, &format!("is not a valid URL ({e})"), text);
                return None;
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // Not echoed: the value holds a credential.
            self.problem(name, "must not contain a user name or password (value not shown)");
            return None;
        }
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            self.invalid(name, "must be an http:// or https:// URL with a host", text);
            return None;
        }
        // Without a trailing slash, callers can append `/path` uniformly.
        Some(text.trim_end_matches('/').to_owned())
    }
}

/// The variable names of one supplier.
struct SupplierVars {
    url: &'static str,
    id: &'static str,
    client_cert: &'static str,
    client_key: &'static str,
    ca_cert: &'static str,
    rate: &'static str,
    burst: &'static str,
    max_in_flight: &'static str,
}

impl SupplierVars {
    fn of(supplier: Supplier) -> Option<SupplierVars> {
        Some(match supplier {
            Supplier::Emis => SupplierVars {
                url: "IM1_EMIS_URL",
                id: "IM1_EMIS_APPLICATION_ID",
                client_cert: "IM1_EMIS_CLIENT_CERT",
                client_key: "IM1_EMIS_CLIENT_KEY",
                ca_cert: "IM1_EMIS_CA_CERT",
                rate: "IM1_EMIS_RATE",
                burst: "IM1_EMIS_BURST",
                max_in_flight: "IM1_EMIS_MAX_IN_FLIGHT",
            },
            Supplier::Tpp => SupplierVars {
                url: "IM1_TPP_URL",
                id: "IM1_TPP_PROVIDER_ID",
                client_cert: "IM1_TPP_CLIENT_CERT",
                client_key: "IM1_TPP_CLIENT_KEY",
                ca_cert: "IM1_TPP_CA_CERT",
                rate: "IM1_TPP_RATE",
                burst: "IM1_TPP_BURST",
                max_in_flight: "IM1_TPP_MAX_IN_FLIGHT",
            },
            Supplier::Vision => SupplierVars {
                url: "IM1_VISION_URL",
                id: "IM1_VISION_PROVIDER_ID",
                client_cert: "IM1_VISION_CLIENT_CERT",
                client_key: "IM1_VISION_CLIENT_KEY",
                ca_cert: "IM1_VISION_CA_CERT",
                rate: "IM1_VISION_RATE",
                burst: "IM1_VISION_BURST",
                max_in_flight: "IM1_VISION_MAX_IN_FLIGHT",
            },
            Supplier::Microtest => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use secrecy::ExposeSecret as _;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_vars(&vars(pairs)).unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        match Settings::from_vars(&vars(pairs)) {
            Ok(s) => panic!("expected problems, got {s:?}"),
            Err(e) => e.problems,
        }
    }

    fn key(fill: u8) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([fill; 32])
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn defaults() {
        let s = settings(&[]);
        assert!(s.database_url.is_none() && s.keys.is_none());
        assert!(s.emis.is_none() && s.tpp.is_none() && s.vision.is_none());
        for supplier in Supplier::ALL {
            assert!(s.supplier(*supplier).is_none());
        }
        assert_eq!(s.enabled_suppliers().count(), 0);
        assert_eq!(format!("{:?}", s.schedule), r#"Cron("*/5 * * * *")"#);
        assert_eq!(s.timezone, Tz::UTC);
        assert_eq!(s.recheck_interval, secs(86_400));
        assert_eq!(s.confirm_after, secs(900));
        assert_eq!(s.http_timeout, secs(10));
        assert_eq!(s.check_timeout, secs(30));
        assert_eq!(s.concurrency, 64);
        assert_eq!(s.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(s.lease, secs(120));
        assert_eq!(s.max_refresh_attempts, 3);
        assert_eq!(s.refresh_suppression, secs(7 * 86_400));
        assert_eq!(s.breaker_threshold, 0.5);
        assert_eq!(s.breaker_min_calls, 20);
        assert_eq!(s.breaker_cooldown, secs(60));
        assert_eq!(s.breaker_window, secs(60));
        assert_eq!(s.guard_threshold, 0.1);
        assert_eq!(s.guard_min_checks, 50);
        assert_eq!(s.guard_window, secs(3600));
        assert_eq!(s.admin_addr, "0.0.0.0:9187".parse().unwrap());
        assert_eq!(s.admin_max_connections, 256);
        assert_eq!(s.admin_header_timeout, secs(10));
        assert_eq!(s.admin_request_timeout, secs(10));
        assert!(s.api_tokens.is_empty());
        assert_eq!(s.retry_attempts, 3);
        assert_eq!(s.retry_max_delay, secs(5));
        assert_eq!(s.shutdown_grace, secs(25));
        assert!(s.vision_signing_cert.is_none() && s.vision_signing_key.is_none());
        assert_eq!(s.event_retention, secs(400 * 86_400));
    }

    #[test]
    fn require_database_and_keys_name_the_variable() {
        let s = settings(&[]);
        assert_eq!(s.require_database().unwrap_err().to_string(), "DATABASE_URL is required for this command");
        assert!(
            s.require_keys().unwrap_err().to_string().starts_with("IM1_ENCRYPTION_KEYS is required for this command")
        );
        let keys = format!("k1:{}", key(1));
        let s = settings(&[("DATABASE_URL", "postgres://u:p@db/im1"), ("IM1_ENCRYPTION_KEYS", &keys)]);
        assert_eq!(s.require_database().unwrap().expose_secret(), "postgres://u:p@db/im1");
        assert_eq!(s.require_keys().unwrap().primary_id(), "k1");
    }

    #[test]
    fn blank_values_count_as_unset() {
        let s = settings(&[("IM1_EMIS_URL", ""), ("IM1_LEASE", "   "), ("DATABASE_URL", ""), ("IM1_API_TOKENS", " ")]);
        assert!(s.emis.is_none() && s.database_url.is_none() && s.api_tokens.is_empty());
        assert_eq!(s.lease, secs(120));
    }

    /// Every known variable, set to a valid value different from its default.
    fn everything() -> Vec<(&'static str, String)> {
        let keys = format!("new:{}, old:{}", key(1), key(2));
        let mut all: Vec<(&'static str, String)> = vec![
            ("DATABASE_URL", "postgresql://svc:pw@db:5432/im1".into()),
            ("IM1_CONFIG", "/etc/im1.env".into()),
            ("IM1_ENCRYPTION_KEYS", keys),
            ("IM1_SCHEDULE", "0 */10 * * * *".into()),
            ("IM1_TIMEZONE", "Europe/London".into()),
            ("IM1_RECHECK_INTERVAL", "12h".into()),
            ("IM1_CONFIRM_AFTER", "0s".into()),
            ("IM1_HTTP_TIMEOUT", "2500ms".into()),
            ("IM1_CHECK_TIMEOUT", "1m".into()),
            ("IM1_CONCURRENCY", "10000".into()),
            ("IM1_BATCH_SIZE", "250".into()),
            ("IM1_LEASE", "5s".into()),
            ("IM1_MAX_REFRESH_ATTEMPTS", "5".into()),
            ("IM1_REFRESH_SUPPRESSION", "14d".into()),
            ("IM1_BREAKER_THRESHOLD", "1".into()),
            ("IM1_BREAKER_MIN_CALLS", "7".into()),
            ("IM1_BREAKER_COOLDOWN", "2m30s".into()),
            ("IM1_BREAKER_WINDOW", "2m".into()),
            ("IM1_GUARD_THRESHOLD", "0.25".into()),
            ("IM1_GUARD_MIN_CHECKS", "100".into()),
            ("IM1_GUARD_WINDOW", "30m".into()),
            ("IM1_ADMIN_ADDR", "[::1]:8080".into()),
            ("IM1_ADMIN_MAX_CONNECTIONS", "32".into()),
            ("IM1_ADMIN_HEADER_TIMEOUT", "5s".into()),
            ("IM1_ADMIN_REQUEST_TIMEOUT", "20s".into()),
            ("IM1_API_TOKENS", "tok-a, tok-b".into()),
            ("IM1_RETRY_ATTEMPTS", "0".into()),
            ("IM1_RETRY_MAX_DELAY", "1s".into()),
            ("IM1_SHUTDOWN_GRACE", "1m".into()),
            ("IM1_VISION_SIGNING_CERT", "/tls/sign.crt".into()),
            ("IM1_VISION_SIGNING_KEY", "/tls/sign.key".into()),
            ("IM1_EVENT_RETENTION", "90d".into()),
            ("IM1_EMIS_APPLICATION_ID", "app-1".into()),
            ("IM1_TPP_PROVIDER_ID", "prov-2".into()),
            ("IM1_VISION_PROVIDER_ID", "prov-3".into()),
            ("IM1_CONSOLE_ADDR", "127.0.0.1:9188".into()),
            (
                "IM1_CONSOLE_USERS",
                "ops:operator:$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$O3QpPZ0RB7lXLsUZ5ZHH0Cj8BaE4W/PkoLRDNtX0IYk"
                    .into(),
            ),
            ("IM1_CONSOLE_TRUSTED_HEADER", "X-Auth-Request-User".into()),
            ("IM1_CONSOLE_TRUSTED_OPERATORS", "alice,bob".into()),
            ("IM1_CONSOLE_TLS_CERT", "/tls/console.crt".into()),
            ("IM1_CONSOLE_TLS_KEY", "/tls/console.key".into()),
            ("IM1_CONSOLE_SECURE_COOKIE", "true".into()),
            ("IM1_CONSOLE_REFRESH", "2s".into()),
        ];
        for (name, value) in [
            ("URL", "https://example.test/api/"),
            ("CLIENT_CERT", "/tls/client.crt"),
            ("CLIENT_KEY", "/tls/client.key"),
            ("CA_CERT", "/tls/ca.crt"),
            ("RATE", "2.5"),
            ("BURST", "10"),
            ("MAX_IN_FLIGHT", "4"),
        ] {
            for supplier in ["EMIS", "TPP", "VISION"] {
                let full = format!("IM1_{supplier}_{name}");
                let known = KNOWN_VARIABLES.iter().find(|k| **k == full).expect("listed");
                all.push((known, value.into()));
            }
        }
        all
    }

    #[test]
    fn every_variable_parses() {
        let all = everything();
        let listed: Vec<&str> = all.iter().map(|(k, _)| *k).collect();
        // The table above covers the whole list, so the test below exercises every name.
        for known in KNOWN_VARIABLES {
            assert!(listed.contains(known), "{known} missing from the test table");
        }
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let s = settings(&pairs);
        assert_eq!(s.database_url.as_ref().unwrap().expose_secret(), "postgresql://svc:pw@db:5432/im1");
        assert_eq!(s.keys.as_ref().unwrap().ids(), ["new", "old"]);
        assert_eq!(format!("{:?}", s.schedule), r#"Cron("0 */10 * * * *")"#);
        assert_eq!(s.timezone, chrono_tz::Europe::London);
        assert_eq!(s.recheck_interval, secs(12 * 3600));
        assert_eq!(s.confirm_after, Duration::ZERO);
        assert_eq!(s.http_timeout, Duration::from_millis(2500));
        assert_eq!(s.check_timeout, secs(60));
        assert_eq!(s.concurrency, 10_000);
        assert_eq!(s.batch_size, 250);
        assert_eq!(s.lease, secs(5));
        assert_eq!(s.max_refresh_attempts, 5);
        assert_eq!(s.refresh_suppression, secs(14 * 86_400));
        assert_eq!(s.breaker_threshold, 1.0);
        assert_eq!(s.breaker_min_calls, 7);
        assert_eq!(s.breaker_cooldown, secs(150));
        assert_eq!(s.breaker_window, secs(120));
        assert_eq!(s.guard_threshold, 0.25);
        assert_eq!(s.guard_min_checks, 100);
        assert_eq!(s.guard_window, secs(1800));
        assert_eq!(s.admin_addr, "[::1]:8080".parse().unwrap());
        assert_eq!(s.admin_max_connections, 32);
        assert_eq!(s.admin_header_timeout, secs(5));
        assert_eq!(s.admin_request_timeout, secs(20));
        let tokens: Vec<&str> = s.api_tokens.iter().map(|t| t.expose_secret()).collect();
        assert_eq!(tokens, ["tok-a", "tok-b"]);
        assert_eq!(s.retry_attempts, 0);
        assert_eq!(s.retry_max_delay, secs(1));
        assert_eq!(s.shutdown_grace, secs(60));
        assert_eq!(s.vision_signing_cert, Some(PathBuf::from("/tls/sign.crt")));
        assert_eq!(s.vision_signing_key, Some(PathBuf::from("/tls/sign.key")));
        assert_eq!(s.event_retention, secs(90 * 86_400));
        let console = s.console.as_ref().expect("console configured");
        assert_eq!(console.addr, "127.0.0.1:9188".parse().unwrap());
        assert_eq!((console.users.len(), console.trusted_operators.len()), (1, 2));
        assert!(console.secure_cookie && console.tls.is_some());
        assert_eq!(console.refresh, secs(2));
        let ids: Vec<&str> = s.enabled_suppliers().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, ["app-1", "prov-2", "prov-3"]);
        let tpp = s.supplier(Supplier::Tpp).unwrap();
        assert_eq!(
            *tpp,
            SupplierSettings {
                supplier: Supplier::Tpp,
                url: "https://example.test/api".into(),
                id: "prov-2".into(),
                tls: TlsFiles {
                    client_cert: Some("/tls/client.crt".into()),
                    client_key: Some("/tls/client.key".into()),
                    ca_cert: Some("/tls/ca.crt".into()),
                },
                rate: 2.5,
                burst: 10,
                max_in_flight: 4,
            }
        );
        assert!(s.supplier(Supplier::Microtest).is_none());
    }

    #[test]
    fn each_variable_reports_its_own_problem() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "DATABASE_URL",
                "mysql://root:hunter2@db",
                "DATABASE_URL: must be a postgres:// or postgresql:// URL (value not shown)",
            ),
            (
                "IM1_ENCRYPTION_KEYS",
                "k1:c2hvcnQ=",
                "IM1_ENCRYPTION_KEYS: entry 1 (id \"k1\"): the key must decode to 32 bytes (got 5)",
            ),
            (
                "IM1_SCHEDULE",
                "*/5 * * *",
                "IM1_SCHEDULE: must be off or a cron expression of 5 fields (minute hour day month weekday) or 6 (second first); found 4 fields (got \"*/5 * * *\")",
            ),
            (
                "IM1_SCHEDULE",
                "0 0 0 * * * 2030",
                "IM1_SCHEDULE: must be off or a cron expression of 5 fields (minute hour day month weekday) or 6 (second first); found 7 fields (got \"0 0 0 * * * 2030\")",
            ),
            (
                "IM1_SCHEDULE",
                "@daily",
                "IM1_SCHEDULE: must be off or a cron expression of 5 fields (minute hour day month weekday) or 6 (second first); found 1 field (got \"@daily\")",
            ),
            (
                "IM1_SCHEDULE",
                "0 0 30 2 *",
                "IM1_SCHEDULE: never fires (it names a date that does not exist) (got \"0 0 30 2 *\")",
            ),
            (
                "IM1_TIMEZONE",
                "Europe/Lundon",
                "IM1_TIMEZONE: must be an IANA time zone name like Europe/London or UTC (got \"Europe/Lundon\")",
            ),
            ("IM1_RECHECK_INTERVAL", "0s", "IM1_RECHECK_INTERVAL: must be more than 0s (got 0s)"),
            (
                "IM1_CONFIRM_AFTER",
                "15",
                "IM1_CONFIRM_AFTER: needs a unit after the number (use d, h, m, s or ms, like 1h30m); durations look like 500ms, 90s, 15m, 1h30m or 7d (got \"15\")",
            ),
            ("IM1_HTTP_TIMEOUT", "0ms", "IM1_HTTP_TIMEOUT: must be more than 0s (got 0s)"),
            (
                "IM1_CHECK_TIMEOUT",
                "-30s",
                "IM1_CHECK_TIMEOUT: must not be negative; durations look like 500ms, 90s, 15m, 1h30m or 7d (got \"-30s\")",
            ),
            ("IM1_CONCURRENCY", "0", "IM1_CONCURRENCY: must be a whole number from 1 to 10000 (got \"0\")"),
            ("IM1_CONCURRENCY", "10001", "IM1_CONCURRENCY: must be a whole number from 1 to 10000 (got \"10001\")"),
            ("IM1_LEASE", "2s", "IM1_LEASE: must be at least 5s (got 2s)"),
            (
                "IM1_MAX_REFRESH_ATTEMPTS",
                "three",
                "IM1_MAX_REFRESH_ATTEMPTS: must be a whole number from 1 to 1000 (got \"three\")",
            ),
            (
                "IM1_REFRESH_SUPPRESSION",
                "1w",
                "IM1_REFRESH_SUPPRESSION: has an unknown unit \"w\" (use d, h, m, s or ms, like 1h30m); durations look like 500ms, 90s, 15m, 1h30m or 7d (got \"1w\")",
            ),
            (
                "IM1_BREAKER_THRESHOLD",
                "0",
                "IM1_BREAKER_THRESHOLD: must be a number greater than 0 and at most 1, like 0.5 (got \"0\")",
            ),
            (
                "IM1_BREAKER_THRESHOLD",
                "NaN",
                "IM1_BREAKER_THRESHOLD: must be a number greater than 0 and at most 1, like 0.5 (got \"NaN\")",
            ),
            (
                "IM1_BREAKER_MIN_CALLS",
                "-1",
                "IM1_BREAKER_MIN_CALLS: must be a whole number from 1 to 1000000 (got \"-1\")",
            ),
            (
                "IM1_BREAKER_COOLDOWN",
                "1.5m",
                "IM1_BREAKER_COOLDOWN: must use whole numbers (write 1h30m, not 1.5h); durations look like 500ms, 90s, 15m, 1h30m or 7d (got \"1.5m\")",
            ),
            (
                "IM1_GUARD_THRESHOLD",
                "1.01",
                "IM1_GUARD_THRESHOLD: must be a number greater than 0 and at most 1, like 0.5 (got \"1.01\")",
            ),
            ("IM1_GUARD_MIN_CHECKS", "0", "IM1_GUARD_MIN_CHECKS: must be a whole number from 1 to 1000000 (got \"0\")"),
            ("IM1_GUARD_WINDOW", "0s", "IM1_GUARD_WINDOW: must be more than 0s (got 0s)"),
            (
                "IM1_ADMIN_ADDR",
                "localhost:9187",
                "IM1_ADMIN_ADDR: must be an IP address and port like 0.0.0.0:9187 or [::]:9187 (got \"localhost:9187\")",
            ),
            (
                "IM1_API_TOKENS",
                "good,,also-good",
                "IM1_API_TOKENS: entry 2 is empty (check for a doubled or trailing comma)",
            ),
            ("IM1_API_TOKENS", "SECRET one", "IM1_API_TOKENS: entry 1 contains whitespace or control characters"),
            ("IM1_RETRY_ATTEMPTS", "11", "IM1_RETRY_ATTEMPTS: must be a whole number from 0 to 10 (got \"11\")"),
            (
                "IM1_RETRY_MAX_DELAY",
                "5 s",
                "IM1_RETRY_MAX_DELAY: contains an unexpected character ' '; durations look like 500ms, 90s, 15m, 1h30m or 7d (got \"5 s\")",
            ),
            (
                "IM1_SHUTDOWN_GRACE",
                "s",
                "IM1_SHUTDOWN_GRACE: needs a number before each unit; durations look like 500ms, 90s, 15m, 1h30m or 7d (got \"s\")",
            ),
            (
                "IM1_VISION_SIGNING_CERT",
                "/a.crt",
                "IM1_VISION_SIGNING_KEY: is required when IM1_VISION_SIGNING_CERT is set",
            ),
            (
                "IM1_VISION_SIGNING_KEY",
                "/a.key",
                "IM1_VISION_SIGNING_CERT: is required when IM1_VISION_SIGNING_KEY is set",
            ),
            (
                "IM1_EVENT_RETENTION",
                "99999999d",
                "IM1_EVENT_RETENTION: is too large (at most 36500d); durations look like 500ms, 90s, 15m, 1h30m or 7d (got \"99999999d\")",
            ),
            ("IM1_EMIS_URL", "https://emis.test", "IM1_EMIS_APPLICATION_ID: is required when IM1_EMIS_URL is set"),
            ("IM1_TPP_URL", "https://tpp.test", "IM1_TPP_PROVIDER_ID: is required when IM1_TPP_URL is set"),
            ("IM1_VISION_URL", "https://vision.test", "IM1_VISION_PROVIDER_ID: is required when IM1_VISION_URL is set"),
            ("IM1_EMIS_CLIENT_CERT", "/c.pem", "IM1_EMIS_CLIENT_KEY: is required when IM1_EMIS_CLIENT_CERT is set"),
            ("IM1_TPP_CLIENT_KEY", "/k.pem", "IM1_TPP_CLIENT_CERT: is required when IM1_TPP_CLIENT_KEY is set"),
            (
                "IM1_VISION_RATE",
                "0",
                "IM1_VISION_RATE: must be a number of requests per second above 0 and at most 100000 (got \"0\")",
            ),
            (
                "IM1_EMIS_RATE",
                "inf",
                "IM1_EMIS_RATE: must be a number of requests per second above 0 and at most 100000 (got \"inf\")",
            ),
            ("IM1_TPP_BURST", "0", "IM1_TPP_BURST: must be a whole number from 1 to 100000 (got \"0\")"),
            (
                "IM1_EMIS_MAX_IN_FLIGHT",
                "1.5",
                "IM1_EMIS_MAX_IN_FLIGHT: must be a whole number from 1 to 10000 (got \"1.5\")",
            ),
            ("IM1_LEASES", "5m", "IM1_LEASES: not a known setting (did you mean IM1_LEASE?)"),
            ("im1_lease", "5m", "im1_lease: not a known setting (did you mean IM1_LEASE?)"),
            ("IM1_SOMETHING_ELSE", "x", "IM1_SOMETHING_ELSE: not a known setting"),
        ];
        for (name, value, expected) in cases {
            let found = problems(&[(name, value)]);
            assert_eq!(found, [*expected], "{name}={value}");
        }
    }

    #[test]
    fn supplier_urls() {
        let with = |url: &str| vec![("IM1_EMIS_URL", url.to_owned()), ("IM1_EMIS_APPLICATION_ID", "app".to_owned())];
        let check = |url: &str| {
            let pairs = with(url);
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Settings::from_vars(&vars(&pairs)).map(|s| s.emis.unwrap().url).map_err(|e| e.problems)
        };
        assert_eq!(check("http://localhost:8080/"), Ok("http://localhost:8080".to_owned()));
        assert_eq!(check("https://emis.test/base//"), Ok("https://emis.test/base".to_owned()));
        assert_eq!(
            check("ftp://emis.test").unwrap_err(),
            ["IM1_EMIS_URL: must be an http:// or https:// URL with a host (got \"ftp://emis.test\")"]
        );
        assert_eq!(
            check("emis.test").unwrap_err(),
            ["IM1_EMIS_URL: is not a valid URL (relative URL without a base) (got \"emis.test\")"]
        );
        let with_password = check("https://user:SECRETPW@emis.test").unwrap_err();
        assert_eq!(with_password, ["IM1_EMIS_URL: must not contain a user name or password (value not shown)"]);
    }

    #[test]
    fn disabled_supplier_settings_are_still_checked_but_do_not_enable_it() {
        let s = settings(&[("IM1_TPP_PROVIDER_ID", "p"), ("IM1_TPP_RATE", "5"), ("IM1_TPP_CA_CERT", "/ca.pem")]);
        assert!(s.tpp.is_none());
        assert_eq!(problems(&[("IM1_TPP_BURST", "lots")]).len(), 1);
    }

    #[test]
    fn all_problems_are_collected_at_once() {
        let found = problems(&[
            ("IM1_LEASE", "1s"),
            ("IM1_CONCURRENCY", "0"),
            ("IM1_SCHEDULE", "nope"),
            ("IM1_TIMEZONE", "Mars/Base"),
            ("IM1_EMIS_URL", "https://emis.test"),
            ("IM1_API_TOKENS", ","),
            ("IM1_ENCRYPTION_KEYS", "nocolon,:"),
            ("IM1_LEAS", "2m"),
            ("IM1_HTTP_TIMEOUT", "1m"),
        ]);
        assert_eq!(
            found,
            [
                "IM1_LEAS: not a known setting (did you mean IM1_LEASE?)",
                "IM1_ENCRYPTION_KEYS: entry 1: must be id:base64key (no ':' found)",
                "IM1_ENCRYPTION_KEYS: entry 2: the key id before ':' is empty",
                "IM1_EMIS_APPLICATION_ID: is required when IM1_EMIS_URL is set",
                "IM1_SCHEDULE: must be off or a cron expression of 5 fields (minute hour day month weekday) or 6 (second first); found 1 field (got \"nope\")",
                "IM1_TIMEZONE: must be an IANA time zone name like Europe/London or UTC (got \"Mars/Base\")",
                "IM1_HTTP_TIMEOUT: must not be longer than IM1_CHECK_TIMEOUT (1m > 30s)",
                "IM1_CONCURRENCY: must be a whole number from 1 to 10000 (got \"0\")",
                "IM1_LEASE: must be at least 5s (got 1s)",
                "IM1_API_TOKENS: entry 1 is empty (check for a doubled or trailing comma)",
                "IM1_API_TOKENS: entry 2 is empty (check for a doubled or trailing comma)",
            ]
        );
        let error = Settings::from_vars(&vars(&[("IM1_LEASE", "1s"), ("IM1_CONCURRENCY", "0")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "IM1_CONCURRENCY: must be a whole number from 1 to 10000 (got \"0\")\nIM1_LEASE: must be at least 5s (got 1s)"
        );
    }

    #[test]
    fn timeout_cross_checks() {
        assert!(Settings::from_vars(&vars(&[("IM1_HTTP_TIMEOUT", "30s"), ("IM1_CHECK_TIMEOUT", "30s")])).is_ok());
        assert_eq!(
            problems(&[("IM1_HTTP_TIMEOUT", "31s")]),
            ["IM1_HTTP_TIMEOUT: must not be longer than IM1_CHECK_TIMEOUT (31s > 30s)"]
        );
        assert_eq!(
            problems(&[("IM1_CHECK_TIMEOUT", "5s")]),
            ["IM1_HTTP_TIMEOUT: must not be longer than IM1_CHECK_TIMEOUT (10s > 5s)"]
        );
        // An invalid value is reported once, not again through a default that stood in.
        assert_eq!(problems(&[("IM1_CHECK_TIMEOUT", "0s")]), ["IM1_CHECK_TIMEOUT: must be more than 0s (got 0s)"]);
    }

    #[test]
    fn kubernetes_service_links_are_not_unknown_settings() {
        let s = settings(&[
            ("IM1_SERVICE_HOST", "10.0.0.7"),
            ("IM1_SERVICE_PORT", "9187"),
            ("IM1_SERVICE_PORT_ADMIN", "9187"),
            ("IM1_PORT", "tcp://10.0.0.7:9187"),
            ("IM1_PORT_9187_TCP", "tcp://10.0.0.7:9187"),
            ("IM1_PORT_9187_TCP_PROTO", "tcp"),
            ("IM1_PORT_9187_TCP_PORT", "9187"),
            ("IM1_PORT_9187_TCP_ADDR", "10.0.0.7"),
            ("IM1_REVALIDATOR_SERVICE_HOST", "10.0.0.8"),
            ("IM1_REVALIDATOR_PORT_9187_TCP_ADDR", "10.0.0.8"),
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
        ]);
        assert_eq!(s.concurrency, 64);
        // A typo that merely looks like a port is still reported.
        assert_eq!(problems(&[("IM1_ADMIN_PORT", "9000")]), ["IM1_ADMIN_PORT: not a known setting"]);
    }

    #[test]
    fn secrets_never_appear_in_messages_or_debug() {
        let found = problems(&[
            ("DATABASE_URL", "mysql://root:DBSECRET@db"),
            ("IM1_ENCRYPTION_KEYS", "KEYSECRETKEYSECRET,k2:KEYSECRET=="),
            ("IM1_API_TOKENS", "TOKSECRET,,TOK SECRET"),
        ]);
        assert_eq!(found.len(), 5, "{found:?}");
        let text = found.join("\n");
        assert!(!text.contains("SECRET"), "{text}");

        let keys = format!("k1:{}", key(0x41));
        let s = settings(&[
            ("DATABASE_URL", "postgres://user:DBSECRET@db/im1"),
            ("IM1_ENCRYPTION_KEYS", &keys),
            ("IM1_API_TOKENS", "TOKSECRET1,TOKSECRET2"),
        ]);
        let debug = format!("{s:?}");
        assert!(!debug.contains("SECRET") && !debug.contains(&key(0x41)), "{debug}");
        assert!(debug.contains("REDACTED") && debug.contains("k1"));
    }

    #[test]
    fn durations_table() {
        let ok: &[(&str, u64)] = &[
            ("0s", 0),
            ("0ms", 0),
            ("500ms", 500),
            ("90s", 90_000),
            ("15m", 900_000),
            ("1h30m", 5_400_000),
            ("7d", 604_800_000),
            ("1d12h", 129_600_000),
            ("1d2h3m4s5ms", 93_784_005),
            (" 2m ", 120_000),
            ("007s", 7_000),
            ("36500d", 3_153_600_000_000),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(*ms)), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "is empty"),
            ("  ", "is empty"),
            ("-5s", "must not be negative"),
            ("5", "needs a unit after the number (use d, h, m, s or ms, like 1h30m)"),
            ("5x", "has an unknown unit \"x\" (use d, h, m, s or ms, like 1h30m)"),
            ("5S", "has an unknown unit \"S\" (use d, h, m, s or ms, like 1h30m)"),
            ("5sec", "has an unknown unit \"sec\" (use d, h, m, s or ms, like 1h30m)"),
            ("1.5h", "must use whole numbers (write 1h30m, not 1.5h)"),
            ("h", "needs a number before each unit"),
            ("1h 30m", "contains an unexpected character ' '"),
            ("+5s", "contains an unexpected character '+'"),
            ("30m1h", "must give units from largest to smallest, each at most once (like 1d12h or 1h30m)"),
            ("1m1m", "must give units from largest to smallest, each at most once (like 1d12h or 1h30m)"),
            ("36500d1ms", "is too large (at most 36500d)"),
            ("99999999999999999999999999999999999999999999s", "is too large (at most 36500d)"),
            ("18446744073709551615d", "is too large (at most 36500d)"),
        ];
        for (text, why) in bad {
            assert_eq!(parse_duration(text), Err((*why).to_owned()), "{text:?}");
        }
    }

    #[test]
    fn durations_format_back() {
        for text in ["0s", "500ms", "1m30s", "1h30m", "7d", "1d12h", "1d2h3m4s5ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn schedule_off_and_fields() {
        for off in ["off", "OFF", " Off "] {
            assert_eq!(Schedule::parse(off), Ok(Schedule::Off));
        }
        assert_eq!(Schedule::Off.next_after(utc(2026, 1, 1, 0, 0, 0), Tz::UTC), None);
        assert!(Schedule::parse("*/5 * * * *").is_ok());
        assert!(Schedule::parse("0 */5 * * * *").is_ok());
        assert!(Schedule::parse("0 0 29 2 *").is_ok(), "leap days exist");
        assert_eq!(Schedule::parse("0 0 31 4 *"), Err("never fires (it names a date that does not exist)".to_owned()));
        assert!(Schedule::parse("61 * * * *").unwrap_err().starts_with("is not a valid cron expression"));
        assert!(Schedule::parse("* * * * * * *").is_err());
        assert!(Schedule::parse("@hourly").is_err());
        assert!(Schedule::parse("").is_err());
        // Extra whitespace is normalised in the stored expression.
        let Ok(Schedule::Cron { expression, .. }) = Schedule::parse("  */5   *  * * * ") else { panic!() };
        assert_eq!(expression, "*/5 * * * *");
    }

    #[test]
    fn five_field_schedule_fires_strictly_after() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(s.next_after(utc(2026, 6, 1, 12, 3, 10), Tz::UTC), Some(utc(2026, 6, 1, 12, 5, 0)));
        // Exactly on a fire time: the next one, not the same.
        assert_eq!(s.next_after(utc(2026, 6, 1, 12, 5, 0), Tz::UTC), Some(utc(2026, 6, 1, 12, 10, 0)));
        // Fractions of a second either side of a fire time.
        let just_before = utc(2026, 6, 1, 12, 4, 59) + chrono::Duration::milliseconds(999);
        assert_eq!(s.next_after(just_before, Tz::UTC), Some(utc(2026, 6, 1, 12, 5, 0)));
        let just_after = utc(2026, 6, 1, 12, 5, 0) + chrono::Duration::milliseconds(1);
        assert_eq!(s.next_after(just_after, Tz::UTC), Some(utc(2026, 6, 1, 12, 10, 0)));
        // Year end.
        assert_eq!(s.next_after(utc(2026, 12, 31, 23, 59, 0), Tz::UTC), Some(utc(2027, 1, 1, 0, 0, 0)));
    }

    #[test]
    fn six_field_schedule_has_seconds_first() {
        let s = Schedule::parse("30 0 3 * * *").unwrap();
        assert_eq!(s.next_after(utc(2026, 6, 1, 12, 0, 0), Tz::UTC), Some(utc(2026, 6, 2, 3, 0, 30)));
        let every_10s = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(every_10s.next_after(utc(2026, 6, 1, 12, 0, 0), Tz::UTC), Some(utc(2026, 6, 1, 12, 0, 10)));
    }

    #[test]
    fn schedule_reads_wall_clock_in_the_zone() {
        let s = Schedule::parse("0 9 * * *").unwrap();
        let london = chrono_tz::Europe::London;
        // 09:00 BST is 08:00 UTC in summer; 09:00 GMT is 09:00 UTC in winter.
        assert_eq!(s.next_after(utc(2026, 7, 1, 0, 0, 0), london), Some(utc(2026, 7, 1, 8, 0, 0)));
        assert_eq!(s.next_after(utc(2026, 12, 1, 0, 0, 0), london), Some(utc(2026, 12, 1, 9, 0, 0)));
    }

    /// Fires from `start` until `end`, by repeatedly asking for the next one.
    fn fires(s: &Schedule, tz: Tz, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut at = start;
        while let Some(next) = s.next_after(at, tz) {
            assert!(next > at);
            if next >= end {
                break;
            }
            out.push(next);
            at = next;
        }
        out
    }

    #[test]
    fn daily_job_across_spring_forward_fires_once_per_day_at_a_real_time() {
        // Europe/London, Sunday 29 March 2026: 01:00 GMT jumps to 02:00 BST, so 01:30 does
        // not exist that day.
        let london = chrono_tz::Europe::London;
        let s = Schedule::parse("30 1 * * *").unwrap();
        let got = fires(&s, london, utc(2026, 3, 27, 0, 0, 0), utc(2026, 4, 1, 0, 0, 0));
        assert_eq!(
            got,
            [
                utc(2026, 3, 27, 1, 30, 0), // 01:30 GMT
                utc(2026, 3, 28, 1, 30, 0), // 01:30 GMT
                utc(2026, 3, 29, 1, 0, 0),  // 02:00 BST: the first real instant after the gap
                utc(2026, 3, 30, 0, 30, 0), // 01:30 BST
                utc(2026, 3, 31, 0, 30, 0), // 01:30 BST
            ]
        );
        let local_days: Vec<NaiveDate> = got.iter().map(|t| t.with_timezone(&london).date_naive()).collect();
        let mut unique = local_days.clone();
        unique.dedup();
        assert_eq!(local_days, unique, "one fire per local day");
        for t in &got {
            // Every fire is a real, unambiguous local time.
            let local = t.with_timezone(&london).naive_local();
            assert!(london.from_local_datetime(&local).single().is_some(), "{t}");
        }
    }

    #[test]
    fn daily_job_across_fall_back_fires_once_on_the_repeated_night() {
        // Sunday 25 October 2026: 02:00 BST falls back to 01:00 GMT, so 01:30 happens twice.
        let london = chrono_tz::Europe::London;
        let s = Schedule::parse("30 1 * * *").unwrap();
        let got = fires(&s, london, utc(2026, 10, 23, 0, 0, 0), utc(2026, 10, 28, 0, 0, 0));
        assert_eq!(
            got,
            [
                utc(2026, 10, 23, 0, 30, 0), // 01:30 BST
                utc(2026, 10, 24, 0, 30, 0), // 01:30 BST
                utc(2026, 10, 25, 0, 30, 0), // the first 01:30 (BST) only
                utc(2026, 10, 26, 1, 30, 0), // 01:30 GMT
                utc(2026, 10, 27, 1, 30, 0), // 01:30 GMT
            ]
        );
        // Asking from between the two 01:30s does not produce the second one.
        assert_eq!(s.next_after(utc(2026, 10, 25, 1, 0, 0), london), Some(utc(2026, 10, 26, 1, 30, 0)));
    }

    #[test]
    fn interval_job_keeps_real_intervals_across_both_changes() {
        let london = chrono_tz::Europe::London;
        let s = Schedule::parse("*/30 * * * *").unwrap();
        let spring = fires(&s, london, utc(2026, 3, 29, 0, 0, 0), utc(2026, 3, 29, 2, 0, 0));
        assert_eq!(spring, [utc(2026, 3, 29, 0, 30, 0), utc(2026, 3, 29, 1, 0, 0), utc(2026, 3, 29, 1, 30, 0)]);
        let autumn = fires(&s, london, utc(2026, 10, 24, 23, 45, 0), utc(2026, 10, 25, 2, 0, 0));
        assert_eq!(
            autumn,
            [
                utc(2026, 10, 25, 0, 0, 0),
                utc(2026, 10, 25, 0, 30, 0),
                utc(2026, 10, 25, 1, 0, 0),
                utc(2026, 10, 25, 1, 30, 0),
            ]
        );
    }

    #[test]
    fn config_file_lines() {
        let text = "\
# comment
  
IM1_LEASE=3m
export IM1_CONCURRENCY = 8
IM1_SCHEDULE=\"0 * * * *\"
IM1_TIMEZONE='Europe/London'
DATABASE_URL=postgres://x/y#not-a-comment
";
        let vars = parse_config_file(text, "im1.env").unwrap();
        assert_eq!(vars.len(), 5);
        assert_eq!(vars["IM1_LEASE"], "3m");
        assert_eq!(vars["IM1_CONCURRENCY"], "8");
        assert_eq!(vars["IM1_SCHEDULE"], "0 * * * *");
        assert_eq!(vars["IM1_TIMEZONE"], "Europe/London");
        assert_eq!(vars["DATABASE_URL"], "postgres://x/y#not-a-comment");
    }

    #[test]
    fn config_file_problems_name_lines_not_contents() {
        let text = "\
IM1_API_TOKENS SECRETTOKEN
SECRET-NAME=1
DATABSE_URL=postgres://u:SECRET@db
IM1_LEASE=1m
IM1_LEASE=2m
IM1_CONFIG=/other
";
        let found = parse_config_file(text, "im1.env").unwrap_err();
        assert_eq!(
            found,
            [
                "im1.env line 1: expected KEY=VALUE",
                "im1.env line 2: the name before '=' is not a variable name",
                "im1.env line 3: DATABSE_URL is not a known setting",
                "im1.env line 5: IM1_LEASE is already set on line 4",
                "im1.env line 6: IM1_CONFIG cannot be set inside a config file",
            ]
        );
        assert!(!found.concat().contains("SECRET"));
    }

    #[test]
    fn load_reads_a_file_and_reports_an_unreadable_one() {
        let dir = std::env::temp_dir().join(format!("im1-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("im1.env");
        std::fs::write(&path, "IM1_GUARD_MIN_CHECKS=77\n").unwrap();
        let loaded = Settings::load(Some(&path));
        std::fs::remove_dir_all(&dir).ok();
        // The environment wins over the file, so the check only means something when the
        // test process's own environment leaves this variable alone (it always should).
        if std::env::var_os("IM1_GUARD_MIN_CHECKS").is_none() {
            assert_eq!(loaded.unwrap().guard_min_checks, 77);
        }
        let missing = Settings::load(Some(Path::new("/nonexistent/im1.env"))).unwrap_err();
        assert!(
            missing.problems.contains(&"IM1_CONFIG: cannot read /nonexistent/im1.env: entity not found".to_owned())
        );
    }

    #[test]
    fn odd_values_never_panic() {
        let long = "9".repeat(10_000);
        let odd = [
            "",
            " ",
            "\0",
            "é",
            "ü:ü",
            "-",
            "+",
            ":",
            ",",
            "=",
            "\u{202e}",
            "1é",
            "5ms\u{0}",
            "1d1h1m1s1ms1",
            "http://",
            "https://[::1",
            "0 0 31 4 *",
            "*/0 * * * *",
            "0x10",
            "1e3",
            "-0",
            "∞",
            &long,
        ];
        for name in KNOWN_VARIABLES {
            for value in odd {
                // Whatever the outcome, it is a value, not a panic.
                let _ = Settings::from_vars(&vars(&[(name, value)]));
            }
        }
        for value in odd {
            let _ = parse_duration(value);
            let _ = Schedule::parse(value);
            let _ = parse_config_file(value, "f");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("IM1_LEASES", "IM1_LEASE"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            problems(&[("IM1_EMIS_MAXINFLIGHT", "3")]),
            ["IM1_EMIS_MAXINFLIGHT: not a known setting (did you mean IM1_EMIS_MAX_IN_FLIGHT?)"]
        );
    }
}
