//! `simulate [--addr A] [--scenario FILE]`: serves the simulated supplier APIs until
//! SIGTERM/SIGINT. The scenario format and control endpoints are in the README.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::CliError;
use crate::shutdown;
use crate::simulator::{Scenario, Simulator};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9190")]
    pub addr: SocketAddr,
    /// A scenario file (JSON): default behaviour, latency, error rate, per-token scripts.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<(), CliError> {
    let scenario = match &args.scenario {
        None => Scenario::default(),
        Some(path) => {
            Scenario::from_file(path).map_err(|e| CliError::Input(format!("scenario {}: {e}", path.display())))?
        }
    };
    let sim = Simulator::new(scenario);
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| CliError::Input(format!("cannot listen on {}: {e}", args.addr)))?;
    let addr = listener.local_addr().map_err(|e| CliError::Other(e.into()))?;
    println!("simulator listening on http://{addr}");
    println!("  IM1_EMIS_URL=http://{addr}/emis");
    println!("  control: http://{addr}/_sim/calls");
    let (trigger, mut stop) = shutdown::channel();
    shutdown::on_signals(trigger);
    crate::simulator::serve(listener, sim, async move { stop.wait().await })
        .await
        .map_err(|e| CliError::Other(anyhow::Error::new(e).context("simulator failed")))?;
    Ok(())
}
