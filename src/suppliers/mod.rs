//! GP system adapters. Each one only builds requests and classifies answers (im1-wire.md);
//! the sweep runner owns scheduling, timeouts, concurrency, persistence and metrics.
//!
//! The rule above all rules: only a row of a supplier's table whose outcome says invalid
//! yields [`Outcome::Invalid`]; everything unrecognised is [`Outcome::Transient`].

pub mod emis;
pub mod http;
pub mod throttle;
pub mod tls;
pub mod tpp;
pub mod vision;
pub mod wssec;
pub mod xml;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::model::Supplier;
use crate::token::Token;

pub use crate::model::{Evidence, Outcome};
pub use http::{HttpClient, RawAnswer, TransportError};

/// The transient outcome for an unlisted answer: `Retry-After` is honoured on 429 and 503
/// (the wire doc's rule for every supplier), ignored elsewhere.
pub(crate) fn transient_for(status: u16, retry_after: Option<Duration>) -> Outcome {
    let outcome = match status {
        429 | 503 => Outcome::Transient { retry_after },
        _ => Outcome::transient(),
    };
    crate::defects::unlisted_answer(status, outcome)
}

/// `evidence` with our own note added.
pub(crate) fn with_detail(mut evidence: Evidence, detail: &str) -> Evidence {
    evidence.detail = Some(detail.to_owned());
    evidence
}

/// An outcome with its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    pub evidence: Evidence,
}

impl Answer {
    pub fn new(outcome: Outcome, evidence: Evidence) -> Self {
        Answer { outcome, evidence }
    }

    /// The answer for a failure to get any HTTP answer at all: transient, except a TLS
    /// failure that says our own certificates or CA are wrong (a configuration error).
    /// Never a verdict.
    pub fn from_transport(err: &TransportError) -> Self {
        let outcome = if err.is_configuration() { Outcome::SupplierConfigError } else { Outcome::transient() };
        let outcome = crate::defects::transport_failure(err.detail(), outcome);
        Answer::new(outcome, Evidence::detail(err.detail()))
    }
}

/// What a check needs to know about the credential.
#[derive(Debug, Clone, Copy)]
pub struct CheckTarget<'a> {
    pub ods_code: &'a str,
    pub token: &'a Token,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One GP system's check conversation. Implementations hold their configuration and any
/// reusable session state; the HTTP client is shared across all of them.
pub trait Adapter: Send + Sync {
    fn supplier(&self) -> Supplier;

    /// Tests one token. Never fails: every failure is classified into an [`Answer`].
    fn check<'a>(&'a self, target: CheckTarget<'a>) -> BoxFuture<'a, Answer>;
}

/// Adapters for every configured supplier, each with its own HTTP client (its own client
/// certificate and trust roots; one connection pool per supplier for the process).
/// Unusable TLS files are reported together, by variable and file, before anything runs.
/// Every request passes the supplier's throttle from `throttles` (when it has one).
pub fn build(
    settings: &crate::config::Settings,
    throttles: &std::collections::BTreeMap<Supplier, std::sync::Arc<crate::suppliers::throttle::Throttle>>,
) -> Result<std::collections::HashMap<Supplier, std::sync::Arc<dyn Adapter>>, Vec<String>> {
    let mut adapters: std::collections::HashMap<Supplier, std::sync::Arc<dyn Adapter>> =
        std::collections::HashMap::new();
    let mut problems = Vec::new();
    for supplier in Supplier::CHECKABLE {
        let Some(cfg) = settings.supplier(*supplier) else { continue };
        let http = match tls::client(settings, cfg) {
            Ok(client) => match throttles.get(supplier) {
                Some(throttle) => HttpClient::new(client).with_throttle(throttle.clone()),
                None => HttpClient::new(client),
            },
            Err(mut found) => {
                problems.append(&mut found);
                continue;
            }
        };
        match supplier {
            Supplier::Emis => {
                let adapter = emis::EmisAdapter::new(http.clone(), &cfg.url, cfg.id.clone(), settings.http_timeout);
                adapters.insert(Supplier::Emis, std::sync::Arc::new(adapter));
            }
            Supplier::Tpp => {
                let adapter = tpp::TppAdapter::new(http.clone(), &cfg.url, cfg.id.clone(), settings.http_timeout);
                adapters.insert(Supplier::Tpp, std::sync::Arc::new(adapter));
            }
            Supplier::Vision => {
                let signer = match vision_signer(settings) {
                    Ok(signer) => signer,
                    Err(problem) => {
                        problems.push(problem);
                        continue;
                    }
                };
                let adapter =
                    vision::VisionAdapter::new(http.clone(), &cfg.url, cfg.id.clone(), settings.http_timeout, signer);
                adapters.insert(Supplier::Vision, std::sync::Arc::new(adapter));
            }
            // Microtest tokens are dummies: never checked, so never in CHECKABLE.
            Supplier::Microtest => {}
        }
    }
    if problems.is_empty() { Ok(adapters) } else { Err(problems) }
}

/// The WS-Security signer for Vision envelopes, when `IM1_VISION_SIGNING_CERT` and
/// `IM1_VISION_SIGNING_KEY` are set (unsigned otherwise). Unusable files are a start-up
/// problem naming the variables.
fn vision_signer(settings: &crate::config::Settings) -> Result<Option<vision::Signer>, String> {
    let (Some(cert), Some(key)) = (&settings.vision_signing_cert, &settings.vision_signing_key) else {
        return Ok(None);
    };
    let signer = wssec::Signer::from_pem_files(cert, key)
        .map_err(|e| format!("IM1_VISION_SIGNING_CERT/IM1_VISION_SIGNING_KEY: {e}"))?;
    Ok(Some(std::sync::Arc::new(move |envelope: &str| signer.sign_envelope(envelope))))
}
