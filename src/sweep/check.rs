//! One credential's check: decrypt, call the adapter under the check timeout, classify,
//! decide. Everything that can go wrong becomes a [`Done`] value; nothing here panics or
//! writes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use super::{Engine, lock};
use crate::clock::SharedClock;
use crate::crypto::Keyring;
use crate::metrics::Metrics;
use crate::model::{LastOutcome, Reason, Status, Supplier};
use crate::policy::{self, Observation, Rules};
use crate::safety::retry::{self, RetryPolicy};
use crate::safety::{Admission, Safety};
use crate::shutdown::Shutdown;
use crate::store::claims::{Claimed, Verdict};
use crate::suppliers::{Adapter, Answer, CheckTarget, Evidence, Outcome};
use crate::token::Token;

/// How long a check turned away by a half-open breaker (its probe is out) waits.
const HALF_OPEN_RETRY: Duration = Duration::from_secs(5);

/// A finished check, on its way to the writer.
#[derive(Debug)]
pub enum Done {
    /// A decision to write.
    Verdict { verdict: Verdict, supplier: Supplier, ods_code: String },
    /// Shutdown came before the check started: give the claim back.
    Release { user_id: String, fence: i64 },
}

/// Suppliers that give no verdicts for the rest of this sweep: a canary failed at its
/// start, or a supplier said our configuration is wrong.
#[derive(Debug, Default)]
pub struct Gates {
    canary_failed: HashSet<Supplier>,
    stopped: Mutex<HashSet<Supplier>>,
}

impl Gates {
    pub fn new(canary_failed: HashSet<Supplier>) -> Self {
        Gates { canary_failed, stopped: Mutex::new(HashSet::new()) }
    }

    /// Why `supplier`'s checks make no call in this sweep, if they don't.
    pub fn closed(&self, supplier: Supplier) -> Option<&'static str> {
        if self.canary_failed.contains(&supplier) {
            Some("canary_failed")
        } else if lock(&self.stopped).contains(&supplier) {
            Some("supplier_stopped")
        } else {
            None
        }
    }

    /// Stops `supplier` for the rest of the sweep; true the first time.
    pub fn stop(&self, supplier: Supplier) -> bool {
        lock(&self.stopped).insert(supplier)
    }

    pub fn is_stopped(&self, supplier: Supplier) -> bool {
        lock(&self.stopped).contains(&supplier)
    }

    pub fn stopped(&self) -> Vec<Supplier> {
        let mut v: Vec<Supplier> = lock(&self.stopped).iter().copied().collect();
        v.sort();
        v
    }

    pub fn canary_failed(&self) -> Vec<Supplier> {
        let mut v: Vec<Supplier> = self.canary_failed.iter().copied().collect();
        v.sort();
        v
    }
}

/// What every check shares.
pub(super) struct Context {
    clock: SharedClock,
    keys: Arc<Keyring>,
    adapters: HashMap<Supplier, Arc<dyn Adapter>>,
    metrics: Arc<Metrics>,
    safety: Arc<Safety>,
    retry: RetryPolicy,
    rules: Rules,
    check_timeout: Duration,
    gates: Arc<Gates>,
}

impl Context {
    pub(super) fn from_engine(engine: &Engine, gates: Arc<Gates>) -> Self {
        Context {
            clock: engine.clock.clone(),
            keys: engine.keys.clone(),
            adapters: engine.adapters.clone(),
            metrics: engine.metrics.clone(),
            safety: engine.safety.clone(),
            retry: engine.retry,
            rules: engine.rules.clone(),
            check_timeout: engine.limits.check_timeout,
            gates,
        }
    }

