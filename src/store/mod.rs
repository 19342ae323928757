//! Everything that touches PostgreSQL. The store serves the sweep runner, the CLI and the
//! API; it never drives a sweep and knows no HTTP.
//!
//! Every statement takes `now` from the caller's [`crate::clock::Clock`] rather than
//! calling `now()` in SQL, so tests move time without sleeping.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::model::{LastOutcome, Reason, Status, parse_opt};
use crate::policy::Standing;

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. The URL is a secret: errors name the problem, never the URL.
pub async fn connect(url: &SecretString, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url.expose_secret())
        .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL connection string"))?
        .application_name("im1-revalidator")
        // Statements are logged at debug; only a really slow one is worth a warning (the
        // batched statements' text is long).
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(10));
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("could not connect to PostgreSQL (check DATABASE_URL and that the server is up)")
}

/// Applies every embedded migration not yet applied.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// True when the database answers and every embedded migration has been applied.
pub async fn ready(pool: &PgPool) -> bool {
    let applied: Result<Vec<i64>, _> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await;
    match applied {
        Ok(applied) => MIGRATOR.iter().all(|m| applied.contains(&m.version)),
        Err(_) => false,
    }
}

/// Builds a [`StandingRow`] from any query record that selected the standing columns
/// under their own names (each `query!` has its own anonymous record type).
macro_rules! standing_row {
    ($r:expr) => {
        $crate::store::StandingRow {
            status: $r.status,
            reason: $r.reason,
            refresh_required: $r.refresh_required,
            refresh_attempts: $r.refresh_attempts,
            refresh_suppressed_until: $r.refresh_suppressed_until,
            strike_at: $r.strike_at,
            strike_reason: $r.strike_reason,
            last_checked_at: $r.last_checked_at,
            last_outcome: $r.last_outcome,
            last_verified_at: $r.last_verified_at,
            invalidated_at: $r.invalidated_at,
            failures: $r.failures,
        }
    };
}

pub mod bulk_import;
pub mod canaries;
pub mod claims;
pub mod console;
pub mod credentials;
pub mod events;
pub mod guard;
pub mod import;
pub mod keys;
pub mod priority;
pub mod safety;
pub mod status;
pub mod sweeps;

/// The standing columns as they come out of the database.
#[derive(Debug, Clone)]
pub struct StandingRow {
    pub status: String,
    pub reason: Option<String>,
    pub refresh_required: bool,
    pub refresh_attempts: i32,
    pub refresh_suppressed_until: Option<chrono::DateTime<chrono::Utc>>,
    pub strike_at: Option<chrono::DateTime<chrono::Utc>>,
    pub strike_reason: Option<String>,
    pub last_checked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_outcome: Option<String>,
    pub last_verified_at: Option<chrono::DateTime<chrono::Utc>>,
    pub invalidated_at: Option<chrono::DateTime<chrono::Utc>>,
    pub failures: i32,
}

impl StandingRow {
    /// The typed standing. The table's constraints guarantee every spelling, so an
    /// unknown one can only mean a newer schema: it reads as unchecked / no outcome.
    pub fn into_standing(self) -> Standing {
        Standing {
            status: Status::from_str(&self.status).unwrap_or(Status::Unchecked),
            reason: parse_opt::<Reason>(self.reason.as_deref()),
            refresh_required: self.refresh_required,
            refresh_attempts: self.refresh_attempts,
            refresh_suppressed_until: self.refresh_suppressed_until,
            strike_at: self.strike_at,
            strike_reason: parse_opt::<Reason>(self.strike_reason.as_deref()),
            last_checked_at: self.last_checked_at,
            last_outcome: parse_opt::<LastOutcome>(self.last_outcome.as_deref()),
            last_verified_at: self.last_verified_at,
            invalidated_at: self.invalidated_at,
            failures: self.failures,
        }
    }
}

/// Column arrays for one batched write of standings (UNNEST). Field order matches the
/// SQL that consumes them.
#[derive(Debug, Default)]
pub(crate) struct StandingColumns {
    pub status: Vec<String>,
    pub reason: Vec<Option<String>>,
    pub refresh_required: Vec<bool>,
    pub refresh_attempts: Vec<i32>,
    pub refresh_suppressed_until: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    pub strike_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    pub strike_reason: Vec<Option<String>>,
    pub last_checked_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    pub last_outcome: Vec<Option<String>>,
    pub last_verified_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    pub invalidated_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    pub failures: Vec<i32>,
}

impl StandingColumns {
    pub fn with_capacity(n: usize) -> Self {
        StandingColumns {
            status: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
            refresh_required: Vec::with_capacity(n),
            refresh_attempts: Vec::with_capacity(n),
            refresh_suppressed_until: Vec::with_capacity(n),
            strike_at: Vec::with_capacity(n),
            strike_reason: Vec::with_capacity(n),
            last_checked_at: Vec::with_capacity(n),
            last_outcome: Vec::with_capacity(n),
            last_verified_at: Vec::with_capacity(n),
            invalidated_at: Vec::with_capacity(n),
            failures: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, s: &Standing) {
        self.status.push(s.status.as_str().to_owned());
        self.reason.push(s.reason.map(|r| r.as_str().to_owned()));
        self.refresh_required.push(s.refresh_required);
        self.refresh_attempts.push(s.refresh_attempts);
        self.refresh_suppressed_until.push(s.refresh_suppressed_until);
        self.strike_at.push(s.strike_at);
        self.strike_reason.push(s.strike_reason.map(|r| r.as_str().to_owned()));
        self.last_checked_at.push(s.last_checked_at);
        self.last_outcome.push(s.last_outcome.map(|o| o.as_str().to_owned()));
        self.last_verified_at.push(s.last_verified_at);
        self.invalidated_at.push(s.invalidated_at);
        self.failures.push(s.failures);
    }
}
