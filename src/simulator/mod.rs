//! Simulated GP supplier APIs, speaking the wire formats of im1-wire.md, for tests, demos,
//! benchmarks and RP development. It knows no database.
//!
//! One HTTP server carries every supplier under its own prefix (`/emis`, `/tpp`, `/vision`)
//! plus control endpoints under `/_sim`:
//!
//! | call | does |
//! |---|---|
//! | `GET /_sim/calls` | totals per supplier and endpoint ([`CallCounts`]) |
//! | `GET /_sim/calls/{token}` | `{"calls": n}`: check calls for that token (EMIS `AccessIdentityGuid`, TPP `accountId`, Vision `rosuAccountId`) |
//! | `GET /_sim/in-flight` | `{"emis", "tpp", "vision"}`: requests each supplier is serving now |
//! | `GET /_sim/calls/log/{supplier}` | `{"supplier", "times", "max_in_flight"}`: arrival times (seconds since start) of the supplier's last 200,000 requests and the most served at once |
//! | `PUT /_sim/tokens/{token}` | body: a list of [`Step`]s, the token's script (`[]` removes it) |
//! | `DELETE /_sim/tokens/{token}` | removes the token's script |
//! | `GET`/`PUT /_sim/default` | the [`Step`] for tokens without a script |
//! | `POST`/`DELETE /_sim/outage/{supplier}` | starts/ends an outage: that supplier answers 503 without `Retry-After` |
//! | `POST /_sim/emis/expire-sessions` | every issued EMIS end-user session becomes invalid |
//! | `POST /_sim/reset` | zeroes every counter and clears the call logs |
//!
//! How each supplier answers is decided per check, in this order: outage, malformed
//! request, supplier-specific session rules, injected errors (`error_rate`), then the
//! token's script or the default. Generic behaviours are rendered in each supplier's own
//! format; a behaviour that belongs to another supplier ([`Behaviour::only_for`]) is
//! answered HTTP 400 with a plain-text note. The hot path takes read locks and touches atomics,
//! plus one short mutex lock to log the request's arrival (`call_log`); per-token counting
//! (a map insert on a token's first call) can be turned off with `count_by_token: false`.

mod call_log;
mod control;
mod emis;
pub mod scenario;
pub mod tls;
mod tpp;
mod vision;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use axum::serve::ListenerExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::control::control_routes;
use crate::model::Supplier;

pub use call_log::MAX_LOGGED_CALLS;
pub use emis::EmisCalls;
pub use scenario::{Behaviour, Scenario, ScenarioError, Step, UnknownBehaviour, VisionExpectations};
pub use tpp::TppCalls;
pub use vision::VisionCalls;

/// How long `hang` keeps a request open when nothing releases it.
const HANG_FOR: Duration = Duration::from_secs(3600);
/// How long [`RunningSimulator::shutdown`] waits for in-flight answers before aborting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Larger than the adapters' 1 MiB read bound (`huge_body`).
const HUGE_BODY: usize = 2 * 1024 * 1024;

/// Totals per supplier and endpoint since start or the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCounts {
    pub emis: EmisCalls,
    pub tpp: TppCalls,
    pub vision: VisionCalls,
}

/// A token's script and how far through it the token is.
#[derive(Debug)]
struct Script {
    steps: Box<[Step]>,
    /// Answers already given from this script; answer i uses `steps[min(i, len - 1)]`.
    next: AtomicU64,
}

/// Everything that decides which [`Step`] a check gets. One lock, so the hot path reads
/// the default and looks up a script under a single read guard.
#[derive(Debug)]
struct Scripts {
    default: Step,
    by_token: HashMap<Box<str>, Script>,
}

#[derive(Debug)]
struct Inner {
    /// Milliseconds added before every supplier answer; changed at run time by
    /// `PUT /_sim/latency` (a supplier that turns slow and recovers).
    latency_ms: AtomicU64,
    /// The shape of each answer's latency around `latency_ms`.
    latency_shape: LatencyShape,
    /// Share of answers turned into 503s, already clamped to 0..=1.
    error_rate: f64,
    count_by_token: bool,
    scripts: RwLock<Scripts>,
    /// Check calls per token; only written when `count_by_token`.
    token_calls: RwLock<HashMap<Box<str>, AtomicU64>>,
    /// Indexed by [`supplier_index`].
    outages: [AtomicBool; 4],
    emis: emis::EmisState,
    tpp: tpp::TppState,
    vision: vision::VisionState,
    /// When the simulator was created: call logs count seconds from here.
    started: Instant,
    /// Every request on each supplier's routes. Indexed by [`supplier_index`] (Microtest's
    /// stays empty: it has no routes).
    call_logs: [call_log::CallLog; 4],
    /// Bumped when a server stops, to release `hang` and delayed answers so a graceful
    /// shutdown does not wait an hour for them.
    release: watch::Sender<u64>,
}

