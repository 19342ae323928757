//! Canary probes: at the start of every sweep, each supplier's canary credentials (known
//! good, marked by an operator) are checked first. If any of them does not answer valid,
//! the supplier is not trusted for verdicts in that sweep: its rows are skipped without a
//! call. Canaries are probes, outside the claim rules: every process may check them every
//! sweep, and their answers never change the credential's own standing (they are recorded
//! on the canary row instead).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::{Engine, lock};
use crate::model::Supplier;
use crate::safety::{Admission, retry};
use crate::store::canaries::{self, Probe};
use crate::suppliers::{Answer, CheckTarget, Evidence, Outcome};
use crate::token::Token;

/// How long a priority-only run (an RP's login-time check between sweeps) may rely on the
/// last canary results instead of probing again.
const REUSE_FOR: Duration = Duration::from_secs(60);

/// The last canary result per supplier, with when it was taken (true: a canary failed).
pub type Cache = std::sync::Mutex<HashMap<Supplier, (Instant, bool)>>;

impl Engine {
    /// Probes the canaries of `suppliers` and returns those with a failing canary. A
    /// priority-only run reuses results younger than a minute. Database trouble reading
    /// the canaries fails them all (no verdicts without the gate's say-so).
    pub(super) async fn probe_canaries(
        &self,
        suppliers: &[Supplier],
        dry_run: bool,
        priority_only: bool,
    ) -> HashSet<Supplier> {
        let mut failed = HashSet::new();
        for supplier in suppliers {
            if priority_only
                && let Some((at, result)) = lock(&self.canaries).get(supplier).copied()
                && at.elapsed() < REUSE_FOR
            {
                if result {
                    failed.insert(*supplier);
                }
                continue;
            }
            let result = self.probe_supplier(*supplier, dry_run).await;
            lock(&self.canaries).insert(*supplier, (Instant::now(), result));
            if result {
                failed.insert(*supplier);
            }
        }
        failed
    }

    /// True when any of `supplier`'s canaries failed. A span (debug level) per supplier's
    /// canaries: how many, how many failed.
    #[tracing::instrument(level = "debug", name = "canaries", skip_all, fields(supplier = %supplier, probes = tracing::field::Empty, failed = tracing::field::Empty))]
    async fn probe_supplier(&self, supplier: Supplier, dry_run: bool) -> bool {
        let probes = match canaries::for_supplier(&self.pool, supplier).await {
            Ok(probes) => probes,
            Err(e) => {
                tracing::warn!(error = %e, supplier = %supplier, "could not read canaries: no verdicts for this supplier in this sweep");
                return true;
            }
        };
        let span = tracing::Span::current();
        span.record("probes", probes.len());
        let mut any_failed = false;
        for probe in probes {
            // While the breaker is open nothing is called, canaries included: the
            // supplier's rows are skipped anyway.
            let Some(answer) = self.probe_one(&probe).await else {
                return any_failed;
            };
            let passed = answer.outcome == Outcome::Valid;
            let evidence = serde_json::to_value(&answer.evidence).unwrap_or_default();
            if !passed {
                any_failed = true;
                span.record("failed", true);
                crate::telemetry::set_error(&span, "a canary did not answer valid");
                self.metrics.canary_failures.get_or_create(&crate::metrics::supplier_label(supplier)).inc();
                tracing::error!(
                    user_id = %probe.user_id,
                    supplier = %supplier,
                    ods_code = %probe.ods_code,
                    outcome = answer.outcome.kind(),
                    evidence = %evidence,
                    "canary did not answer valid: no verdicts for this supplier in this sweep"
                );
            }
            if !dry_run
                && let Err(e) = canaries::record_probe(
                    &self.pool,
                    &probe.user_id,
                    answer.outcome.kind(),
                    &evidence,
                    self.clock.now(),
                )
                .await
            {
                tracing::warn!(error = %e, "could not record a canary probe");
            }
        }
        any_failed
    }

    /// One canary check, with the same retries and timeout as any check; `None` when the
    /// breaker lets no call through. While the breaker is half-open a canary is the best
    /// probe there is (a credential known to be good), so the first canary to call takes
    /// the probe, is called once, and reports: its answer closes the breaker or opens it
    /// for another cool-off, as a row's would. Only a canary that will really call takes it.
    async fn probe_one(&self, probe: &Probe) -> Option<Answer> {
        let token = match self.keys.decrypt(&probe.user_id, &probe.token_ciphertext) {
            Ok(plaintext) => match Token::from_plaintext(probe.supplier, plaintext.expose_secret()) {
                Ok(token) => token,
                Err(_) => return Some(Answer::new(Outcome::transient(), Evidence::detail("token_fields_missing"))),
            },
            Err(e) => return Some(Answer::new(Outcome::transient(), Evidence::detail(e.label()))),
        };
        let Some(adapter) = self.adapters.get(&probe.supplier) else {
            return Some(Answer::new(Outcome::transient(), Evidence::detail("supplier_not_configured")));
        };
        let breaker_probe = match self.safety.admit(probe.supplier) {
            Admission::Call => false,
            Admission::Probe => true,
            Admission::Skip { .. } => return None,
        };
        let target = CheckTarget { ods_code: &probe.ods_code, token: &token };
        let mut answer = retry::call_within(
            adapter.as_ref(),
            target,
            self.retry,
            &self.safety,
            probe.supplier,
            self.limits.check_timeout,
            breaker_probe,
        )
        .await;
        answer.evidence.scrub(&token.secrets());
        if breaker_probe {
            self.safety.probe_result(probe.supplier, &answer.outcome, &answer.evidence).await;
        }
        Some(answer)
    }
}
