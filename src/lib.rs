//! # im1-revalidator
//!
//! Keeps a relying party's stored IM1 tokens honest: on a schedule it checks each token
//! against its GP system (EMIS, TPP, Vision), records verdicts in PostgreSQL, and flags
//! users whose tokens are confirmed dead so the RP asks NHS login for fresh
//! `gp_integration_credentials` at their next login — never because a supplier was down,
//! slow, throttling or answering nonsense.
//!
//! A tour of the modules, in the order data flows through them:
//!
//! - [`config`]: typed settings from the environment, validated in one pure step.
//! - [`token`]: the token shapes per supplier and input validation (import lines, API).
//! - [`crypto`]: AES-256-GCM at rest, key id in every ciphertext, user id bound as AAD.
//! - [`keys`]: which key ids the stored tokens are under, and `keys rotate`'s loop.
//! - [`store`]: everything that touches PostgreSQL: import, claims with leases and fencing
//!   tokens, batched write-back with events and notifications, sweep records, status.
//! - [`suppliers`]: one module per GP system; builds requests and classifies answers only.
//! - [`policy`]: pure verdict rules: two strikes, backoff, the refresh lifecycle.
//! - [`sweep`]: the runner: claim, check with bounded concurrency, write back; and the
//!   cron loop for `run`.
//! - [`admin`]: health, readiness, metrics and the RP API on the admin port, served within
//!   bounds (connection cap, header and request timeouts: [`admin::server`]).
//! - [`admin`]: health, readiness and metrics on the admin port.
//! - [`console`]: the operator console, a web page on its own listener (`IM1_CONSOLE_ADDR`).
//! - [`simulator`]: simulated supplier APIs for tests, demos and RP development.
//! - [`cli`]: one file per command; `main.rs` only parses and dispatches.
//! - [`telemetry`]: JSON logs, and OpenTelemetry traces (OTLP/HTTP) when `OTEL_*` asks:
//!   one trace per sweep, a span per claim batch, check, supplier request and write-back.
//!
//! Time comes from one injectable [`clock`]; shutdown is a value ([`shutdown`]) passed in.

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
