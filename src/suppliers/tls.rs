//! Mutual TLS and private CAs, per supplier (`IM1_<SUPPLIER>_CLIENT_CERT`, `…_CLIENT_KEY`,
//! `…_CA_CERT`). Every file is read and checked when the process starts, so an unreadable
//! file, a file with no PEM in it, or a key that does not belong to its certificate stops
//! start-up with a message naming the variable and the file (exit 2), instead of failing
//! every check later. Messages never include file contents.
//!
//! A configured CA is the only trust anchor for that supplier (a private CA must not be
//! widened by the public roots); without one, the platform's roots apply.

use std::path::Path;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Settings, SupplierSettings};

/// What the files of one supplier amount to, ready for the HTTP client.
#[derive(Default)]
pub struct TlsMaterial {
    /// Client certificate chain and key, as one PEM buffer for reqwest.
    pub identity: Option<reqwest::Identity>,
    /// The private CA's certificates: the only roots trusted for this supplier.
    pub roots: Option<Vec<reqwest::Certificate>>,
}

fn var(s: &SupplierSettings, suffix: &str) -> String {
    format!("IM1_{}_{suffix}", s.supplier.as_str().to_uppercase())
}

fn read(variable: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{variable}: cannot read {}: {}", path.display(), e.kind()))
}

/// Reads and checks one supplier's TLS files. Returns every problem found.
pub fn load(s: &SupplierSettings) -> Result<TlsMaterial, Vec<String>> {
    let mut problems = Vec::new();
    let mut material = TlsMaterial::default();
    if let (Some(cert_path), Some(key_path)) = (&s.tls.client_cert, &s.tls.client_key) {
        let (cert_var, key_var) = (var(s, "CLIENT_CERT"), var(s, "CLIENT_KEY"));
        let cert_pem = read(&cert_var, cert_path).map_err(|e| problems.push(e)).ok();
        let key_pem = read(&key_var, key_path).map_err(|e| problems.push(e)).ok();
        if let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) {
            match identity(&cert_var, cert_path, &cert_pem, &key_var, key_path, &key_pem) {
                Ok(identity) => material.identity = Some(identity),
                Err(e) => problems.push(e),
            }
        }
    }
    if let Some(ca_path) = &s.tls.ca_cert {
        let ca_var = var(s, "CA_CERT");
        match read(&ca_var, ca_path) {
            Ok(pem) => match reqwest::Certificate::from_pem_bundle(&pem) {
                Ok(certs) if !certs.is_empty() && certificates(&pem).is_some() => material.roots = Some(certs),
                _ => problems.push(format!("{ca_var}: {} holds no PEM certificate", ca_path.display())),
            },
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() { Ok(material) } else { Err(problems) }
}

fn certificates(pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().ok()?;
    (!certs.is_empty()).then_some(certs)
}

fn identity(
    cert_var: &str,
    cert_path: &Path,
    cert_pem: &[u8],
    key_var: &str,
    key_path: &Path,
    key_pem: &[u8],
) -> Result<reqwest::Identity, String> {
    let chain = certificates(cert_pem)
        .ok_or_else(|| format!("{cert_var}: {} holds no PEM certificate", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| format!("{key_var}: {} holds no PEM private key", key_path.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{key_var}: the key in {} does not belong to the certificate in {cert_var}", key_path.display())
        }
        _ => format!("{key_var}: {} is not a usable private key (RSA, ECDSA or Ed25519 expected)", key_path.display()),
    })?;
    let mut both = cert_pem.to_vec();
    both.push(b'\n');
    both.extend_from_slice(key_pem);
    reqwest::Identity::from_pem(&both)
        .map_err(|_| format!("{cert_var}/{key_var}: the certificate and key could not be loaded together"))
}

/// The HTTP client for one supplier: shared timeouts and pool settings, plus its TLS
/// material. One per supplier per process, built once.
pub fn client(settings: &Settings, s: &SupplierSettings) -> Result<reqwest::Client, Vec<String>> {
    let material = load(s)?;
    let mut builder = reqwest::Client::builder()
        .connect_timeout(settings.http_timeout)
        .pool_max_idle_per_host(settings.concurrency)
        .tcp_nodelay(true)
        // Never follow a redirect: the request body carries the token, and a followed 307
        // would send it to whatever host the answer names (http included). A 3xx is an
        // unlisted answer, so transient.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("im1-revalidator/", env!("CARGO_PKG_VERSION")));
    if let Some(identity) = material.identity {
        builder = builder.identity(identity);
    }
    if let Some(roots) = material.roots {
        builder = builder.tls_certs_only(roots);
    }
    builder.build().map_err(|_| vec![format!("{}: the HTTP client could not be built", var(s, "URL"))])
}
