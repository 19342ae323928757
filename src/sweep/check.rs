//! One credential's check: decrypt, call the adapter under the check timeout, classify,
//! decide. Everything that can go wrong becomes a [`Done`] value; nothing here panics or
//! writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use super::Engine;
use crate::clock::SharedClock;
use crate::crypto::Keyring;
use crate::metrics::Metrics;
use crate::model::{LastOutcome, Status, Supplier};
use crate::policy::{self, Observation, Rules};
use crate::shutdown::Shutdown;
use crate::store::claims::{Claimed, Verdict};
use crate::suppliers::{Adapter, Answer, CheckTarget, Evidence, Outcome};
use crate::token::Token;

/// A finished check, on its way to the writer.
#[derive(Debug)]
pub enum Done {
    /// A decision to write.
    Verdict { verdict: Verdict, supplier: Supplier, ods_code: String },
    /// Shutdown came before the check started: give the claim back.
    Release { user_id: String, fence: i64 },
}

/// What every check shares.
pub(super) struct Context {
    clock: SharedClock,
    keys: Arc<Keyring>,
    adapters: HashMap<Supplier, Arc<dyn Adapter>>,
    metrics: Arc<Metrics>,
    rules: Rules,
    check_timeout: Duration,
}

impl Context {
    pub(super) fn from_engine(engine: &Engine) -> Self {
        Context {
            clock: engine.clock.clone(),
            keys: engine.keys.clone(),
            adapters: engine.adapters.clone(),
            metrics: engine.metrics.clone(),
            rules: engine.rules.clone(),
            check_timeout: engine.limits.check_timeout,
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

    async fn check(&self, row: Claimed) -> Done {
        let started = Instant::now();
        let token = match self.usable_token(&row) {
            Ok(token) => token,
            Err(why) => {
                tracing::warn!(
                    user_id = %row.user_id,
                    supplier = %row.supplier,
                    why,
                    "stored credential cannot be used: skipped, no verdict"
                );
                self.metrics.skipped(row.supplier, why);
                let evidence = Evidence::detail(why);
                let observation = Observation::NoVerdict { kind: LastOutcome::Skipped, retry_after: None };
                return self.decided(row, &observation, evidence);
            }
        };
        let answer = match self.adapters.get(&row.supplier) {
            Some(adapter) => {
                let target = CheckTarget { ods_code: &row.ods_code, token: &token };
                match tokio::time::timeout(self.check_timeout, adapter.check(target)).await {
                    Ok(answer) => answer,
                    Err(_) => Answer::new(Outcome::transient(), Evidence::detail("check_timeout")),
                }
            }
            // Only configured suppliers are claimed; this is a defensive no-verdict.
            None => Answer::new(Outcome::transient(), Evidence::detail("supplier_not_configured")),
        };
        let Answer { outcome, mut evidence } = answer;
        evidence.scrub(&token.secrets());
        let observation = match outcome {
            Outcome::Valid => Observation::Valid,
            Outcome::Invalid(reason) => Observation::Invalid(reason),
            Outcome::Transient { retry_after } => Observation::NoVerdict { kind: LastOutcome::Transient, retry_after },
            Outcome::PracticeUnavailable => {
                Observation::NoVerdict { kind: LastOutcome::PracticeUnavailable, retry_after: None }
            }
            Outcome::SupplierConfigError => {
                Observation::NoVerdict { kind: LastOutcome::SupplierConfigError, retry_after: None }
            }
        };
        let supplier = row.supplier;
        let done = self.decided(row, &observation, evidence);
        if let Done::Verdict { verdict, .. } = &done {
            let outcome = verdict.decision.standing.last_outcome.unwrap_or(LastOutcome::Transient);
            self.metrics.check(supplier, outcome, started.elapsed());
        }
        done
    }

    /// Decrypts and validates the stored token; the error is the skip reason label.
    fn usable_token(&self, row: &Claimed) -> Result<Token, &'static str> {
        let ciphertext = row.token_ciphertext.as_deref().ok_or("token_missing")?;
        let plaintext = self.keys.decrypt(&row.user_id, ciphertext).map_err(|e| e.label())?;
        Token::from_plaintext(row.supplier, plaintext.expose_secret()).map_err(|_| "token_fields_missing")
    }

    fn decided(&self, row: Claimed, observation: &Observation, evidence: Evidence) -> Done {
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
                held: None,
            },
            supplier: row.supplier,
            ods_code: row.ods_code,
        }
    }
}

/// Whether a status is a verdict RP backends act on (used by the writer's logging).
pub(super) fn is_flagging(status: Status, refresh_required: bool) -> bool {
    status == Status::Invalid && refresh_required
}
