//! WS-Security (X.509 token profile) signing of our Vision SOAP envelope (im1-wire.md, Vision).
//!
//! [`Signer::sign_envelope`] takes the unsigned envelope the Vision adapter builds and returns it
//! with a `wsse:Security` header holding, in this order:
//!
//! * a `wsu:Timestamp` (Created = now, Expires = now + 5 minutes, UTC, millisecond precision);
//! * a `wsse:BinarySecurityToken` (the signing certificate, base64 DER, X509v3, Base64Binary);
//! * a `ds:Signature` over two `ds:Reference`s — the `soapenv:Body` (given a `wsu:Id`) and the
//!   `wsu:Timestamp` — each with one exc-c14n transform and a SHA-256 digest; the `SignedInfo` is
//!   canonicalised with exclusive c14n (without comments) and signed with RSA-SHA256 (RSA key) or
//!   ECDSA-SHA256 on P-256 (EC key, raw `r||s` as XML-DSig requires); `KeyInfo` points at the token
//!   through `wsse:SecurityTokenReference/wsse:Reference`.
//!
//! # Canonicalisation choices
//!
//! We do not implement general XML canonicalisation. Everything that is signed is *emitted by us
//! already in exclusive-c14n form* and copied verbatim into the signed document, so the bytes we
//! digest are exactly the bytes a verifier's canonicaliser reproduces:
//!
//! * `SignedInfo` and `Timestamp` are fixed templates written in canonical form (explicit end tags,
//!   the one namespace they use declared on the apex, attributes in c14n order, values that never
//!   need escaping).
//! * The Body is re-emitted through a small canonicaliser built on quick-xml that understands
//!   exactly elements, attributes, namespace declarations, text, character/predefined entity
//!   references and CDATA (written as escaped text), and rejects everything else (comments,
//!   processing instructions, DTDs, unknown entities) with an `Err`. It applies the exc-c14n rules:
//!   a namespace declaration is written on an element only when the element's own prefix or one of
//!   its attributes' prefixes uses it and the nearest output ancestor did not already write the
//!   same binding (the default namespace counts as used by unprefixed elements; `xmlns=""` only
//!   undoes an inherited non-empty default); declarations are sorted default first, then by prefix;
//!   attributes are sorted by namespace URI (unqualified first) then local name; empty elements get
//!   an explicit end tag; line ends are normalised (`\r\n`, `\r` → `\n`) and attribute values get
//!   XML attribute-value normalisation (literal tab/CR/LF → space) before escaping; text escapes
//!   `& < >` and CR (`&amp; &lt; &gt; &#xD;`), attribute values escape `& < "` and tab/LF/CR
//!   (`&amp; &lt; &quot; &#x9; &#xA; &#xD;`). `xml:*` attributes are kept only where written
//!   (exclusive c14n does not inherit them). The Body written into the document is that canonical
//!   form, except that an unprefixed element in no namespace also gets `xmlns=""` where the
//!   document would otherwise put it in an inherited default namespace (c14n leaves that
//!   undeclaration out; exclusive c14n ignores it when reading). Canonicalising the written Body
//!   again gives exactly the digested bytes, whatever the Envelope and Header declare, so the
//!   digest does not depend on our canonicaliser matching the verifier's on the input's quirks,
//!   only on it producing a fixed point, which `xmlsec1` checks in the integration tests.
//!
//! # Supported input
//!
//! A UTF-8 document: optionally an XML declaration (version 1.0, encoding absent or UTF-8) and
//! whitespace, then one SOAP 1.1 `Envelope` element whose name has a prefix bound to
//! `http://schemas.xmlsoap.org/soap/envelope/` (any prefix, `soapenv` in practice). Its children,
//! separated only by whitespace: an optional `Header` (empty `<soapenv:Header/>` or with content,
//! which is kept as written and is not signed), then exactly one `Body` whose only attributes are
//! namespace declarations. Nothing but whitespace may follow the Envelope. The prefixes `wsse`,
//! `wsu` and `ds` must not be declared anywhere in the input (we declare them ourselves), and the
//! Header must not already hold a `wsse:Security`. Anything else is an `Err`; no input panics.
//! Outside the Body and Header insertion point the input text is copied unchanged.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use ring::rand::SystemRandom;
use ring::signature::RSA_PKCS1_SHA256;

use self::canon::split_envelope;
use self::keys::{CertKeyAlg, Key, cert_public_key, parse_cert, parse_key};

