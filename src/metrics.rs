//! Prometheus metrics (names exactly as the contract writes them). Counters and histograms
//! are per process and add up across replicas; gauges read from the database are set at
//! scrape time and are the same in every replica (dashboards aggregate them with `max`).
//! No user id, token or ODS code is ever a label: every label here has a bounded set of
//! values.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::{LastOutcome, Status, Supplier};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SupplierLabel {
    pub supplier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub supplier: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub supplier: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub supplier: String,
    pub why: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub supplier: String,
    pub to: String,
}

/// Every `why` a claimed row can be skipped for (`im1_rows_skipped_total`), so each
/// configured supplier's series exist at 0 from the start.
pub const SKIP_REASONS: &[&str] = &[
    "unknown_key_id",
    "decryption_failed",
    "token_fields_missing",
    "supplier_not_configured",
    "supplier_stopped",
    "canary_failed",
    "breaker_open",
    "breaker_half_open",
];

/// The label set of a per-supplier metric.
pub fn supplier_label(s: Supplier) -> SupplierLabel {
    supplier(s)
}

fn supplier(s: Supplier) -> SupplierLabel {
    SupplierLabel { supplier: s.as_str().to_owned() }
}

/// Every metric the service exports, registered once per process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub checks: Family<OutcomeLabels, Counter>,
    pub check_duration: Family<SupplierLabel, Histogram>,
    pub status_changes: Family<StatusLabels, Counter>,
    pub rows_skipped: Family<SkipLabels, Counter>,
    pub supplier_config_errors: Family<SupplierLabel, Counter>,
    pub canary_failures: Family<SupplierLabel, Counter>,
    pub leases_lost: Counter,
    pub sweep_duration: Histogram,
    pub sweeps: Family<OutcomeLabels, Counter>,
    // Gauges read from the database at scrape time.
    pub credentials: Family<StatusLabels, Gauge>,
    pub refresh_required: Family<SupplierLabel, Gauge>,
    pub unverified: Family<SupplierLabel, Gauge>,
    pub last_sweep_success: Gauge<f64, AtomicU64>,
    pub next_sweep: Gauge<f64, AtomicU64>,
    pub circuit_open: Family<SupplierLabel, Gauge>,
    pub guard_held: Family<SupplierLabel, Gauge>,
    pub held_verdicts: Family<SupplierLabel, Gauge>,
    pub live_processes: Gauge,
    pub retries: Family<SupplierLabel, Counter>,
    pub breaker_transitions: Family<TransitionLabels, Counter>,
    pub guard_trips: Family<SupplierLabel, Counter>,
    /// Admin connections refused at `IM1_ADMIN_MAX_CONNECTIONS`.
    pub admin_connections_refused: Counter,
    /// Admin requests answered 503 at `IM1_ADMIN_REQUEST_TIMEOUT`.
    pub admin_requests_timed_out: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let checks = Family::<OutcomeLabels, Counter>::default();
        registry.register("im1_checks", "Token checks by supplier and outcome", checks.clone());
        let check_duration = Family::<SupplierLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "im1_check_duration_seconds",
            "Duration of one whole check, all its requests and retries",
            check_duration.clone(),
        );
        let status_changes = Family::<StatusLabels, Counter>::default();
        registry.register(
            "im1_status_changes",
            "Changes of a credential's status, by supplier and new status",
            status_changes.clone(),
        );
        let rows_skipped = Family::<SkipLabels, Counter>::default();
        registry.register(
            "im1_rows_skipped",
            "Claimed rows skipped without a check (undecryptable, token fields missing, ...)",
            rows_skipped.clone(),
        );
        let supplier_config_errors = Family::<SupplierLabel, Counter>::default();
        registry.register(
            "im1_supplier_config_errors",
            "Answers saying our own configuration is wrong",
            supplier_config_errors.clone(),
        );
        let canary_failures = Family::<SupplierLabel, Counter>::default();
        registry.register("im1_canary_failures", "Canary checks that did not answer valid", canary_failures.clone());
        let leases_lost = Counter::default();
        registry.register(
            "im1_leases_lost",
            "Verdicts dropped because their claim was lost or the token replaced meanwhile",
            leases_lost.clone(),
        );
        let sweep_duration = Histogram::new(exponential_buckets(0.1, 2.0, 16));
        registry.register("im1_sweep_duration_seconds", "Duration of whole sweeps", sweep_duration.clone());
        let sweeps = Family::<OutcomeLabels, Counter>::default();
        registry.register("im1_sweeps", "Sweeps run by this process, by supplier filter and result", sweeps.clone());

        let credentials = Family::<StatusLabels, Gauge>::default();
        registry.register("im1_credentials", "Stored credentials by supplier and status", credentials.clone());
        let refresh_required = Family::<SupplierLabel, Gauge>::default();
        registry.register(
            "im1_refresh_required",
            "Credentials whose users must fetch fresh GP credentials at their next login",
            refresh_required.clone(),
        );
        let unverified = Family::<SupplierLabel, Gauge>::default();
        registry.register(
            "im1_credentials_unverified",
            "Credentials checked but not confirmed valid for more than twice the recheck interval",
            unverified.clone(),
        );
        let last_sweep_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "im1_last_sweep_success_timestamp_seconds",
            "When the last successful sweep of any process finished (Unix time)",
            last_sweep_success.clone(),
        );
        let next_sweep = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "im1_next_sweep_timestamp_seconds",
            "When this process's scheduler fires next (Unix time; 0 when not scheduling)",
            next_sweep.clone(),
        );
        let circuit_open = Family::<SupplierLabel, Gauge>::default();
        registry.register(
            "im1_supplier_circuit_open",
            "1 while a supplier's circuit breaker is open",
            circuit_open.clone(),
        );
        let guard_held = Family::<SupplierLabel, Gauge>::default();
        registry.register(
            "im1_invalidation_guard_held",
            "1 while the mass-invalidation guard holds a supplier's verdicts",
            guard_held.clone(),
        );

        let held_verdicts = Family::<SupplierLabel, Gauge>::default();
        registry.register(
            "im1_held_verdicts",
            "Invalid verdicts the guard holds, awaiting `guard release` or `guard discard`",
            held_verdicts.clone(),
        );
        let live_processes = Gauge::default();
        registry.register(
            "im1_live_processes",
            "Live processes sharing each supplier's rate limit, as this process last saw them",
            live_processes.clone(),
        );
        let retries = Family::<SupplierLabel, Counter>::default();
        registry.register("im1_retries", "Supplier calls retried inside a check", retries.clone());
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "im1_breaker_transitions",
            "Circuit breaker state changes this process made, by new state",
            breaker_transitions.clone(),
        );
        let guard_trips = Family::<SupplierLabel, Counter>::default();
        registry.register(
            "im1_guard_trips",
            "Times this process found the invalidation guard's threshold crossed and set it holding",
            guard_trips.clone(),
        );

        let admin_connections_refused = Counter::default();
        registry.register(
            "im1_admin_connections_refused",
            "Admin port connections refused because IM1_ADMIN_MAX_CONNECTIONS were open",
            admin_connections_refused.clone(),
        );
        let admin_requests_timed_out = Counter::default();
        registry.register(
            "im1_admin_requests_timed_out",
            "Admin port requests answered 503 because they took longer than IM1_ADMIN_REQUEST_TIMEOUT",
            admin_requests_timed_out.clone(),
        );

        Metrics {
            registry,
            checks,
            check_duration,
            status_changes,
            rows_skipped,
            supplier_config_errors,
            canary_failures,
            leases_lost,
            sweep_duration,
            sweeps,
            credentials,
            refresh_required,
            unverified,
            last_sweep_success,
            next_sweep,
            circuit_open,
            guard_held,
            held_verdicts,
            live_processes,
            retries,
            breaker_transitions,
            guard_trips,
            admin_connections_refused,
            admin_requests_timed_out,
        }
    }

    /// Creates every per-supplier series at zero for the configured suppliers, so a
    /// counter's first increment is an increase an alert can see (a series that appears
    /// at 1 has no earlier sample to compare with) and dashboards show zeros, not gaps.
    /// Every labelled contract family gets its series here: checks for every outcome,
    /// skipped rows for every reason, the check duration histogram, status changes.
    pub fn init_suppliers(&self, suppliers: &[Supplier]) {
        for s in suppliers {
            let label = supplier(*s);
            for outcome in LastOutcome::ALL {
                drop(self.checks.get_or_create(&OutcomeLabels {
                    supplier: s.as_str().to_owned(),
                    outcome: outcome.as_str().to_owned(),
                }));
            }
            for why in SKIP_REASONS {
                drop(
                    self.rows_skipped
                        .get_or_create(&SkipLabels { supplier: s.as_str().to_owned(), why: why.to_string() }),
                );
            }
            for status in [Status::Valid, Status::Invalid] {
                drop(self.status_changes.get_or_create(&StatusLabels {
                    supplier: s.as_str().to_owned(),
                    status: status.as_str().to_owned(),
                }));
            }
            drop(self.check_duration.get_or_create(&label));
            drop(self.supplier_config_errors.get_or_create(&label));
            drop(self.canary_failures.get_or_create(&label));
            drop(self.retries.get_or_create(&label));
            drop(self.circuit_open.get_or_create(&label));
            drop(self.guard_held.get_or_create(&label));
            drop(self.held_verdicts.get_or_create(&label));
        }
    }

    /// 1 while the breaker stops or restricts calls (open or half-open), else 0.
    pub fn set_breaker(&self, s: Supplier, breaker: crate::model::Breaker) {
        let open = !matches!(breaker, crate::model::Breaker::Closed);
        self.circuit_open.get_or_create(&supplier(s)).set(i64::from(open));
    }

    pub fn set_guard(&self, s: Supplier, held: bool, held_verdicts: i64) {
        self.guard_held.get_or_create(&supplier(s)).set(i64::from(held));
        self.held_verdicts.get_or_create(&supplier(s)).set(held_verdicts);
    }

    pub fn breaker_transition(&self, s: Supplier, to: &str) {
        self.breaker_transitions
            .get_or_create(&TransitionLabels { supplier: s.as_str().to_owned(), to: to.to_owned() })
            .inc();
    }

    /// Counts one check (every check is counted, whatever its outcome).
    pub fn check(&self, s: Supplier, outcome: LastOutcome, took: Duration) {
        self.checks
            .get_or_create(&OutcomeLabels { supplier: s.as_str().to_owned(), outcome: outcome.as_str().to_owned() })
            .inc();
        self.check_duration.get_or_create(&supplier(s)).observe(took.as_secs_f64());
        if outcome == LastOutcome::SupplierConfigError {
            self.supplier_config_errors.get_or_create(&supplier(s)).inc();
        }
    }

    pub fn skipped(&self, s: Supplier, why: &str) {
        self.rows_skipped.get_or_create(&SkipLabels { supplier: s.as_str().to_owned(), why: why.to_owned() }).inc();
        self.checks
            .get_or_create(&OutcomeLabels {
                supplier: s.as_str().to_owned(),
                outcome: LastOutcome::Skipped.as_str().to_owned(),
            })
            .inc();
    }

    pub fn status_change(&self, s: Supplier, to: crate::model::Status) {
        self.status_changes
            .get_or_create(&StatusLabels { supplier: s.as_str().to_owned(), status: to.as_str().to_owned() })
            .inc();
    }

    /// Sets the database-read gauges from a snapshot.
    pub fn set_database_gauges(&self, snapshot: &DatabaseSnapshot) {
        self.credentials.clear();
        self.refresh_required.clear();
        self.unverified.clear();
        for s in Supplier::ALL {
            // Every status a supplier's rows can have, at 0 until the database says more.
            let statuses: &[Status] = if *s == Supplier::Microtest {
                &[Status::Unsupported]
            } else {
                &[Status::Unchecked, Status::Valid, Status::Invalid]
            };
            for status in statuses {
                self.credentials
                    .get_or_create(&StatusLabels {
                        supplier: s.as_str().to_owned(),
                        status: status.as_str().to_owned(),
                    })
                    .set(0);
            }
            self.refresh_required.get_or_create(&supplier(*s)).set(0);
            if s != &Supplier::Microtest {
                self.unverified.get_or_create(&supplier(*s)).set(0);
            }
        }
        for c in &snapshot.counts {
            let labels = StatusLabels { supplier: c.supplier.clone(), status: c.status.clone() };
            self.credentials.get_or_create(&labels).set(c.count);
            self.refresh_required
                .get_or_create(&SupplierLabel { supplier: c.supplier.clone() })
                .inc_by(c.refresh_required);
        }
        for (s, n) in &snapshot.unverified {
            self.unverified.get_or_create(&SupplierLabel { supplier: s.clone() }).set(*n);
        }
        if let Some(at) = snapshot.last_sweep_success {
            self.last_sweep_success.set(at.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// The Prometheus text format (0.0.4), for scrapers that do not ask for OpenMetrics
    /// (curl, promtool, older Prometheus): OpenMetrics names a counter's family without
    /// `_total` and ends with `# EOF`; the text format names it with `_total`, has no
    /// `# UNIT` and no end marker. The series lines are the same in both.
    pub fn encode_text(&self) -> String {
        let open = self.encode();
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .filter(|name| !name.ends_with("_total"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
            });
            match renamed {
                Some(line) => out.push_str(&line),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    /// The OpenMetrics exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What the database-read gauges show.
#[derive(Debug, Clone, Default)]
pub struct DatabaseSnapshot {
    pub counts: Vec<crate::store::status::StatusCount>,
    pub unverified: Vec<(String, i64)>,
    pub last_sweep_success: Option<chrono::DateTime<chrono::Utc>>,
}

impl DatabaseSnapshot {
    pub async fn read(pool: &sqlx::PgPool, stale_before: chrono::DateTime<chrono::Utc>) -> sqlx::Result<Self> {
        Ok(DatabaseSnapshot {
            counts: crate::store::status::counts(pool).await?,
            unverified: crate::store::status::unverified(pool, stale_before).await?,
            last_sweep_success: crate::store::sweeps::last_success(pool).await?.map(|s| s.finished_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_contract_names_with_one_total() {
        let m = Metrics::new();
        m.check(Supplier::Emis, LastOutcome::Valid, Duration::from_millis(3));
        m.check(Supplier::Tpp, LastOutcome::SupplierConfigError, Duration::from_millis(3));
        m.skipped(Supplier::Emis, "unknown_key_id");
        m.set_breaker(Supplier::Emis, crate::model::Breaker::HalfOpen);
        m.set_guard(Supplier::Tpp, true, 7);
        m.breaker_transition(Supplier::Emis, "open");
        m.retries.get_or_create(&supplier(Supplier::Vision)).inc();
        m.canary_failures.get_or_create(&supplier(Supplier::Emis)).inc();
        let text = m.encode();
        for name in [
            "im1_checks_total{supplier=\"emis\",outcome=\"valid\"} 1",
            "im1_check_duration_seconds_bucket",
            "im1_supplier_config_errors_total{supplier=\"tpp\"} 1",
            "im1_rows_skipped_total{supplier=\"emis\",why=\"unknown_key_id\"} 1",
            "im1_last_sweep_success_timestamp_seconds",
            "im1_next_sweep_timestamp_seconds",
            "im1_sweep_duration_seconds",
            "im1_supplier_circuit_open{supplier=\"emis\"} 1",
            "im1_invalidation_guard_held{supplier=\"tpp\"} 1",
            "im1_held_verdicts{supplier=\"tpp\"} 7",
            "im1_breaker_transitions_total{supplier=\"emis\",to=\"open\"} 1",
            "im1_retries_total{supplier=\"vision\"} 1",
            "im1_canary_failures_total{supplier=\"emis\"} 1",
            "im1_live_processes",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(!text.contains("_total_total"));

        let classic = m.encode_text();
        assert!(classic.contains("# TYPE im1_checks_total counter\n"), "{classic}");
        assert!(classic.contains("# HELP im1_checks_total Token checks"), "{classic}");
        assert!(classic.contains("# TYPE im1_check_duration_seconds histogram\n"));
        assert!(!classic.contains("# EOF"));
        let series = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(series(&classic), series(&text), "the same series in both formats");
    }
}
