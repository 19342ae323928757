//! # im1-revalidator
//!
//! Keeps a relying party's stored IM1 tokens honest: on a schedule it checks each token
//! against its GP system (EMIS, TPP, Vision), records verdicts in PostgreSQL, and flags
//! users whose tokens are confirmed dead so the RP asks NHS login for fresh
//! `gp_integration_credentials` at their next login — never because a supplier was down,
//! slow, throttling or answering nonsense.
//!
//! A tour of the modules, floor by floor from the bottom. Arrows point down only: a module
//! names only modules on lower floors (`tests/it/layers.rs` fails on any other arrow), and
//! `docs/architecture.md` draws the house and a credential's path through it.
//!
//! 0. The vocabulary and leaf tools, which name no other module: [`model`] (suppliers,
//!    statuses, outcomes, evidence, breaker state), [`clock`] (the one injectable clock),
//!    [`telemetry`] (JSON logs; OpenTelemetry traces when `OTEL_*` asks), [`tls`] (HTTPS for
//!    our own listeners: the console and the simulator).
//! 1. Values built on it: [`token`] (the token shapes per supplier and input validation),
//!    [`crypto`] (AES-256-GCM at rest, key id in every ciphertext, user id bound as AAD),
//!    [`policy`] (pure verdict rules: two strikes, backoff, the refresh lifecycle).
//! 2. [`config`]: typed settings from the environment, validated in one pure step.
//! 3. [`store`]: everything that touches PostgreSQL: import, claims with leases and
//!    fencing tokens, batched write-back with events and notifications, status.
//! 4. On the store: [`metrics`] (Prometheus), [`keys`] (which key ids the stored tokens are
//!    under, and `keys rotate`), and [`defects`], the fault suite's one seam (planted defects,
//!    debug builds only).
//! 5. [`suppliers`]: one module per GP system; builds requests and classifies answers only,
//!    with the shared HTTP client and per-supplier throttles. [`shutdown`]: the stop signal
//!    as a value passed in.
//! 6. [`safety`]: circuit breaker, mass-invalidation guard and retries around supplier
//!    calls, shared by every replica. [`simulator`]: simulated supplier APIs for tests,
//!    demos and RP development.
//! 7. [`sweep`]: the runner: claim, check with bounded concurrency, write back; and the
//!    cron loop for `run`.
//! 8. The two HTTP faces of `run`: [`admin`] (health, readiness, metrics and the RP API,
//!    served within bounds: [`admin::server`]) and [`console`] (the operator console, on its
//!    own listener `IM1_CONSOLE_ADDR`).
//! 9. [`cli`]: one file per command; `main.rs` only parses and dispatches.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod crypto;
pub mod defects;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod safety;
pub mod shutdown;
pub mod simulator;
pub mod store;
pub mod suppliers;
pub mod sweep;
pub mod telemetry;
pub mod tls;
pub mod token;