mod canon;
mod keys;

/// SOAP 1.1 envelope namespace.
pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// WS-Security extension namespace (`wsse`).
pub const WSSE_NS: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// WS-Security utility namespace (`wsu`).
pub const WSU_NS: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
/// XML-DSig namespace (`ds`).
pub const DS_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// Exclusive XML canonicalisation without comments.
pub const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
/// RSA PKCS#1 v1.5 with SHA-256.
pub const RSA_SHA256_URI: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
/// ECDSA with SHA-256.
pub const ECDSA_SHA256_URI: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";
/// SHA-256 digest.
pub const SHA256_URI: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
/// X.509 v3 token value type.
pub const X509V3_VALUE_TYPE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3";
/// Base64 binary encoding type.
pub const BASE64_ENCODING_TYPE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary";

/// `wsu:Id` of the BinarySecurityToken.
pub const TOKEN_ID: &str = "X509-wssec";
/// `wsu:Id` given to the Body.
pub const BODY_ID: &str = "Body-wssec";
/// `wsu:Id` of the Timestamp.
pub const TIMESTAMP_ID: &str = "TS-wssec";
/// Lifetime of the Timestamp.
pub const TIMESTAMP_TTL_SECONDS: i64 = 300;

/// A signing certificate and its private key. `Debug` shows the algorithm and the certificate's
/// SHA-256 fingerprint, never key material.
pub struct Signer {
    cert_der: Vec<u8>,
    key: Key,
    rng: SystemRandom,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, &self.cert_der);
        let hex: String = fingerprint.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("Signer")
            .field("algorithm", &self.signature_method())
            .field("certificate_sha256", &hex)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads PEM files: the first `CERTIFICATE` block of `cert` (the leaf; a chain may follow) and
    /// the first unencrypted private key of `key` (PKCS#8 RSA or EC P-256, PKCS#1 RSA, SEC1 EC
    /// P-256). Errors name the file and the problem, never key bytes.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Signer, String> {
        let cert_pem =
            std::fs::read(cert).map_err(|e| format!("certificate file {}: unreadable: {e}", cert.display()))?;
        let key_pem = std::fs::read(key).map_err(|e| format!("private key file {}: unreadable: {e}", key.display()))?;
        let cert_der = parse_cert(&cert_pem).map_err(|e| format!("certificate file {}: {e}", cert.display()))?;
        let key_pair = parse_key(&key_pem).map_err(|e| format!("private key file {}: {e}", key.display()))?;
        Signer::assemble(cert_der, key_pair).map_err(|e| {
            format!("private key file {} does not match certificate file {}: {e}", key.display(), cert.display())
        })
    }

    /// As [`Signer::from_pem_files`], from PEM text in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Signer, String> {
        let cert_der = parse_cert(cert_pem).map_err(|e| format!("certificate: {e}"))?;
        let key_pair = parse_key(key_pem).map_err(|e| format!("private key: {e}"))?;
        Signer::assemble(cert_der, key_pair).map_err(|e| format!("private key does not match certificate: {e}"))
    }

    fn assemble(cert_der: Vec<u8>, key: Key) -> Result<Signer, String> {
        let spki = cert_public_key(&cert_der).ok_or("certificate is not a valid X.509 certificate")?;
        let cert_kind = match spki.algorithm {
            CertKeyAlg::Rsa => "RSA",
            CertKeyAlg::EcP256 => "EC P-256",
            CertKeyAlg::Other => "of an unsupported type",
        };
        if cert_kind != key.name() {
            return Err(format!("certificate key is {cert_kind}, private key is {}", key.name()));
        }
        if spki.key != key.public_key() {
            return Err(format!("both are {cert_kind} but the public keys differ"));
        }
        Ok(Signer { cert_der, key, rng: SystemRandom::new() })
    }

    /// The `SignatureMethod` algorithm URI this signer uses.
    pub fn signature_method(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => RSA_SHA256_URI,
            Key::EcdsaP256(_) => ECDSA_SHA256_URI,
        }
    }

    /// The signing certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Signs our unsigned Vision envelope (see the module docs for the accepted shapes) with a
    /// Timestamp created now, and returns the signed envelope text.
    pub fn sign_envelope(&self, envelope: &str) -> Result<String, String> {
        self.sign_envelope_at(envelope, Utc::now())
    }

    /// As [`Signer::sign_envelope`], with the Timestamp created at `now`.
    pub fn sign_envelope_at(&self, envelope: &str, now: DateTime<Utc>) -> Result<String, String> {
        let parts = split_envelope(envelope)?;
        let body_digest = sha256_b64(parts.canonical_body.as_bytes());
        let timestamp = timestamp_xml(now);
        let ts_digest = sha256_b64(timestamp.as_bytes());
        let signed_info = signed_info_xml(self.signature_method(), &body_digest, &ts_digest);
        let signature_value = B64.encode(self.sign(signed_info.as_bytes())?);
        let security = format!(
            concat!(
                r#"<wsse:Security xmlns:wsse="{wsse}" xmlns:wsu="{wsu}" {soap}:mustUnderstand="1">"#,
                "{timestamp}",
                r#"<wsse:BinarySecurityToken EncodingType="{enc}" ValueType="{vt}" wsu:Id="{tid}">{cert}</wsse:BinarySecurityToken>"#,
                r#"<ds:Signature xmlns:ds="{ds}">{signed_info}<ds:SignatureValue>{sv}</ds:SignatureValue>"#,
                r##"<ds:KeyInfo><wsse:SecurityTokenReference><wsse:Reference URI="#{tid}" ValueType="{vt}"/>"##,
                "</wsse:SecurityTokenReference></ds:KeyInfo></ds:Signature></wsse:Security>",
            ),
            wsse = WSSE_NS,
            wsu = WSU_NS,
            soap = parts.soap_prefix,
            timestamp = timestamp,
            enc = BASE64_ENCODING_TYPE,
            vt = X509V3_VALUE_TYPE,
            tid = TOKEN_ID,
            cert = B64.encode(&self.cert_der),
            ds = DS_NS,
            signed_info = signed_info,
            sv = signature_value,
        );
        let mut out = String::with_capacity(envelope.len() + security.len() + 256);
        out.push_str(parts.before_header);
        out.push_str(&parts.header_open);
        out.push_str(&security);
        out.push_str(&parts.header_close);
        out.push_str(parts.between);
        out.push_str(&parts.document_body);
        out.push_str(parts.after_body);
        Ok(out)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
                    .map_err(|_| "RSA signing failed".to_string())?;
                Ok(sig)
            }
            Key::EcdsaP256(k) => {
                k.sign(&self.rng, message).map(|s| s.as_ref().to_vec()).map_err(|_| "ECDSA signing failed".to_string())
            }
        }
    }
}

