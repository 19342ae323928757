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
//!
//! The folder: [`Settings`] and its one reading pass live here, with the short sections for
//! the database, keys, safety rules, admin port and retries; the areas with rules of their
//! own have a file each: `suppliers` (URLs, ids, TLS files, rates), `schedule` (cron and
//! time zone), [`console`] (sign-in and roles), `duration` (`1h30m`), `file` (the optional
//! `KEY=VALUE` file) and `reader` (one variable at a time, every problem collected).

pub mod console;
mod duration;
mod file;
mod reader;
mod schedule;
mod suppliers;
#[cfg(test)]
mod tests;

pub use self::duration::{format_duration, parse_duration};
pub use self::file::parse_config_file;
use self::reader::{Floor, Reader, is_ours, secs};
pub use self::schedule::Schedule;
pub use self::suppliers::{SupplierSettings, TlsFiles};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
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
    /// The operator console (`IM1_CONSOLE_*`, validated in [`console`]); `None`
    /// when `IM1_CONSOLE_ADDR` is unset.
    pub console: Option<console::ConsoleSettings>,
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
        let console = console::parse(vars).unwrap_or_else(|problems| {
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
