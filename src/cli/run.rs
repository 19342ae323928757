//! `run`: the service. Sweeps on the cron schedule, serves the admin port, and on
//! SIGTERM/SIGINT stops claiming, lets in-flight checks finish within the grace period,
//! gives back what it could not finish, and exits 0.

use std::sync::Arc;

use anyhow::Context;

use super::CliError;
use crate::admin::{self, AdminState};
use crate::config::Settings;
use crate::shutdown;
use crate::sweep::schedule::{self, Liveness};

pub async fn run(mut settings: Settings) -> Result<(), CliError> {
    let pool = super::connect(&settings).await?;
    if !crate::store::ready(&pool).await {
        return Err(CliError::Other(anyhow::anyhow!(
            "the database schema is not up to date: run `im1-revalidator migrate` first"
        )));
    }
    super::require_keys_in_use(&pool, settings.require_keys()?).await?;
    let clock = crate::clock::system();
    let engine = Arc::new(super::engine(&mut settings, pool.clone(), clock.clone(), "run")?);
    let liveness = Arc::new(Liveness::default());
    let (trigger, stop) = shutdown::channel();
    shutdown::on_signals(trigger);

    let listener = tokio::net::TcpListener::bind(settings.admin_addr)
        .await
        .with_context(|| format!("cannot listen on IM1_ADMIN_ADDR {}", settings.admin_addr))?;
    let schedule = match &settings.schedule {
        crate::config::Schedule::Off => "off",
        crate::config::Schedule::Cron { expression, .. } => expression.as_str(),
    };
    tracing::info!(addr = %settings.admin_addr, schedule, timezone = %settings.timezone, "im1-revalidator running");
    let pool_for_console = pool.clone();
    let router = admin::router(AdminState {
        pool,
        metrics: engine.metrics.clone(),
        liveness: liveness.clone(),
        clock,
        recheck_interval: settings.recheck_interval,
        api_tokens: settings.api_tokens.clone().into(),
        keys: engine.keys.clone(),
        rules: engine.rules.clone(),
    });
    let limits = admin::server::Limits::from_settings(&settings, engine.metrics.clone());
    let server = tokio::spawn(admin::server::serve_with(listener, router, limits, stop.clone()));
    let console = crate::console::spawn(&settings, &pool_for_console, stop.clone()).await?;
    // Heartbeat and shared breaker/guard state for the whole life of the process: its
    // rate share is taken from start-up, and its metrics stay current between sweeps.
    engine.background_sync.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sync_stop, sync_stopped) = tokio::sync::oneshot::channel();
    let sync = tokio::spawn(engine.safety.clone().sync_loop(sync_stopped));
    schedule::run(
        engine.clone(),
        settings.schedule.clone(),
        settings.timezone,
        settings.event_retention,
        liveness,
        stop,
    )
    .await;
    let _ = sync_stop.send(());
    let _ = sync.await;
    engine.safety.deregister().await;
    if let Some(console) = console {
        match console.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "console server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "console server task failed"),
        }
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "admin server task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}
