//! Verdict rules: pure functions from a credential's current standing and what just
//! happened to its next standing. No database, no wire formats, no clock of their own:
//! `now` and the jitter are passed in, so every rule is tested alone and exactly.
//!
//! The rules, in one place:
//! - Only a supplier's explicit invalid answer moves a token towards `invalid`, and only a
//!   second one at least `confirm_after` after the first confirms it (two strikes).
//! - A valid answer clears strikes, reason, refresh flags and attempts.
//! - Anything that is not a verdict (transient, practice unavailable, our own config,
//!   held, skipped) never changes `status` or `refresh_required`, and neither adds nor
//!   clears a strike. It backs off exponentially and never undercuts a `Retry-After`.
//! - The loop guard: once `refresh_attempts` reaches the limit, a confirmed invalid token
//!   is `refresh_exhausted` and the user is not prompted again until the window ends.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::clock::delta;
use crate::model::{LastOutcome, Reason, Status};

/// The configured rules (from `Settings`).
#[derive(Debug, Clone)]
pub struct Rules {
    pub recheck_interval: Duration,
    pub confirm_after: Duration,
    pub max_refresh_attempts: u32,
    pub refresh_suppression: Duration,
    /// First backoff step after a check that reached no verdict.
    pub backoff_base: Duration,
    /// Longest backoff step.
    pub backoff_cap: Duration,
}

impl Rules {
    /// Backoff starts at one minute and never exceeds an hour or the recheck interval.
    pub fn new(
        recheck_interval: Duration,
        confirm_after: Duration,
        max_refresh_attempts: u32,
        refresh_suppression: Duration,
    ) -> Self {
        let backoff_cap = recheck_interval.min(Duration::from_secs(3600)).max(Duration::from_secs(1));
        Rules {
            recheck_interval,
            confirm_after,
            max_refresh_attempts,
            refresh_suppression,
            backoff_base: Duration::from_secs(60).min(backoff_cap),
            backoff_cap,
        }
    }
}

/// A credential's standing: every column the rules read or write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub status: Status,
    pub reason: Option<Reason>,
    pub refresh_required: bool,
    pub refresh_attempts: i32,
    pub refresh_suppressed_until: Option<DateTime<Utc>>,
    pub strike_at: Option<DateTime<Utc>>,
    pub strike_reason: Option<Reason>,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<LastOutcome>,
    pub last_verified_at: Option<DateTime<Utc>>,
    pub invalidated_at: Option<DateTime<Utc>>,
    pub failures: i32,
}

impl Standing {
    /// A freshly stored token that nobody has checked.
    pub fn unchecked() -> Self {
        Standing {
            status: Status::Unchecked,
            reason: None,
            refresh_required: false,
            refresh_attempts: 0,
            refresh_suppressed_until: None,
            strike_at: None,
            strike_reason: None,
            last_checked_at: None,
            last_outcome: None,
            last_verified_at: None,
            invalidated_at: None,
            failures: 0,
        }
    }

    /// The row a Microtest credential gets: nothing to check, nothing to refresh.
    pub fn unsupported() -> Self {
        Standing { status: Status::Unsupported, ..Standing::unchecked() }
    }
}

/// What a check came to, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Valid,
    Invalid(Reason),
    /// No verdict: `kind` is what `last_outcome` records (transient, practice_unavailable,
    /// supplier_config_error, held, skipped); `retry_after` is the earliest next try.
    NoVerdict {
        kind: LastOutcome,
        retry_after: Option<Duration>,
    },
    /// No call was made because our own circuit breaker stopped it: `skipped`, no verdict,
    /// and no backoff growth either (the supplier's trouble is the breaker's business, not
    /// this credential's): due again after `retry_after` (never sooner; jitter only adds).
    Deferred {
        retry_after: Duration,
    },
}

/// The next standing, when to check again, and what must be recorded about the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub standing: Standing,
    pub next_check_at: DateTime<Utc>,
    /// An event row is due: the outcome differs from the last one, or the status or
    /// `refresh_required` changed.
    pub event: bool,
    /// A NOTIFY is due: the status or `refresh_required` changed.
    pub notify: bool,
}

/// `base` scaled by `1 + 0.1 * jitter` (`jitter` in −1..=1): spreads rechecks so a bulk
/// import does not come due again all in the same second.
fn jittered(base: Duration, jitter: f64) -> TimeDelta {
    let factor = 1.0 + 0.1 * jitter.clamp(-1.0, 1.0);
    delta(base.mul_f64(factor))
}

/// When to try again after `failures` checks in a row reached no verdict.
pub fn backoff(rules: &Rules, failures: i32, jitter: f64) -> TimeDelta {
    let exponent = (failures.max(1) - 1).min(30) as u32;
    let step = rules.backoff_base.saturating_mul(1u32 << exponent.min(31)).min(rules.backoff_cap);
    jittered(step, jitter)
}