/// How one answer's latency is drawn around the mean (`latency_ms`, which can change while
/// serving): log-normal with standard deviation `spread_ms` (exactly the mean when 0), and
/// with probability `tail_share` a tail answer of `tail_ms` instead.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct LatencyShape {
    spread_ms: u64,
    tail_share: f64,
    tail_ms: u64,
}

impl LatencyShape {
    fn sample(&self, mean_ms: u64, rng: &mut impl rand::Rng) -> u64 {
        if self.tail_share > 0.0 && rng.random::<f64>() < self.tail_share {
            return self.tail_ms;
        }
        if self.spread_ms == 0 || mean_ms == 0 {
            return mean_ms;
        }
        // A log-normal with this mean and standard deviation: sigma² = ln(1 + (sd/mean)²),
        // mu = ln(mean) - sigma²/2; one standard normal draw by Box-Muller.
        let (mean, sd) = (mean_ms as f64, self.spread_ms as f64);
        let sigma2 = (1.0 + (sd / mean).powi(2)).ln();
        let mu = mean.ln() - sigma2 / 2.0;
        let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (mu + sigma2.sqrt() * z).exp().round() as u64
    }
}

/// The simulator's shared state. Cheap to clone; every clone is the same simulator.
#[derive(Debug, Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

fn supplier_index(supplier: Supplier) -> usize {
    match supplier {
        Supplier::Emis => 0,
        Supplier::Tpp => 1,
        Supplier::Vision => 2,
        Supplier::Microtest => 3,
    }
}

/// Lock helpers: a poisoned lock only means a panic elsewhere; the data is still usable.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn script_of(steps: Vec<Step>) -> Script {
    Script { steps: steps.into_boxed_slice(), next: AtomicU64::new(0) }
}

impl Simulator {
    pub fn new(scenario: Scenario) -> Simulator {
        let error_rate = if scenario.error_rate.is_nan() { 0.0 } else { scenario.error_rate.clamp(0.0, 1.0) };
        let by_token = scenario
            .tokens
            .into_iter()
            .filter(|(_, steps)| !steps.is_empty())
            .map(|(token, steps)| (token.into_boxed_str(), script_of(steps)))
            .collect();
        let (release, _) = watch::channel(0);
        Simulator {
            inner: Arc::new(Inner {
                latency_ms: AtomicU64::new(scenario.latency_ms),
                latency_shape: LatencyShape {
                    spread_ms: scenario.latency_spread_ms,
                    tail_share: if scenario.tail_share.is_nan() { 0.0 } else { scenario.tail_share.clamp(0.0, 1.0) },
                    tail_ms: scenario.tail_ms,
                },
                error_rate,
                count_by_token: scenario.count_by_token,
                scripts: RwLock::new(Scripts { default: scenario.default, by_token }),
                token_calls: RwLock::new(HashMap::new()),
                outages: Default::default(),
                emis: emis::EmisState::default(),
                tpp: tpp::TppState::default(),
                vision: vision::VisionState::new(scenario.vision),
                started: Instant::now(),
                call_logs: Default::default(),
                release,
            }),
        }
    }