    /// Waits for a concurrency slot (or shutdown), then checks.
    pub(super) async fn run(&self, row: Claimed, running: Arc<Semaphore>, mut shutdown: Shutdown) -> Done {
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait() => None,
            p = running.acquire_owned() => p.ok(),
        };
        let Some(_permit) = permit else {
            return Done::Release { user_id: row.user_id, fence: row.fence };
        };
        self.check(row).await
    }

    /// One check, as a span (debug level: never built while tracing is off and logs are at
    /// info): supplier, ODS code, the breaker's decision, calls made, outcome, strike and
    /// reason. Never the user id or the token. A priority check links to the API request
    /// that asked for it.
    #[tracing::instrument(
        level = "debug",
        name = "check",
        skip_all,
        fields(
            supplier = %row.supplier,
            ods_code = %row.ods_code,
            priority = row.trace_parent.is_some(),
            breaker = tracing::field::Empty,
            attempts = 0u32,
            outcome = tracing::field::Empty,
            strike = tracing::field::Empty,
            reason = tracing::field::Empty,
            skipped = tracing::field::Empty,
        )
    )]
    async fn check(&self, row: Claimed) -> Done {
        crate::telemetry::link(&tracing::Span::current(), row.trace_parent.as_deref());
        let done = self.check_row(row).await;
        record_on_span(&done);
        done
    }

    async fn check_row(&self, row: Claimed) -> Done {
        let started = Instant::now();
        let supplier = row.supplier;
        let token = match self.usable_token(&row) {
            Ok(token) => token,
            Err(why) => {
                tracing::warn!(
                    user_id = %row.user_id,
                    supplier = %row.supplier,
                    why,
                    "stored credential cannot be used: skipped, no verdict"
                );
                return self.skipped(row, why, None);
            }
        };
        if let Some(why) = self.gates.closed(supplier) {
            return self.skipped(row, why, None);
        }
        let admission = self.safety.admit(supplier);
        if let Admission::Skip { why, retry_after } = admission {
            // The breaker's skip: due again once it lets calls through, with no backoff
            // growth, so a recovered supplier's credentials are not pushed out further.
            self.metrics.skipped(supplier, why);
            let observation = Observation::Deferred { retry_after: retry_after.unwrap_or(HALF_OPEN_RETRY) };
            return self.decided(row, &observation, Evidence::detail(why), None);
        }
        let probe = admission == Admission::Probe;
        tracing::Span::current().record("breaker", if probe { "half_open_probe" } else { "closed" });
        let Some(adapter) = self.adapters.get(&supplier) else {
            // Only configured suppliers are claimed; this is a defensive no-verdict.
            return self.skipped(row, "supplier_not_configured", None);
        };
        let target = CheckTarget { ods_code: &row.ods_code, token: &token };
        let answer =
            retry::call_within(adapter.as_ref(), target, self.retry, &self.safety, supplier, self.check_timeout, probe)
                .await;
        let Answer { outcome, mut evidence } = answer;
        evidence.scrub(&token.secrets());
        if probe {
            self.safety.probe_result(supplier, &outcome, &evidence).await;
        }
        let mut held = None;
        let observation = match outcome {
            Outcome::Valid => {
                self.safety.record_answer(supplier, false);
                Observation::Valid
            }
            Outcome::Invalid(reason) => {
                if self.safety.record_answer(supplier, true) {
                    held = Some(reason);
                    Observation::NoVerdict { kind: LastOutcome::Held, retry_after: None }
                } else {
                    Observation::Invalid(reason)
                }
            }
            Outcome::Transient { retry_after } => Observation::NoVerdict { kind: LastOutcome::Transient, retry_after },
            Outcome::PracticeUnavailable => {
                Observation::NoVerdict { kind: LastOutcome::PracticeUnavailable, retry_after: None }
            }
            Outcome::SupplierConfigError => {
                if self.gates.stop(supplier) {
                    tracing::error!(
                        supplier = %supplier,
                        evidence = %serde_json::to_value(&evidence).unwrap_or_default(),
                        "the supplier says our configuration is wrong: no more checks of it in this sweep"
                    );
                }
                Observation::NoVerdict { kind: LastOutcome::SupplierConfigError, retry_after: None }
            }
        };
        if let Some(reason) = held {
            tracing::info!(user_id = %row.user_id, supplier = %supplier, ods_code = %row.ods_code, reason = %reason, "invalid verdict held by the guard");
        }
        let done = self.decided(row, &observation, evidence, held);
        if let Done::Verdict { verdict, .. } = &done {
            let outcome = verdict.decision.standing.last_outcome.unwrap_or(LastOutcome::Transient);
            self.metrics.check(supplier, outcome, started.elapsed());
            self.safety.record_check(supplier);
        }
        done
    }

    /// A row skipped without a call: counted, no verdict, retried with backoff and never
    /// before `retry_after`.
    fn skipped(&self, row: Claimed, why: &'static str, retry_after: Option<Duration>) -> Done {
        self.metrics.skipped(row.supplier, why);
        let observation = Observation::NoVerdict { kind: LastOutcome::Skipped, retry_after };
        self.decided(row, &observation, Evidence::detail(why), None)
    }

    /// Decrypts and validates the stored token; the error is the skip reason label.
    fn usable_token(&self, row: &Claimed) -> Result<Token, &'static str> {
        let ciphertext = row.token_ciphertext.as_deref().ok_or("token_missing")?;
        let plaintext = self.keys.decrypt(&row.user_id, ciphertext).map_err(|e| e.label())?;
        Token::from_plaintext(row.supplier, plaintext.expose_secret()).map_err(|_| "token_fields_missing")
    }

    fn decided(&self, row: Claimed, observation: &Observation, evidence: Evidence, held: Option<Reason>) -> Done {
        let jitter = rand::random_range(-1.0..=1.0);
        let decision = policy::decide(&row.standing, observation, self.clock.now(), &self.rules, jitter);
        let evidence = serde_json::to_value(&evidence).unwrap_or_default();
        Done::Verdict {
            verdict: Verdict {
                user_id: row.user_id,
                fence: row.fence,
                from_status: row.standing.status,
                decision,
                evidence,
                held,
            },
            supplier: row.supplier,
            ods_code: row.ods_code,
        }
    }
}

