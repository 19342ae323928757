//! Serving the admin port within bounds, so a client cannot hold it: each connection is
//! served by hyper's HTTP/1 server directly (axum's `serve` sets no timeouts).
//!
//! - **Connections**: at most [`Limits::max_connections`] at once per listener; one more
//!   is answered `503 too_many_connections` and closed without reading it.
//! - **Header timeout**: a connection must send a whole request head within
//!   [`Limits::header_timeout`] of opening, and again within it of the end of its last
//!   answer, so the same timer is the idle keep-alive timeout (hyper starts it whenever the
//!   connection waits for a request head). A client that sends half a request line and
//!   waits is closed.
//! - **Request timeout**: every request, its body included, answers within
//!   [`Limits::request_timeout`] or gets `503 timeout`; a check request's budget adds
//!   [`MAX_WAIT`], its long-poll's own cap.
//! - Request heads larger than [`MAX_HEAD`] are refused by hyper (431).
//!
//! On shutdown the listener closes, idle connections close at once and requests in flight
//! finish (each bounded by its request timeout).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::api::{ApiError, MAX_WAIT};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// The admin listener's bounds (`IM1_ADMIN_MAX_CONNECTIONS`, `IM1_ADMIN_HEADER_TIMEOUT`,
/// `IM1_ADMIN_REQUEST_TIMEOUT`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    /// Where refused connections and timed-out requests are counted, when given.
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for Limits {
    /// The configuration's defaults: 256 connections, 10 s, 10 s.
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            metrics: None,
        }
    }
}

impl Limits {
    pub fn from_settings(settings: &Settings, metrics: Arc<Metrics>) -> Self {
        Limits {
            max_connections: settings.admin_max_connections,
            header_timeout: settings.admin_header_timeout,
            request_timeout: settings.admin_request_timeout,
            metrics: Some(metrics),
        }
    }

    /// The longest a request for `uri` may take: the request timeout, plus [`MAX_WAIT`]
    /// for a check (whose `?wait` is cut to that).
    pub fn budget(&self, uri: &Uri) -> Duration {
        if is_check(uri.path()) { self.request_timeout + MAX_WAIT } else { self.request_timeout }
    }
}

/// `/v1/credentials/{user_id}/check`, the one route that may wait.
fn is_check(path: &str) -> bool {
    path.strip_prefix("/v1/credentials/")
        .and_then(|rest| rest.strip_suffix("/check"))
        .is_some_and(|user| !user.is_empty() && !user.contains('/'))
}

/// Serves `router` on `listener` within `limits` until `shutdown`.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut shutdown: Shutdown,
) -> io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(limits.clone(), request_timeout));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "admin: accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                        _ = shutdown.wait() => break,
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.wait() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(stream, &limits);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let header_timeout = limits.header_timeout;
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.wait() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                // A client that went away or timed out; nothing to act on.
                tracing::debug!(error = %e, "admin: connection ended");
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Accept errors that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

/// One connection over the limit: a 503 in the API's error shape if the socket takes it at
/// once, then closed. Nothing is read from it.
fn refuse(stream: TcpStream, limits: &Limits) {
    if let Some(m) = &limits.metrics {
        m.admin_connections_refused.inc();
    }
    let body = r#"{"error":{"code":"too_many_connections","message":"the admin port is serving as many connections as it allows; try again later"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Bounds every request by [`Limits::budget`].
async fn request_timeout(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let budget = limits.budget(request.uri());
    match tokio::time::timeout(budget, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            if let Some(m) = &limits.metrics {
                m.admin_requests_timed_out.inc();
            }
            tracing::warn!(budget_ms = budget.as_millis() as u64, "admin: a request ran out of time");
            ApiError::timed_out().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_check_may_wait() {
        let limits = Limits::default();
        let budget = |uri: &str| limits.budget(&uri.parse().unwrap());
        assert_eq!(budget("/v1/credentials/u1/check"), Duration::from_secs(40));
        assert_eq!(budget("/v1/credentials/u1/check?wait=30s"), Duration::from_secs(40));
        assert_eq!(budget("/v1/credentials/u1"), Duration::from_secs(10));
        assert_eq!(budget("/v1/credentials/u1/refresh-outcome"), Duration::from_secs(10));
        assert_eq!(budget("/v1/credentials//check"), Duration::from_secs(10));
        assert_eq!(budget("/v1/credentials/a/b/check"), Duration::from_secs(10));
        assert_eq!(budget("/metrics"), Duration::from_secs(10));
    }
}