    /// Every supplier route and the control routes. Each supplier's routes log their
    /// requests ([`Simulator::call_times`]); the control routes do not.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(self.logged(emis::routes(), Supplier::Emis))
            .merge(self.logged(tpp::routes(), Supplier::Tpp))
            .merge(self.logged(vision::routes(), Supplier::Vision))
            .merge(control_routes())
            .with_state(self.clone())
    }

    /// `routes` with every request they serve logged against `supplier`.
    fn logged(&self, routes: Router<Simulator>, supplier: Supplier) -> Router<Simulator> {
        let sim = self.clone();
        routes.route_layer(axum::middleware::from_fn(move |request, next| {
            call_log::track(sim.clone(), supplier, request, next)
        }))
    }

    /// Binds `addr` (port 0 picks a free port) and serves in a background task until
    /// [`RunningSimulator::shutdown`] or until the handle is dropped.
    pub async fn spawn(&self, addr: SocketAddr) -> io::Result<RunningSimulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, self.clone(), async move {
            // A dropped sender resolves this too: a forgotten handle still stops the server.
            let _ = stopped.await;
        }));
        Ok(RunningSimulator { addr, stop, task })
    }

    /// Scripts a token: its i-th check from now on gets `steps[min(i, len - 1)]`. An empty
    /// list removes the script, so the token gets the default again.
    pub fn script(&self, token: &str, steps: Vec<Step>) {
        let mut scripts = write(&self.inner.scripts);
        if steps.is_empty() {
            scripts.by_token.remove(token);
        } else {
            scripts.by_token.insert(token.into(), script_of(steps));
        }
    }

    /// How tokens without a script are answered from now on.
    /// Holds `target/nationalCode` of Vision requests for `rosu_account_id` to `ods_code`
    /// (a token's practice, as [`VisionExpectations::practices`]).
    pub fn set_vision_practice(&self, rosu_account_id: &str, ods_code: &str) {
        self.inner.vision.set_practice(rosu_account_id, ods_code);
    }

    /// Holds `opsReference` of Vision requests to `provider_id`.
    pub fn set_vision_provider_id(&self, provider_id: &str) {
        self.inner.vision.set_provider_id(provider_id);
    }

    pub fn set_default(&self, behaviour: Behaviour) {
        self.set_default_step(Step::new(behaviour));
    }

    /// Like [`Simulator::set_default`], with a delay or `Retry-After`.
    pub fn set_default_step(&self, step: Step) {
        write(&self.inner.scripts).default = step;
    }

    pub fn default_step(&self) -> Step {
        read(&self.inner.scripts).default
    }

    /// The delay added before every supplier answer, in milliseconds.
    pub fn latency_ms(&self) -> u64 {
        self.inner.latency_ms.load(Ordering::Relaxed)
    }

    /// Sets the delay added before every supplier answer from now on (answers already
    /// waiting keep theirs).
    pub fn set_latency_ms(&self, latency_ms: u64) {
        self.inner.latency_ms.store(latency_ms, Ordering::Relaxed);
    }

    /// Starts or ends an outage: the supplier answers every call (EMIS, TPP or Vision,
    /// including TPP's Logoff) with a 503 without `Retry-After`.
    pub fn set_outage(&self, supplier: Supplier, on: bool) {
        self.inner.outages[supplier_index(supplier)].store(on, Ordering::Relaxed);
    }

    /// Forgets every EMIS end-user session issued so far.
    pub fn expire_emis_sessions(&self) {
        self.inner.emis.expire_sessions();
    }

    /// Totals per supplier and endpoint.
    pub fn calls(&self) -> CallCounts {
        CallCounts { emis: self.inner.emis.calls(), tpp: self.inner.tpp.calls(), vision: self.inner.vision.calls() }
    }

    /// Check calls carrying this token (EMIS: `POST /sessions` by `AccessIdentityGuid`;
    /// TPP: `Authenticate` by `accountId`; Vision: `GetConfiguration` by `rosuAccountId`),
    /// whatever they were answered; 0 when `count_by_token` is off.
    pub fn token_calls(&self, token: &str) -> u64 {
        read(&self.inner.token_calls).get(token).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Check calls per token for every token called so far (empty when `count_by_token`
    /// is off), for a test that accounts for a whole population in one request.
    pub fn all_token_calls(&self) -> BTreeMap<String, u64> {
        read(&self.inner.token_calls).iter().map(|(t, n)| (t.to_string(), n.load(Ordering::Relaxed))).collect()
    }

    /// Arrival times of the most recent requests (at most [`MAX_LOGGED_CALLS`]) on
    /// `supplier`'s routes, in seconds since the simulator was created, oldest first: every
    /// request, whatever it was answered (EMIS end-user sessions and sessions, TPP
    /// Authenticate, Logoff and unrecognised messages, Vision). For measuring the rate the
    /// service really sends at. Empty for Microtest, which has no routes.
    pub fn call_times(&self, supplier: Supplier) -> Vec<f64> {
        self.call_log(supplier).times()
    }

    /// The most requests `supplier`'s routes were serving at once (a `hang` or a delay
    /// counts until it answers or is released), since start or the last reset.
    /// Requests the supplier's routes are serving now.
    pub fn in_flight(&self, supplier: Supplier) -> u64 {
        self.call_log(supplier).in_flight()
    }

    pub fn max_in_flight(&self, supplier: Supplier) -> u64 {
        self.call_log(supplier).max_in_flight()
    }

    fn call_log(&self, supplier: Supplier) -> &call_log::CallLog {
        &self.inner.call_logs[supplier_index(supplier)]
    }

    /// Zeroes every counter and clears the call logs (scripts, their progress and outages
    /// are kept). The in-flight high-water mark restarts from the requests still in flight.
    pub fn reset(&self) {
        self.inner.emis.reset_calls();
        self.inner.tpp.reset_calls();
        self.inner.vision.reset_calls();
        write(&self.inner.token_calls).clear();
        for log in &self.inner.call_logs {
            log.clear();
        }
    }

    /// Releases every `hang` and delayed answer now in progress (they answer 503).
    pub fn release_waiters(&self) {
        self.inner.release.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    // ---- shared rules for the supplier routes ----

    fn count_token(&self, token: &str) {
        if !self.inner.count_by_token {
            return;
        }
        if let Some(n) = read(&self.inner.token_calls).get(token) {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
        write(&self.inner.token_calls).entry(token.into()).or_default().fetch_add(1, Ordering::Relaxed);
    }

    fn in_outage(&self, supplier: Supplier) -> bool {
        self.inner.outages[supplier_index(supplier)].load(Ordering::Relaxed)
    }

    /// Whether `error_rate` turns this answer into a 503.
    fn inject_error(&self) -> bool {
        self.inner.error_rate > 0.0 && rand::random::<f64>() < self.inner.error_rate
    }

    /// The step for this token's next check: its script, or the default.
    fn next_step(&self, token: &str) -> Step {
        let scripts = read(&self.inner.scripts);
        match scripts.by_token.get(token) {
            Some(script) => {
                let i = script.next.fetch_add(1, Ordering::Relaxed);
                let last = script.steps.len().saturating_sub(1);
                let i = usize::try_from(i).map_or(last, |i| i.min(last));
                script.steps.get(i).copied().unwrap_or(scripts.default)
            }
            None => scripts.default,
        }
    }

    /// Waits the scenario's latency (drawn from its shape) plus `extra_ms`. Returns
    /// `false` when released early by a shutdown.
    async fn pause(&self, extra_ms: u64) -> bool {
        let latency = self.inner.latency_shape.sample(self.latency_ms(), &mut rand::rng());
        let wait = Duration::from_millis(latency.saturating_add(extra_ms));
        if wait.is_zero() {
            return true;
        }
        self.wait(wait).await
    }

    /// Sleeps `wait` unless released first; `true` when the whole wait ran.
    async fn wait(&self, wait: Duration) -> bool {
        let mut released = self.inner.release.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = released.changed() => false,
        }
    }

    /// Never answers, until released.
    async fn hang(&self) {
        self.wait(HANG_FOR).await;
    }
}

impl Default for Simulator {
    fn default() -> Self {
        Simulator::new(Scenario::default())
    }
}

/// A simulator serving in a background task.
#[derive(Debug)]
pub struct RunningSimulator {
    pub addr: SocketAddr,
    /// Sending (or dropping) it starts a graceful shutdown.
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl RunningSimulator {
    /// `http://{addr}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The EMIS base URL, `http://{addr}/emis`.
    pub fn emis_url(&self) -> String {
        format!("http://{}/emis", self.addr)
    }

    /// The TPP URL, `http://{addr}/tpp` (every TPP message goes there).
    pub fn tpp_url(&self) -> String {
        format!("http://{}/tpp", self.addr)
    }

    /// The Vision SOAP endpoint, `http://{addr}/vision`.
    pub fn vision_url(&self) -> String {
        format!("http://{}/vision", self.addr)
    }

    /// Stops accepting, lets in-flight answers finish (hangs and delays are cut short),
    /// and aborts the server if that takes longer than a few seconds.
    pub async fn shutdown(self) {
        let RunningSimulator { stop, mut task, .. } = self;
        let _ = stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the simulator stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the simulator task failed"),
            Err(_) => {
                tracing::warn!("the simulator did not stop in time; aborting it");
                task.abort();
            }
        }
    }
}

/// Serves `sim` on `listener` until `shutdown` resolves, then drains in-flight answers
/// (releasing any `hang`).
pub async fn serve(
    listener: TcpListener,
    sim: Simulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let releaser = sim.clone();
    let listener = listener.tap_io(|tcp| {
        // Small request/answer pairs: do not let Nagle hold answers back.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(async move {
            shutdown.await;
            releaser.release_waiters();
        })
        .await
}

// ---- answers shared by the supplier routes ----

/// An answer with a content type and an optional `Retry-After`.
fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<axum::body::Body>,
    retry_after: Option<u64>,
) -> Response {
    use axum::http::HeaderValue;
    use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(secs) = retry_after {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The answer to a behaviour that belongs to another supplier: HTTP 400 with a plain-text
/// note, so a misdirected script is visible and never mistaken for a verdict.
fn foreign_behaviour(behaviour: Behaviour, supplier: Supplier) -> Response {
    let owner = behaviour.only_for().map_or("every", Supplier::as_str);
    let note = format!("the simulator behaviour {behaviour} is for {owner} only; {supplier} cannot answer with it");
    respond(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", note, None)
}

#[cfg(test)]
mod tests;