/// Writes a finished check's outcome on its span: `outcome` (the `last_outcome`), `strike`
/// (`first` for a suspect answer, `confirmed` for a new invalid verdict, `repeat` for an
/// answer on an already invalid token), `reason`, and `skipped` with why. A check that got
/// no verdict from its supplier (transient, practice unavailable, our configuration) is an
/// error on the span.
fn record_on_span(done: &Done) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let Done::Verdict { verdict, .. } = done else {
        span.record("outcome", "released");
        return;
    };
    let standing = &verdict.decision.standing;
    let outcome = standing.last_outcome.map_or("none", |o| o.as_str());
    span.record("outcome", outcome);
    match standing.last_outcome {
        Some(LastOutcome::Suspect) => {
            span.record("strike", "first");
        }
        Some(LastOutcome::Invalid) if verdict.from_status == Status::Invalid => {
            span.record("strike", "repeat");
        }
        Some(LastOutcome::Invalid) => {
            span.record("strike", "confirmed");
        }
        _ => {}
    }
    let reason = match standing.last_outcome {
        Some(LastOutcome::Suspect) => standing.strike_reason,
        Some(LastOutcome::Held) => verdict.held,
        _ => standing.reason.filter(|_| standing.status == Status::Invalid),
    };
    if let Some(reason) = reason {
        span.record("reason", reason.as_str());
    }
    if matches!(standing.last_outcome, Some(LastOutcome::Skipped))
        && let Some(why) = verdict.evidence.get("detail").and_then(|d| d.as_str())
    {
        span.record("skipped", why);
    }
    if matches!(
        standing.last_outcome,
        Some(LastOutcome::Transient | LastOutcome::PracticeUnavailable | LastOutcome::SupplierConfigError)
    ) {
        crate::telemetry::set_error(&span, outcome);
    }
}

/// Whether a status is a verdict RP backends act on (used by the writer's logging).
pub(super) fn is_flagging(status: Status, refresh_required: bool) -> bool {
    status == Status::Invalid && refresh_required
}
