//! One supplier's request rate and in-flight cap, for this process: its share of the
//! configured limits (`IM1_<SUPPLIER>_RATE`, `_BURST`, `_MAX_IN_FLIGHT`), which are for
//! all live processes together. The share is set by the sync from the number of live
//! processes; every HTTP request to the supplier passes [`Throttle::admit`] first.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;

type Limiter = RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>;

/// The limits configured for all processes together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub rate: f64,
    pub burst: u32,
    pub max_in_flight: u32,
}

/// This process's share of one supplier's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub processes: u32,
    pub rate: f64,
    pub burst: u32,
    pub max_in_flight: u32,
}

impl Limits {
    /// Each of `processes` live processes takes an equal part; burst and in-flight never
    /// fall below one, so every process can make progress.
    pub fn share(&self, processes: u32) -> Share {
        let n = processes.max(1);
        Share {
            processes: n,
            rate: self.rate / f64::from(n),
            burst: (self.burst / n).max(1),
            max_in_flight: (self.max_in_flight / n).max(1),
        }
    }
}

pub struct Throttle {
    limits: Limits,
    clock: DefaultClock,
    state: RwLock<(Share, Arc<Limiter>)>,
    in_flight: Mutex<u32>,
    released: Notify,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").field("limits", &self.limits).field("share", &self.share()).finish()
    }
}

/// Holds one in-flight slot until dropped.
#[must_use]
pub struct Permit {
    throttle: Arc<Throttle>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut n = lock(&self.throttle.in_flight);
        *n = n.saturating_sub(1);
        drop(n);
        self.throttle.released.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn limiter(share: &Share, clock: &DefaultClock) -> Arc<Limiter> {
    // One token every 1/rate seconds, up to `burst` saved. Rates are validated above 0;
    // a period of at least a nanosecond keeps the quota valid for any rate.
    let period = Duration::from_secs_f64(1.0 / share.rate.max(1e-9)).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(share.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
    Arc::new(RateLimiter::direct_with_clock(quota, clock.clone()))
}

impl Throttle {
    /// A throttle holding the whole of `limits` (one process) until told otherwise.
    pub fn new(limits: Limits) -> Arc<Self> {
        let clock = DefaultClock::default();
        let share = limits.share(1);
        let limiter = limiter(&share, &clock);
        Arc::new(Throttle {
            limits,
            clock,
            state: RwLock::new((share, limiter)),
            in_flight: Mutex::new(0),
            released: Notify::new(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn share(&self) -> Share {
        self.state.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Takes `1/processes` of the limits. A new share starts with a full burst of its own
    /// size; it is only rebuilt when the number of processes changes.
    pub fn set_processes(&self, processes: u32) {
        let share = self.limits.share(processes);
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            if state.0 == share {
                return;
            }
            *state = (share, limiter(&share, &self.clock));
        }
        // A larger in-flight share may admit waiters now.
        self.released.notify_waiters();
    }

    /// Waits for an in-flight slot, then for a request token. The slot is held until the
    /// permit is dropped (when the request's answer has been read).
    pub async fn admit(self: &Arc<Self>) -> Permit {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut n = lock(&self.in_flight);
                if *n < self.share().max_in_flight {
                    *n += 1;
                    break;
                }
            }
            released.await;
        }
        let permit = Permit { throttle: self.clone() };
        loop {
            let limiter = self.state.read().unwrap_or_else(|p| p.into_inner()).1.clone();
            match limiter.check() {
                Ok(()) => return permit,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
                }
            }
        }
    }

    /// Requests in flight now (for tests and status).
    pub fn in_flight(&self) -> u32 {
        *lock(&self.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_divide_the_limits_and_never_reach_zero() {
        let limits = Limits { rate: 50.0, burst: 50, max_in_flight: 32 };
        let one = limits.share(1);
        assert_eq!((one.rate, one.burst, one.max_in_flight), (50.0, 50, 32));
        let three = limits.share(3);
        assert!((three.rate - 50.0 / 3.0).abs() < 1e-9);
        assert_eq!((three.burst, three.max_in_flight), (16, 10));
        let many = limits.share(100);
        assert_eq!((many.burst, many.max_in_flight), (1, 1));
        assert_eq!(limits.share(0), one, "no live process counted still means this one");
    }

    #[tokio::test]
    async fn the_in_flight_cap_holds_and_a_released_slot_admits_the_next() {
        let throttle = Throttle::new(Limits { rate: 1e6, burst: 1000, max_in_flight: 2 });
        let a = throttle.admit().await;
        let _b = throttle.admit().await;
        assert_eq!(throttle.in_flight(), 2);
        let waiting = tokio::spawn({
            let throttle = throttle.clone();
            async move {
                let _c = throttle.admit().await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a third request waits for a slot");
        drop(a);
        waiting.await.unwrap();
        assert_eq!(throttle.in_flight(), 1);
    }

    #[tokio::test]
    async fn a_larger_share_admits_waiters_at_once() {
        let throttle = Throttle::new(Limits { rate: 1e6, burst: 1000, max_in_flight: 2 });
        throttle.set_processes(2);
        let _a = throttle.admit().await;
        let waiting = tokio::spawn({
            let throttle = throttle.clone();
            async move {
                let _b = throttle.admit().await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        throttle.set_processes(1);
        waiting.await.unwrap();
    }

    #[tokio::test]
    async fn the_burst_is_spent_before_the_rate_applies() {
        // A rate of one a day: only the burst can be admitted without waiting.
        let throttle = Throttle::new(Limits { rate: 1.0 / 86_400.0, burst: 3, max_in_flight: 100 });
        for _ in 0..3 {
            drop(throttle.admit().await);
        }
        let fourth = tokio::time::timeout(Duration::from_millis(50), throttle.admit()).await;
        assert!(fourth.is_err(), "the fourth request waits for the rate");
    }
}