fn sha256_b64(data: &[u8]) -> String {
    B64.encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// The Timestamp in exclusive-c14n form (it is copied into the document as is).
fn timestamp_xml(now: DateTime<Utc>) -> String {
    let expires = now + Duration::seconds(TIMESTAMP_TTL_SECONDS);
    format!(
        r#"<wsu:Timestamp xmlns:wsu="{WSU_NS}" wsu:Id="{TIMESTAMP_ID}"><wsu:Created>{}</wsu:Created><wsu:Expires>{}</wsu:Expires></wsu:Timestamp>"#,
        now.to_rfc3339_opts(SecondsFormat::Millis, true),
        expires.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// `SignedInfo` in exclusive-c14n form (it is copied into the document as is).
fn signed_info_xml(signature_method: &str, body_digest: &str, timestamp_digest: &str) -> String {
    let reference = |id: &str, digest: &str| {
        format!(
            concat!(
                r##"<ds:Reference URI="#{id}"><ds:Transforms><ds:Transform Algorithm="{c14n}"></ds:Transform></ds:Transforms>"##,
                r#"<ds:DigestMethod Algorithm="{sha}"></ds:DigestMethod><ds:DigestValue>{digest}</ds:DigestValue></ds:Reference>"#,
            ),
            id = id,
            c14n = EXC_C14N,
            sha = SHA256_URI,
            digest = digest,
        )
    };
    format!(
        concat!(
            r#"<ds:SignedInfo xmlns:ds="{ds}"><ds:CanonicalizationMethod Algorithm="{c14n}"></ds:CanonicalizationMethod>"#,
            r#"<ds:SignatureMethod Algorithm="{sm}"></ds:SignatureMethod>{r1}{r2}</ds:SignedInfo>"#,
        ),
        ds = DS_NS,
        c14n = EXC_C14N,
        sm = signature_method,
        r1 = reference(BODY_ID, body_digest),
        r2 = reference(TIMESTAMP_ID, timestamp_digest),
    )
}

#[cfg(test)]
mod tests;
