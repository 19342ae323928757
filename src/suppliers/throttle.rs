//! One supplier's request rate and in-flight cap, for this process: its share of the
//! configured limits (`IM1_<SUPPLIER>_RATE`, `_BURST`, `_MAX_IN_FLIGHT`), which are for
//! all live processes together. The share is set by the sync from the number of live
//! processes; every HTTP request to the supplier passes [`Throttle::admit`] first.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// In-flight slots, handed out first come, first served (tokio's semaphore is fair),
    /// so no request starves behind later ones.
    slots: Arc<Semaphore>,
    /// Slots still to be taken out of circulation after the share shrank while they were
    /// in use: each returning permit pays one off instead of going back.
    debt: AtomicU32,
    /// Waits for a rate token one at a time, in arrival order.
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").field("limits", &self.limits).field("share", &self.share()).finish()
    }
}

/// Holds one in-flight slot until dropped.
#[must_use]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    throttle: Arc<Throttle>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        let paid = self.throttle.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1)).is_ok();
        if paid {
            permit.forget();
        }
    }
}

fn limiter(share: &Share, clock: &DefaultClock) -> Arc<Limiter> {
    // One token every 1/rate seconds, up to `burst` saved. Rates are validated above 0;
    // a period of at least a nanosecond keeps the quota valid for any rate.
    let period = Duration::from_secs_f64(1.0 / share.rate.max(1e-9)).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(share.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
    Arc::new(RateLimiter::direct_with_clock(quota, clock.clone()))
}

tokio::task_local! {
    /// Set for the duration of one check that was admitted before its timeout started:
    /// the check holds the in-flight slot, and its first request's token is paid.
    static ADMITTED: Arc<AtomicBool>;
}

/// A check's admission: its in-flight slot and its first request's rate token, taken before
/// the check's own timeout starts, so waiting for our own limit never times a check out.
/// The check's requests run inside [`CheckAdmission::scope`].
#[must_use]
pub struct CheckAdmission {
    _slot: Permit,
    prepaid: Arc<AtomicBool>,
}

impl CheckAdmission {
    /// Runs `f` (the check's calls) as this admitted check.
    pub async fn scope<F: std::future::Future>(&self, f: F) -> F::Output {
        ADMITTED.scope(self.prepaid.clone(), f).await
    }
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
            slots: Arc::new(Semaphore::new(share.max_in_flight as usize)),
            state: RwLock::new((share, limiter)),
            debt: AtomicU32::new(0),
            turn: tokio::sync::Mutex::new(()),
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
        let old = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            if state.0 == share {
                return;
            }
            let old = state.0;
            *state = (share, limiter(&share, &self.clock));
            old
        };
        if share.max_in_flight > old.max_in_flight {
            // Pay off any debt first, then hand out the rest.
            let mut more = share.max_in_flight - old.max_in_flight;
            while more > 0 && self.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1)).is_ok()
            {
                more -= 1;
            }
            self.slots.add_permits(more as usize);
        } else {
            let fewer = (old.max_in_flight - share.max_in_flight) as usize;
            let taken = self.slots.forget_permits(fewer);
            self.debt.fetch_add((fewer - taken) as u32, Ordering::AcqRel);
        }
    }

    /// Waits for an in-flight slot (first come, first served).
    async fn slot(self: &Arc<Self>) -> Permit {
        // The semaphore is never closed.
        let permit = self.slots.clone().acquire_owned().await.ok();
        Permit { permit, throttle: self.clone() }
    }

    /// Waits for one request token, in arrival order.
    async fn token(&self) {
        let _turn = self.turn.lock().await;
        loop {
            let limiter = self.state.read().unwrap_or_else(|p| p.into_inner()).1.clone();
            match limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
                }
            }
        }
    }

    /// Admits one check: an in-flight slot for its whole life and its first token.
    pub async fn admit_check(self: &Arc<Self>) -> CheckAdmission {
        let slot = self.slot().await;
        self.token().await;
        CheckAdmission { _slot: slot, prepaid: Arc::new(AtomicBool::new(true)) }
    }

    /// Admits one request. Inside an admitted check it only needs a token (the first is
    /// already paid): the check holds the slot, and its requests go one after another.
    /// Otherwise it waits for a slot, held until the permit is dropped, then a token.
    pub async fn admit(self: &Arc<Self>) -> Option<Permit> {
        if let Ok(prepaid) = ADMITTED.try_with(|p| p.clone()) {
            if !prepaid.swap(false, Ordering::AcqRel) {
                self.token().await;
            }
            return None;
        }
        let slot = self.slot().await;
        self.token().await;
        Some(slot)
    }

    /// Slots in use now (for tests and status).
    pub fn in_flight(&self) -> u32 {
        let cap = self.share().max_in_flight as usize;
        let debt = self.debt.load(Ordering::Acquire) as usize;
        (cap + debt).saturating_sub(self.slots.available_permits()) as u32
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
        assert!(a.is_some(), "outside a check, a request holds its own slot");
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
    async fn a_smaller_share_takes_slots_back_as_they_return() {
        let throttle = Throttle::new(Limits { rate: 1e6, burst: 1000, max_in_flight: 4 });
        let held: Vec<_> = futures_held(&throttle, 4).await;
        throttle.set_processes(2);
        assert_eq!(throttle.in_flight(), 4, "slots in use are not taken away");
        drop(held);
        assert_eq!(throttle.in_flight(), 0);
        let again = futures_held(&throttle, 2).await;
        let third = tokio::time::timeout(Duration::from_millis(50), throttle.admit()).await;
        assert!(third.is_err(), "the share is now two slots");
        drop(again);
    }

    async fn futures_held(throttle: &Arc<Throttle>, n: usize) -> Vec<Option<Permit>> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(throttle.admit().await);
        }
        held
    }

    #[tokio::test]
    async fn inside_an_admitted_check_requests_hold_no_slot_and_the_first_is_prepaid() {
        // A rate of one a day and a burst of one: only the prepaid token is available.
        let throttle = Throttle::new(Limits { rate: 1.0 / 86_400.0, burst: 1, max_in_flight: 1 });
        let check = throttle.admit_check().await;
        let first = check.scope(throttle.admit()).await;
        assert!(first.is_none(), "the check holds the slot");
        let second = tokio::time::timeout(Duration::from_millis(50), check.scope(throttle.admit())).await;
        assert!(second.is_err(), "a second request needs a token of its own");
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
