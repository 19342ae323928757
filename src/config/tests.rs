//! The whole of `Settings::from_vars` and its helpers, through the plain variable map. One
//! file although long: most cases read several areas at once (a cross-check, every problem
//! in one pass, the full example deployment), so splitting by area would split them.

use super::reader::edit_distance;
use super::*;
use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
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
    assert!(s.require_keys().unwrap_err().to_string().starts_with("IM1_ENCRYPTION_KEYS is required for this command"));
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
        ("IM1_BREAKER_MIN_CALLS", "-1", "IM1_BREAKER_MIN_CALLS: must be a whole number from 1 to 1000000 (got \"-1\")"),
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
        ("IM1_VISION_SIGNING_KEY", "/a.key", "IM1_VISION_SIGNING_CERT: is required when IM1_VISION_SIGNING_KEY is set"),
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
    assert!(missing.problems.contains(&"IM1_CONFIG: cannot read /nonexistent/im1.env: entity not found".to_owned()));
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
