//! Retries inside one check (`IM1_RETRY_ATTEMPTS`, `IM1_RETRY_MAX_DELAY`): a transient
//! answer is tried again after a jittered exponential delay (`backon`), never sooner than
//! the supplier's `Retry-After`, and never past the check's own deadline. A `Retry-After`
//! longer than the retry delay allows ends the check instead: the credential is then
//! rescheduled no sooner than it says. Every call is counted for the breaker, and a
//! breaker that opens meanwhile stops the retries.

use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use super::Safety;
use crate::model::Supplier;
use crate::suppliers::{Adapter, Answer, CheckTarget, Evidence, Outcome};

/// First retry delay (before jitter), when the maximum allows it.
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// `IM1_RETRY_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first call (0 = none).
    pub retries: u32,
    /// Longest wait between calls, and longest `Retry-After` waited out inside a check.
    pub max_delay: Duration,
}

impl RetryPolicy {
    fn delays(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(FIRST_DELAY.min(self.max_delay))
            .with_max_delay(self.max_delay)
            .with_max_times(self.retries as usize)
            .with_jitter()
            .build()
            // Jitter may add up to the current delay again; the maximum stays the maximum.
            .map(|d| d.min(self.max_delay))
    }
}

/// What a check's calls came to.
#[derive(Debug)]
pub struct Called {
    pub answer: Answer,
    /// Supplier calls made (1 + retries).
    pub calls: u32,
}

/// Calls `adapter` until it gives an answer that is not transient, the retries run out,
/// the deadline would pass, or the breaker opens. `probe`: the half-open breaker's single
/// call, never retried.
pub async fn call_with_retries(
    adapter: &dyn Adapter,
    target: CheckTarget<'_>,
    policy: RetryPolicy,
    safety: &Safety,
    supplier: Supplier,
    deadline: Instant,
    probe: bool,
) -> Called {
    let mut delays = policy.delays();
    let mut calls = 0;
    let breaker = if probe { "half_open_probe" } else { "closed" };
    loop {
        let call = crate::suppliers::http::Call { retry: calls, breaker };
        let answer = crate::suppliers::http::CALL.scope(call, adapter.check(target)).await;
        calls += 1;
        // The check's span (when traced) shows how many calls it took.
        tracing::Span::current().record("attempts", calls);
        let retry_after = match answer.outcome {
            Outcome::Transient { retry_after } => retry_after,
            _ => {
                safety.record_call(supplier, false);
                return Called { answer, calls };
            }
        };
        safety.record_call(supplier, true);
        if probe {
            return Called { answer, calls };
        }
        let Some(mut delay) = delays.next() else { return Called { answer, calls } };
        let retry_after = crate::defects::retry_after(retry_after);
        if let Some(after) = retry_after {
            // Waiting out a long Retry-After here would hold a slot for nothing: end the
            // check, and the schedule honours it.
            if after > policy.max_delay {
                return Called { answer, calls };
            }
            delay = delay.max(after);
        }
        if Instant::now() + delay >= deadline {
            return Called { answer, calls };
        }
        // Only a closed breaker lets a retry through; asking must not take the half-open
        // probe, which only a new check sends (and reports).
        if !safety.calls_allowed(supplier) {
            return Called { answer, calls };
        }
        tokio::time::sleep(delay).await;
        safety.metrics.retries.get_or_create(&crate::metrics::supplier_label(supplier)).inc();
    }
}

/// [`call_with_retries`] under the check's `timeout`, which bounds every call, wait and
/// retry together, once the supplier's throttle has admitted the check. Running out of time
/// is transient (evidence `check_timeout`).
pub async fn call_within(
    adapter: &dyn Adapter,
    target: CheckTarget<'_>,
    policy: RetryPolicy,
    safety: &Safety,
    supplier: Supplier,
    timeout: Duration,
    probe: bool,
) -> Answer {
    // Our own rate limit is waited for before the check's time starts: a queue behind
    // the limit is not the supplier being slow.
    let admission = match safety.throttle(supplier) {
        Some(throttle) => Some(throttle.admit_check().await),
        None => None,
    };
    let deadline = Instant::now() + timeout;
    let calls =
        tokio::time::timeout(timeout, call_with_retries(adapter, target, policy, safety, supplier, deadline, probe));
    let called = match &admission {
        Some(admission) => admission.scope(calls).await,
        None => calls.await,
    };
    match called {
        Ok(called) => called.answer,
        Err(_) => Answer::new(Outcome::transient(), Evidence::detail("check_timeout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_stop_after_the_retries() {
        let policy = RetryPolicy { retries: 3, max_delay: Duration::from_millis(300) };
        let delays: Vec<Duration> = policy.delays().collect();
        assert_eq!(delays.len(), 3);
        for d in &delays {
            assert!(*d <= Duration::from_millis(300), "{d:?}");
        }
        assert!(delays[0] >= FIRST_DELAY);
        assert_eq!(RetryPolicy { retries: 0, max_delay: Duration::from_secs(5) }.delays().count(), 0);
    }

    #[test]
    fn a_zero_maximum_means_immediate_retries() {
        let policy = RetryPolicy { retries: 2, max_delay: Duration::ZERO };
        assert!(policy.delays().all(|d| d == Duration::ZERO));
    }
}
