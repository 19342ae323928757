//! The simulator over TLS (see [`crate::tls`]), optionally requiring a client certificate
//! from a given CA.
//!
//! `simulate --tls-cert server.pem --tls-key server.key [--client-ca ca.pem]`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::{RunningSimulator, Simulator};

/// Serves the simulator over TLS until `shutdown` resolves; waiting answers are released
/// first, so the shutdown is not held up by a scenario's slow answers.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    sim: Simulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let releaser = sim.clone();
    crate::tls::serve_router_tls(listener, config, sim.router(), async move {
        shutdown.await;
        releaser.release_waiters();
    })
    .await
}

impl Simulator {
    /// Like [`Simulator::spawn`], over TLS. The handle's URLs still say `http://`; use
    /// [`RunningSimulator::https_url`] for the TLS base URL.
    pub async fn spawn_tls(&self, addr: SocketAddr, config: Arc<ServerConfig>) -> io::Result<RunningSimulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_tls(listener, config, self.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(RunningSimulator { addr, stop, task })
    }
}

impl RunningSimulator {
    /// `https://localhost:{port}{path}`: the name the test certificates are issued for.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}
