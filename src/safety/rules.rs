//! The breaker's and the guard's rules as pure functions of window counts, state and
//! time, tested alone. The runner (`super::Safety`) only feeds them and persists what
//! they decide.

use std::time::Duration;

use crate::store::safety::Counts;

/// `IM1_BREAKER_*`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Share of transient calls in the window that opens the breaker, in (0, 1].
    pub threshold: f64,
    /// The fewest calls in the window before it may open.
    pub min_calls: u32,
    /// How long it stays open before half-open probes decide.
    pub cooldown: Duration,
    /// The rolling window.
    pub window: Duration,
}

/// `IM1_GUARD_*`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Share of checks answering invalid that makes the guard hold, in (0, 1].
    pub threshold: f64,
    /// The fewest token answers in the window before it may hold.
    pub min_checks: u32,
    pub window: Duration,
}

/// Whether a closed breaker opens on `window` (calls and transient calls).
pub fn breaker_trips(config: &BreakerConfig, window: &Counts) -> bool {
    window.calls > 0
        && window.calls >= i64::from(config.min_calls)
        && window.transient as f64 >= config.threshold * window.calls as f64
}

/// Whether the guard starts holding on `window` (token answers and invalid ones).
pub fn guard_trips(config: &GuardConfig, window: &Counts) -> bool {
    window.answers > 0
        && window.answers >= i64::from(config.min_checks)
        && window.invalid as f64 > config.threshold * window.answers as f64
}

/// The evidence stored when a breaker opens: what the window held.
pub fn breaker_evidence(window: &Counts, config: &BreakerConfig) -> serde_json::Value {
    serde_json::json!({
        "calls": window.calls,
        "transient": window.transient,
        "share": share(window.transient, window.calls),
        "threshold": config.threshold,
        "window_seconds": config.window.as_secs(),
    })
}

/// The evidence stored when the guard starts holding.
pub fn guard_evidence(window: &Counts, config: &GuardConfig) -> serde_json::Value {
    serde_json::json!({
        "checks": window.answers,
        "invalid": window.invalid,
        "share": share(window.invalid, window.answers),
        "threshold": config.threshold,
        "window_seconds": config.window.as_secs(),
    })
}

fn share(part: i64, whole: i64) -> f64 {
    if whole == 0 { 0.0 } else { (part as f64 / whole as f64 * 1000.0).round() / 1000.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> BreakerConfig {
        BreakerConfig {
            threshold: 0.5,
            min_calls: 20,
            cooldown: Duration::from_secs(60),
            window: Duration::from_secs(60),
        }
    }

    fn guard() -> GuardConfig {
        GuardConfig { threshold: 0.1, min_checks: 50, window: Duration::from_secs(3600) }
    }

    fn calls(calls: i64, transient: i64) -> Counts {
        Counts { calls, transient, ..Counts::default() }
    }

    fn answers(answers: i64, invalid: i64) -> Counts {
        Counts { answers, invalid, ..Counts::default() }
    }

    #[test]
    fn breaker_needs_the_minimum_and_the_share() {
        let c = breaker();
        assert!(!breaker_trips(&c, &calls(19, 19)), "below the minimum count");
        assert!(breaker_trips(&c, &calls(20, 10)), "exactly the threshold opens it");
        assert!(!breaker_trips(&c, &calls(20, 9)));
        assert!(breaker_trips(&c, &calls(1000, 999)));
        assert!(!breaker_trips(&c, &calls(0, 0)));
        let all = BreakerConfig { threshold: 1.0, min_calls: 1, ..c };
        assert!(breaker_trips(&all, &calls(3, 3)), "a threshold of 1 opens on all-transient windows");
        assert!(!breaker_trips(&all, &calls(3, 2)));
    }

    #[test]
    fn guard_needs_the_minimum_and_more_than_the_share() {
        let c = guard();
        assert!(!guard_trips(&c, &answers(49, 49)), "below the minimum count");
        assert!(!guard_trips(&c, &answers(50, 5)), "exactly 10 % is not more than 10 %");
        assert!(guard_trips(&c, &answers(50, 6)));
        assert!(guard_trips(&c, &answers(60, 20)));
        let all = GuardConfig { threshold: 1.0, ..c };
        assert!(!guard_trips(&all, &answers(100, 100)), "a threshold of 1 never holds");
    }

    #[test]
    fn evidence_reports_the_window() {
        let e = breaker_evidence(&calls(30, 20), &breaker());
        assert_eq!(e["calls"], 30);
        assert_eq!(e["share"], 0.667);
        let e = guard_evidence(&answers(60, 20), &guard());
        assert_eq!(e["invalid"], 20);
        assert_eq!(e["window_seconds"], 3600);
    }
}
