//! The command line: one file per command. Commands only wire things up; the work lives
//! in the library modules.

mod canary;
mod check_config;
mod console;
mod demo;
mod guard;
pub mod import;
mod keys;
mod migrate;
mod progress;
mod recheck;
mod run;
mod simulate;
pub(crate) mod status;
mod sweep;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use clap::{Parser, Subcommand};
use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::config::{ConfigError, Settings};
use crate::crypto::Keyring;
use crate::metrics::Metrics;
use crate::model::Supplier;
use crate::suppliers::{self, Adapter};
use crate::sweep::{Engine, Limits};

/// Keeps a relying party's stored IM1 tokens honest.
#[derive(Debug, Parser)]
#[command(name = "im1-revalidator", version, about, long_about = None)]
pub struct Cli {
    /// A file of KEY=VALUE settings; the environment wins over it (also IM1_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the embedded database migrations, then exit.
    Migrate,
    /// Store tokens the RP has created.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// One pass over every credential due now, then exit.
    Sweep(sweep::Args),
    /// The service: sweeps on the cron schedule and serves the admin port until SIGTERM.
    Run,
    /// Make chosen credentials due now.
    Recheck(recheck::Args),
    /// Counts per supplier and status, refresh-required counts, the last sweep.
    Status(status::Args),
    /// Serve simulated EMIS, TPP and Vision APIs for development, demos and tests.
    Simulate(simulate::Args),
    /// A zero set-up tour on a throwaway database with the simulator in-process.
    Demo(demo::Args),
    /// Validate configuration (and, with a database, the keys in use), then exit.
    CheckConfig,
    /// Verdicts held by the mass-invalidation guard: list them, release or discard them.
    #[command(subcommand)]
    Guard(guard::GuardCommand),
    /// Encryption keys: tokens per key id; re-encrypt them all under the primary key.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The operator console: make a password hash for IM1_CONSOLE_USERS.
    #[command(subcommand)]
    Console(console::ConsoleCommand),
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Import JSON lines {"user_id", "supplier", "ods_code", "token"} from PATH or stdin.
    Import(import::Args),
    /// Known-good credentials probed first in each sweep; a failing one stops its
    /// supplier's verdicts for that sweep.
    #[command(subcommand)]
    Canary(canary::CanaryCommand),
}

/// How a command failed, and so the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input or usage (exit 2); the message names the problem.
    #[error("{0}")]
    Input(String),
    /// Invalid configuration (exit 2), one line per problem.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigError),
    /// Anything else (exit 1).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) | CliError::Config(_) => 2,
            CliError::Other(_) => 1,
        }
    }
}

impl From<sqlx::Error> for CliError {
    fn from(e: sqlx::Error) -> Self {
        CliError::Other(anyhow::Error::new(e).context("database error"))
    }
}

pub async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let load = || Settings::load(cli.config.as_deref());
    match cli.command {
        Command::Migrate => migrate::run(load()?).await,
        Command::Credentials(CredentialsCommand::Import(args)) => import::run(load()?, args).await,
        Command::Credentials(CredentialsCommand::Canary(command)) => canary::run(load()?, command).await,
        Command::Sweep(args) => sweep::run(load()?, args).await,
        Command::Run => run::run(load()?).await,
        Command::Recheck(args) => recheck::run(load()?, args).await,
        Command::Status(args) => status::run(load()?, args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::CheckConfig => check_config::run(load()?).await,
        Command::Guard(command) => guard::run(load()?, command).await,
        Command::Keys(command) => keys::run(load()?, command).await,
        Command::Console(command) => console::run(command).await,
    }
}

/// Connects to the configured database with a small pool (the sweep needs a handful of
/// connections however many checks are in flight).
async fn connect(settings: &Settings) -> Result<PgPool, CliError> {
    let url = settings.require_database()?;
    Ok(crate::store::connect(url, 8).await?)
}

/// Refuses to go on while a key id that encrypts stored tokens is missing from
/// `IM1_ENCRYPTION_KEYS` (exit 2, one line per key id, naming how many tokens need it).
/// Without this a dropped key shows up only as rows quietly `skipped` at every check; with
/// it, `run`, `sweep`, `keys rotate` and `check-config` stop at start-up and say what to do.
/// Returns the key ids in use and their token counts.
pub async fn require_keys_in_use(pool: &PgPool, keys: &Keyring) -> Result<Vec<(String, i64)>, CliError> {
    let in_use = crate::store::import::key_ids_in_use(pool).await?;
    let problems: Vec<String> = in_use
        .iter()
        .filter(|(id, _)| !keys.has(id))
        .map(|(id, n)| {
            format!(
                "key id {id:?} encrypts {n} token(s) but is not in IM1_ENCRYPTION_KEYS: add it back \
                 (decrypt-only, after the primary) until `keys rotate` has moved them"
            )
        })
        .collect();
    if problems.is_empty() { Ok(in_use) } else { Err(CliError::Config(ConfigError { problems })) }
}

/// Adapters for every configured supplier; unusable TLS files are a configuration error
/// (exit 2), one line per problem.
pub fn adapters(settings: &Settings) -> Result<HashMap<Supplier, Arc<dyn Adapter>>, CliError> {
    adapters_with(settings, &crate::safety::throttles(settings))
}

fn adapters_with(
    settings: &Settings,
    throttles: &std::collections::BTreeMap<Supplier, Arc<crate::suppliers::throttle::Throttle>>,
) -> Result<HashMap<Supplier, Arc<dyn Adapter>>, CliError> {
    suppliers::build(settings, throttles).map_err(|problems| CliError::Config(ConfigError { problems }))
}

/// Builds the sweep engine from settings (takes the keyring out of them). `command` names
/// the process in the live-process table (`run`, `sweep`, ...).
pub fn engine(settings: &mut Settings, pool: PgPool, clock: SharedClock, command: &str) -> Result<Engine, CliError> {
    settings.require_keys()?;
    let keys = settings.keys.take().ok_or_else(|| CliError::Input("IM1_ENCRYPTION_KEYS is required".into()))?;
    let throttles = crate::safety::throttles(settings);
    let adapters = adapters_with(settings, &throttles)?;
    let metrics = Arc::new(Metrics::new());
    let process_id = uuid::Uuid::new_v4();
    let safety = crate::safety::Safety::new(
        pool.clone(),
        clock.clone(),
        metrics.clone(),
        process_id,
        command,
        crate::safety::Config::from_settings(settings),
        &throttles,
    );
    Ok(Engine {
        pool,
        clock,
        keys: Arc::new(keys),
        adapters,
        metrics,
        safety,
        retry: crate::safety::retry::RetryPolicy {
            retries: settings.retry_attempts,
            max_delay: settings.retry_max_delay,
        },
        rules: crate::sweep::rules(settings),
        limits: Limits {
            concurrency: settings.concurrency,
            batch_size: settings.batch_size,
            lease: settings.lease,
            check_timeout: settings.check_timeout,
            shutdown_grace: settings.shutdown_grace,
        },
        process_id,
        progress: Arc::new(AtomicU64::new(0)),
        canaries: Default::default(),
        background_sync: Default::default(),
    })
}

/// Parses a supplier name given on the command line.
fn supplier_arg(value: &str) -> Result<Supplier, String> {
    value.parse::<Supplier>().map_err(|e| e.to_string())
}
