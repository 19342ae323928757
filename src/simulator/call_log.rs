//! Per-supplier request log, for measuring what the service really sends: the arrival time
//! of every request on a supplier's routes (so a benchmark can compute the rate over any
//! window and check it against `IM1_<SUPPLIER>_RATE` and `…_BURST`) and the most requests
//! served at once (against `…_MAX_IN_FLIGHT`).
//!
//! Counting happens in a route layer on each supplier's routes, before the handler's
//! latency, scripts or `hang`, so every request is logged whatever it is answered; control
//! calls are not. The hot path takes one short mutex lock (append a time) and touches two
//! atomics (in flight, high-water mark).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use super::Simulator;
use crate::model::Supplier;

/// Arrival times kept per supplier; older ones are dropped first. At 8 bytes each this
/// bounds a log to 1.6 MB, enough for over an hour at the default 50 requests a second.
pub const MAX_LOGGED_CALLS: usize = 200_000;

/// One supplier's log.
#[derive(Default)]
pub(super) struct CallLog {
    /// Seconds since the simulator was created, in arrival order.
    times: Mutex<VecDeque<f64>>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// By hand: a derived `Debug` would print up to 200,000 numbers.
impl std::fmt::Debug for CallLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallLog")
            .field("logged", &self.lock().len())
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("max_in_flight", &self.max_in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

impl CallLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<f64>> {
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs one arrival and counts it in flight until the returned guard is dropped.
    pub(super) fn arrive(&self, started: Instant) -> InFlight<'_> {
        {
            let mut times = self.lock();
            // Read under the lock, so the log is in arrival order even across threads.
            let at = started.elapsed().as_secs_f64();
            if times.len() >= MAX_LOGGED_CALLS {
                times.pop_front();
            }
            times.push_back(at);
        }
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight { log: self }
    }

    pub(super) fn times(&self) -> Vec<f64> {
        self.lock().iter().copied().collect()
    }

    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(super) fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// Forgets the times and restarts the high-water mark from the requests still in
    /// flight (they are still being served, so 0 would under-report them).
    pub(super) fn clear(&self) {
        self.lock().clear();
        self.max_in_flight.store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A request being served; dropping it (the handler answered, returned early, or its
/// future was dropped because the client went away) ends it.
pub(super) struct InFlight<'a> {
    log: &'a CallLog,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.log.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The route layer: logs the request against `supplier`, then runs the handler.
pub(super) async fn track(sim: Simulator, supplier: Supplier, request: Request, next: Next) -> Response {
    let _in_flight = sim.call_log(supplier).arrive(sim.inner.started);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_logged_in_order_and_bounded() {
        let log = CallLog::default();
        let started = Instant::now();
        for _ in 0..MAX_LOGGED_CALLS + 5 {
            drop(log.arrive(started));
        }
        let times = log.times();
        assert_eq!(times.len(), MAX_LOGGED_CALLS);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(times.iter().all(|t| *t >= 0.0));
        assert_eq!(log.max_in_flight(), 1);
    }

    #[test]
    fn the_high_water_mark_follows_guards_and_survives_their_end() {
        let log = CallLog::default();
        let started = Instant::now();
        let a = log.arrive(started);
        let b = log.arrive(started);
        let c = log.arrive(started);
        assert_eq!(log.max_in_flight(), 3);
        drop((a, b));
        let d = log.arrive(started);
        assert_eq!(log.max_in_flight(), 3, "two in flight now, the mark stays");
        log.clear();
        assert!(log.times().is_empty());
        assert_eq!(log.max_in_flight(), 2, "c and d are still being served");
        drop((c, d));
        assert_eq!(log.in_flight.load(Ordering::Relaxed), 0);
        log.clear();
        assert_eq!(log.max_in_flight(), 0);
    }
}
