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
    /// Serve over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate issued by this PEM CA (mutual TLS; needs --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<(), CliError> {
    let scenario = match &args.scenario {
        None => Scenario::default(),
        Some(path) => {
            Scenario::from_file(path).map_err(|e| CliError::Input(format!("scenario {}: {e}", path.display())))?
        }
    };
    let sim = Simulator::new(scenario);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::server_config_from_files(cert, key, args.client_ca.as_deref())
                .map_err(|e| CliError::Input(format!("simulator TLS: {e}")))?,
        ),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| CliError::Input(format!("cannot listen on {}: {e}", args.addr)))?;
    let addr = listener.local_addr().map_err(|e| CliError::Other(e.into()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("simulator listening on {scheme}://{addr}");
    for supplier in ["emis", "tpp", "vision"] {
        println!("  IM1_{}_URL={scheme}://{addr}/{supplier}", supplier.to_uppercase());
    }
    if args.client_ca.is_some() {
        println!("  client certificates required (mutual TLS)");
    }
    println!("  control: {scheme}://{addr}/_sim/calls");
    let (trigger, mut stop) = shutdown::channel();
    shutdown::on_signals(trigger);
    let stopped = async move { stop.wait().await };
    let served = match tls {
        Some(config) => crate::simulator::tls::serve_tls(listener, config, sim, stopped).await,
        None => crate::simulator::serve(listener, sim, stopped).await,
    };
    served.map_err(|e| CliError::Other(anyhow::Error::new(e).context("simulator failed")))?;
    Ok(())
}
