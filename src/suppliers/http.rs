//! The one HTTP client every adapter shares, with bounded reads: an answer is read up to
//! [`MAX_BODY`] before anything else looks at it, and a larger one is a transport error.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use tracing::Instrument;

/// Largest answer body read from a supplier.
pub const MAX_BODY: usize = 1024 * 1024;

/// A failure to get a complete HTTP answer. Always transient.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the request timed out")]
    Timeout,
    #[error("could not connect")]
    Connect,
    #[error("TLS handshake failed")]
    Tls,
    /// The supplier refused our client certificate (or our CA set-up): configuration.
    #[error("the supplier rejected our client certificate")]
    TlsClientRejected,
    /// We refused the supplier's certificate (unknown CA, expired, wrong name).
    #[error("the supplier's certificate is not trusted")]
    TlsServerUntrusted,
    #[error("the answer was larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("the connection failed mid-request")]
    Other,
}

impl TransportError {
    /// The short evidence label for this failure.
    pub fn detail(&self) -> &'static str {
        match self {
            TransportError::Timeout => "timeout",
            TransportError::Connect => "connect",
            TransportError::Tls => "tls",
            TransportError::TlsClientRejected => "tls_client_certificate_rejected",
            TransportError::TlsServerUntrusted => "tls_server_certificate_untrusted",
            TransportError::BodyTooLarge => "body_too_large",
            TransportError::Other => "transport",
        }
    }

    /// Whether this failure says our own configuration is wrong (certificates, CA) rather
    /// than the supplier being unwell.
    pub fn is_configuration(&self) -> bool {
        matches!(self, TransportError::TlsClientRejected | TransportError::TlsServerUntrusted)
    }

    /// Classifies a reqwest error without keeping its text (it can carry URLs).
    pub fn from_reqwest(err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            return TransportError::Timeout;
        }
        if let Some(tls) = find_rustls_error(err) {
            return match tls {
                rustls::Error::InvalidCertificate(_) => TransportError::TlsServerUntrusted,
                rustls::Error::AlertReceived(alert) if rejects_client(*alert) => TransportError::TlsClientRejected,
                _ => TransportError::Tls,
            };
        }
        if err.is_connect() { TransportError::Connect } else { TransportError::Other }
    }
}

/// Alerts a server sends when it will not accept our certificate.
fn rejects_client(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::CertificateRequired
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
    )
}

/// Finds a rustls error anywhere in the chain. An `io::Error` wrapping one hides it from
/// `source()` (it reports the inner error's source), so look inside those explicitly.
fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = find_rustls_error(inner)
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// A complete HTTP answer, body bounded.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// `Retry-After` as seconds or an HTTP date, relative to `now`.
    pub fn retry_after(&self, now: std::time::SystemTime) -> Option<Duration> {
        let value = self.headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        let when = std::time::SystemTime::from(when);
        Some(when.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

/// Which call of a check a request belongs to, for its span: set by the retry loop around
/// each call of an adapter.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// 0 for the first call, then 1, 2, … for each retry.
    pub retry: u32,
    /// The breaker's decision that let the call through: `closed`, or `half_open_probe`.
    pub breaker: &'static str,
}

impl Default for Call {
    fn default() -> Self {
        Call { retry: 0, breaker: "closed" }
    }
}

tokio::task_local! {
    /// The call in progress (see [`Call`]); absent outside the retry loop (adapter tests).
    pub static CALL: Call;
}

/// One supplier's client. Cheap to clone (reqwest's client is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    /// This process's share of the supplier's rate and in-flight limits; every request
    /// passes it. None only in adapter tests.
    throttle: Option<std::sync::Arc<crate::suppliers::throttle::Throttle>>,
}

impl HttpClient {
    pub fn new(client: reqwest::Client) -> Self {
        HttpClient { client, throttle: None }
    }

    /// Every request first waits for an in-flight slot and a token from `throttle`.
    pub fn with_throttle(mut self, throttle: std::sync::Arc<crate::suppliers::throttle::Throttle>) -> Self {
        self.throttle = Some(throttle);
        self
    }

    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends a request and reads the whole answer, up to [`MAX_BODY`]. Each request is a
    /// span (`supplier.request`): method, route template (the URL's path, which never holds
    /// a token or a user id), TPP's message type, status, the retry it belongs to and the
    /// breaker's decision (from [`CALL`]).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<RawAnswer, TransportError> {
        let request = request.build().map_err(|e| TransportError::from_reqwest(&e))?;
        let call = CALL.try_with(|c| *c).unwrap_or_default();
        let message = request.headers().get("type").and_then(|v| v.to_str().ok()).unwrap_or("");
        // Debug level: with tracing off and logs at info, the span is never built.
        let span = tracing::debug_span!(
            "supplier.request",
            otel.name = %format_args!("{} {}", request.method(), request.url().path()),
            otel.kind = "client",
            http.request.method = %request.method(),
            url.template = request.url().path(),
            tpp.message = message,
            retry = call.retry,
            breaker = call.breaker,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let answer = self.send_built(request).instrument(span.clone()).await;
        match &answer {
            Ok(raw) => {
                span.record("http.response.status_code", raw.status);
                if raw.status >= 500 || raw.status == 429 {
                    crate::telemetry::set_error(&span, "supplier answered with an error status");
                }
            }
            Err(e) => {
                span.record("error.type", e.detail());
                crate::telemetry::set_error(&span, e.detail());
            }
        }
        answer
    }

    async fn send_built(&self, request: reqwest::Request) -> Result<RawAnswer, TransportError> {
        // Held until the whole answer is read: in flight means on the wire.
        let _permit = match &self.throttle {
            Some(throttle) => throttle.admit().await,
            None => None,
        };
        let mut response = self.client.execute(request).await.map_err(|e| TransportError::from_reqwest(&e))?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(TransportError::BodyTooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| TransportError::from_reqwest(&e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(TransportError::BodyTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(RawAnswer { status, headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "120".parse().unwrap());
        let answer = RawAnswer { status: 429, headers, body: vec![] };
        assert_eq!(answer.retry_after(std::time::SystemTime::now()), Some(Duration::from_secs(120)));

        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = chrono::DateTime::from_timestamp(1_700_000_090, 0).unwrap().to_rfc2822();
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, later.parse().unwrap());
        let answer = RawAnswer { status: 503, headers, body: vec![] };
        assert_eq!(answer.retry_after(now), Some(Duration::from_secs(90)));
    }
}