/// Applies one check's observation to a credential's standing.
///
/// `jitter` is a random number in −1..=1 from the caller.
pub fn decide(old: &Standing, observation: &Observation, now: DateTime<Utc>, rules: &Rules, jitter: f64) -> Decision {
    let mut new = old.clone();
    let next_check_at;
    match observation {
        Observation::Valid => {
            new.status = Status::Valid;
            new.reason = None;
            new.refresh_required = false;
            new.refresh_attempts = 0;
            new.refresh_suppressed_until = None;
            new.strike_at = None;
            new.strike_reason = None;
            new.last_checked_at = Some(now);
            new.last_outcome = Some(LastOutcome::Valid);
            new.last_verified_at = Some(now);
            new.invalidated_at = None;
            new.failures = 0;
            next_check_at = now + jittered(rules.recheck_interval, jitter);
        }
        Observation::Invalid(reason) => {
            new.last_checked_at = Some(now);
            new.failures = 0;
            let already_invalid = old.status == Status::Invalid;
            let confirm_at = old.strike_at.map(|at| at + delta(rules.confirm_after));
            if already_invalid || confirm_at.is_some_and(|at| now >= at) {
                confirm_invalid(&mut new, *reason, now, rules);
                next_check_at = now + jittered(rules.recheck_interval, jitter);
            } else if let Some(confirm_at) = confirm_at {
                // A second invalid answer too soon (an operator's recheck): still suspect,
                // confirmed no sooner than the rule allows.
                new.last_outcome = Some(LastOutcome::Suspect);
                next_check_at = confirm_at;
            } else {
                new.strike_at = Some(now);
                new.strike_reason = Some(*reason);
                new.last_outcome = Some(LastOutcome::Suspect);
                next_check_at = now + delta(rules.confirm_after);
            }
        }
        Observation::NoVerdict { kind, retry_after } => {
            // Skipped rows made no check: they keep last_checked_at.
            if *kind != LastOutcome::Skipped {
                new.last_checked_at = Some(now);
            }
            new.last_outcome = Some(*kind);
            new.failures = old.failures.saturating_add(1);
            let mut next = now + backoff(rules, new.failures, jitter);
            if let Some(after) = retry_after {
                next = next.max(now + delta(*after));
            }
            // A pending strike is confirmed no sooner than its window allows.
            if let Some(at) = old.strike_at {
                next = next.max(at + delta(rules.confirm_after));
            }
            next_check_at = next;
        }
        Observation::Deferred { retry_after } => {
            new.last_outcome = Some(LastOutcome::Skipped);
            let mut next = now + jittered(*retry_after, jitter.abs());
            if let Some(at) = old.strike_at {
                next = next.max(at + delta(rules.confirm_after));
            }
            next_check_at = next;
        }
    }
    finish(old, new, next_check_at)
}

/// A confirmed invalid verdict, through the loop guard.
fn confirm_invalid(new: &mut Standing, reason: Reason, now: DateTime<Utc>, rules: &Rules) {
    // When a suppression window has ended, attempts start again from zero.
    if new.refresh_suppressed_until.is_some_and(|until| until <= now) {
        new.refresh_suppressed_until = None;
        new.refresh_attempts = 0;
    }
    let suppressed = new.refresh_suppressed_until.is_some();
    let exhausted = i64::from(new.refresh_attempts) >= i64::from(rules.max_refresh_attempts);
    if suppressed || exhausted {
        new.reason = Some(Reason::RefreshExhausted);
        new.refresh_required = false;
        if !suppressed {
            new.refresh_suppressed_until = Some(now + delta(rules.refresh_suppression));
        }
    } else {
        new.reason = Some(reason);
        new.refresh_required = true;
    }
    if new.status != Status::Invalid {
        new.invalidated_at = Some(now);
    }
    new.status = Status::Invalid;
    new.strike_at = None;
    new.strike_reason = None;
    new.last_outcome = Some(LastOutcome::Invalid);
}

/// The RP wrote a different token for this user (import or API). `old` is the row's
/// standing before, if there was one.
pub fn replace_token(old: Option<&Standing>, now: DateTime<Utc>) -> Decision {
    let mut new = Standing::unchecked();
    if let Some(old) = old {
        // The loop guard outlives tokens: the window and attempts carry over.
        let window_over = old.refresh_suppressed_until.is_some_and(|until| until <= now);
        if !window_over {
            new.refresh_suppressed_until = old.refresh_suppressed_until;
            new.refresh_attempts = old.refresh_attempts;
        }
        // A new token for a user whose token was invalid is one refresh attempt; a first
        // import, or replacing a token that was not invalid, is not.
        if old.status == Status::Invalid {
            new.refresh_attempts = new.refresh_attempts.saturating_add(1);
        }
    }
    let notify = old.is_none_or(|o| o.status != new.status || o.refresh_required != new.refresh_required);
    // A new row, or a changed token, is always worth an event; it is due at once.
    Decision { standing: new, next_check_at: now, event: true, notify }
}

/// The RP reports that a refresh through NHS login produced nothing usable.
pub fn refresh_failed(old: &Standing, now: DateTime<Utc>, rules: &Rules) -> Standing {
    let mut new = old.clone();
    if new.refresh_suppressed_until.is_some_and(|until| until <= now) {
        new.refresh_suppressed_until = None;
        new.refresh_attempts = 0;
    }
    new.refresh_attempts = new.refresh_attempts.saturating_add(1);
    if new.status == Status::Invalid
        && new.refresh_suppressed_until.is_none()
        && i64::from(new.refresh_attempts) >= i64::from(rules.max_refresh_attempts)
    {
        new.reason = Some(Reason::RefreshExhausted);
        new.refresh_required = false;
        new.refresh_suppressed_until = Some(now + delta(rules.refresh_suppression));
    }
    new
}

fn finish(old: &Standing, new: Standing, next_check_at: DateTime<Utc>) -> Decision {
    let notify = old.status != new.status || old.refresh_required != new.refresh_required;
    let event = notify || old.last_outcome != new.last_outcome || old.reason != new.reason;
    Decision { standing: new, next_check_at, event, notify }
}

#[cfg(test)]
mod tests;
