//! `IM1_EMIS_*`, `IM1_TPP_*`, `IM1_VISION_*`: which suppliers are enabled, where they are,
//! as whom we call, over which TLS files, and how fast. A supplier is enabled by its URL;
//! Microtest has no variables because its tokens cannot be checked.

use std::path::PathBuf;

use super::reader::Reader;
use crate::model::Supplier;

/// One enabled supplier's connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SupplierSettings {
    pub supplier: Supplier,
    /// Base URL, validated as http(s), without a trailing `/`.
    pub url: String,
    /// EMIS application id, or TPP / Vision provider id.
    pub id: String,
    pub tls: TlsFiles,
    /// Requests per second, shared by all live processes.
    pub rate: f64,
    pub burst: u32,
    pub max_in_flight: u32,
}

/// PEM file paths for mutual TLS and a private CA. Only stored here; they are read (and
/// their contents checked) when the HTTP client is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Set together with `client_key`, or neither is.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
}

impl Reader<'_> {
    /// One supplier's variables. The optional ones are validated even when the supplier
    /// is disabled, so a typo surfaces before the day it is switched on.
    pub(super) fn supplier(&mut self, supplier: Supplier) -> Option<SupplierSettings> {
        let v = SupplierVars::of(supplier)?;
        let url_text = self.text(v.url);
        let url = url_text.and_then(|text| self.supplier_url(v.url, text));
        let id = self.text(v.id).map(str::to_owned);
        if id.as_deref().is_some_and(|id| id.chars().any(char::is_control)) {
            self.problem(v.id, "must not contain control characters");
        }
        let tls = TlsFiles {
            client_cert: self.path(v.client_cert),
            client_key: self.path(v.client_key),
            ca_cert: self.path(v.ca_cert),
        };
        self.both_or_neither((v.client_cert, tls.client_cert.is_some()), (v.client_key, tls.client_key.is_some()));
        let rate = match self.text(v.rate) {
            None => 50.0,
            Some(text) => match text.parse::<f64>() {
                Ok(x) if x > 0.0 && x <= 100_000.0 => x,
                _ => {
                    self.invalid(v.rate, "must be a number of requests per second above 0 and at most 100000", text);
                    50.0
                }
            },
        };
        let burst = self.whole(v.burst, 50u32, 1, 100_000);
        let max_in_flight = self.whole(v.max_in_flight, 32u32, 1, 10_000);
        match (url_text, id) {
            // The URL is the switch: without it the supplier is disabled.
            (None, _) => None,
            (Some(_), None) => {
                self.problem(v.id, &format!("is required when {} is set", v.url));
                None
            }
            // `url` is `None` here only when the URL was invalid, already reported.
            (Some(_), Some(id)) => Some(SupplierSettings { supplier, url: url?, id, tls, rate, burst, max_in_flight }),
        }
    }

    pub(super) fn supplier_url(&mut self, name: &'static str, text: &str) -> Option<String> {
        let parsed = match reqwest::Url::parse(text) {
            Ok(url) => url,
            Err(e) => {
                self.invalid(name, &format!("is not a valid URL ({e})"), text);
                return None;
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // Not echoed: the value holds a credential.
            self.problem(name, "must not contain a user name or password (value not shown)");
            return None;
        }
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            self.invalid(name, "must be an http:// or https:// URL with a host", text);
            return None;
        }
        // Without a trailing slash, callers can append `/path` uniformly.
        Some(text.trim_end_matches('/').to_owned())
    }
}

/// The variable names of one supplier.
struct SupplierVars {
    url: &'static str,
    id: &'static str,
    client_cert: &'static str,
    client_key: &'static str,
    ca_cert: &'static str,
    rate: &'static str,
    burst: &'static str,
    max_in_flight: &'static str,
}

impl SupplierVars {
    fn of(supplier: Supplier) -> Option<SupplierVars> {
        Some(match supplier {
            Supplier::Emis => SupplierVars {
                url: "IM1_EMIS_URL",
                id: "IM1_EMIS_APPLICATION_ID",
                client_cert: "IM1_EMIS_CLIENT_CERT",
                client_key: "IM1_EMIS_CLIENT_KEY",
                ca_cert: "IM1_EMIS_CA_CERT",
                rate: "IM1_EMIS_RATE",
                burst: "IM1_EMIS_BURST",
                max_in_flight: "IM1_EMIS_MAX_IN_FLIGHT",
            },
            Supplier::Tpp => SupplierVars {
                url: "IM1_TPP_URL",
                id: "IM1_TPP_PROVIDER_ID",
                client_cert: "IM1_TPP_CLIENT_CERT",
                client_key: "IM1_TPP_CLIENT_KEY",
                ca_cert: "IM1_TPP_CA_CERT",
                rate: "IM1_TPP_RATE",
                burst: "IM1_TPP_BURST",
                max_in_flight: "IM1_TPP_MAX_IN_FLIGHT",
            },
            Supplier::Vision => SupplierVars {
                url: "IM1_VISION_URL",
                id: "IM1_VISION_PROVIDER_ID",
                client_cert: "IM1_VISION_CLIENT_CERT",
                client_key: "IM1_VISION_CLIENT_KEY",
                ca_cert: "IM1_VISION_CA_CERT",
                rate: "IM1_VISION_RATE",
                burst: "IM1_VISION_BURST",
                max_in_flight: "IM1_VISION_MAX_IN_FLIGHT",
            },
            Supplier::Microtest => return None,
        })
    }
}
