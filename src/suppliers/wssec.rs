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
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const RESERVED_PREFIXES: [&str; 3] = ["wsse", "wsu", "ds"];

// DER encodings of the algorithm object identifiers we look for in a certificate.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

enum Key {
    Rsa(RsaKeyPair),
    EcdsaP256(EcdsaKeyPair),
}

impl Key {
    fn name(&self) -> &'static str {
        match self {
            Key::Rsa(_) => "RSA",
            Key::EcdsaP256(_) => "EC P-256",
        }
    }

    fn public_key(&self) -> &[u8] {
        match self {
            Key::Rsa(k) => k.public().as_ref(),
            Key::EcdsaP256(k) => k.public_key().as_ref(),
        }
    }
}

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

// ---------------------------------------------------------------------------------------------
// PEM and DER

fn pem_problem(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no {what} PEM block found"),
        pem::Error::MissingSectionEnd { .. } => "malformed PEM: a section has no END line".to_string(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM: bad BEGIN line".to_string(),
        pem::Error::Base64Decode(_) => "malformed PEM: invalid base64".to_string(),
        pem::Error::SectionTooLarge => "malformed PEM: section too large".to_string(),
        _ => "malformed PEM".to_string(),
    }
}

fn parse_cert(pem_text: &[u8]) -> Result<Vec<u8>, String> {
    let cert = CertificateDer::from_pem_slice(pem_text).map_err(|e| pem_problem(&e, "CERTIFICATE"))?;
    let der = cert.as_ref().to_vec();
    if cert_public_key(&der).is_none() {
        return Err("not a valid X.509 certificate".to_string());
    }
    Ok(der)
}

fn parse_key(pem_text: &[u8]) -> Result<Key, String> {
    let rng = SystemRandom::new();
    let key = PrivateKeyDer::from_pem_slice(pem_text)
        .map_err(|e| pem_problem(&e, "unencrypted private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"))?;
    match key {
        PrivateKeyDer::Pkcs1(k) => {
            RsaKeyPair::from_der(k.secret_pkcs1_der()).map(Key::Rsa).map_err(|e| format!("RSA key rejected: {e}"))
        }
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            match RsaKeyPair::from_pkcs8(der) {
                Ok(k) => Ok(Key::Rsa(k)),
                Err(rsa_err) => match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng) {
                    Ok(k) => Ok(Key::EcdsaP256(k)),
                    Err(_) if pkcs8_is_rsa(der) => Err(format!("RSA key rejected: {rsa_err}")),
                    Err(_) => Err("key type unsupported (need RSA of at least 2048 bits or EC P-256)".to_string()),
                },
            }
        }
        PrivateKeyDer::Sec1(k) => sec1_p256(k.secret_sec1_der(), &rng).map(Key::EcdsaP256),
        _ => Err("key type unsupported (need RSA of at least 2048 bits or EC P-256)".to_string()),
    }
}

/// Whether a PKCS#8 blob announces rsaEncryption (to tell "bad RSA key" from "other key type").
fn pkcs8_is_rsa(der: &[u8]) -> bool {
    (|| {
        let (_, body, _) = der_tlv(der, 0x30)?;
        let (_, _, rest) = der_tlv(body, 0x02)?;
        let (_, alg, _) = der_tlv(rest, 0x30)?;
        let (_, oid, _) = der_tlv(alg, 0x06)?;
        Some(oid == OID_RSA_ENCRYPTION)
    })()
    .unwrap_or(false)
}

/// SEC1 `ECPrivateKey` on P-256 (needs the optional public key, which OpenSSL always writes).
fn sec1_p256(der: &[u8], rng: &SystemRandom) -> Result<EcdsaKeyPair, String> {
    let malformed = || "malformed EC PRIVATE KEY".to_string();
    let (_, body, _) = der_tlv(der, 0x30).ok_or_else(malformed)?;
    let (_, _version, rest) = der_tlv(body, 0x02).ok_or_else(malformed)?;
    let (_, private, mut rest) = der_tlv(rest, 0x04).ok_or_else(malformed)?;
    let mut public = None;
    while !rest.is_empty() {
        let (tag, content, next) = der_any(rest).ok_or_else(malformed)?;
        match tag {
            0xa0 => {
                let (_, oid, _) = der_tlv(content, 0x06).ok_or_else(malformed)?;
                if oid != OID_PRIME256V1 {
                    return Err("key type unsupported: EC key is not on P-256".to_string());
                }
            }
            0xa1 => {
                let (_, bits, _) = der_tlv(content, 0x03).ok_or_else(malformed)?;
                public = Some(bits.get(1..).filter(|_| bits.first() == Some(&0)).ok_or_else(malformed)?);
            }
            _ => {}
        }
        rest = next;
    }
    let public = public.ok_or("EC PRIVATE KEY without its public key: convert it to PKCS#8")?;
    EcdsaKeyPair::from_private_key_and_public_key(&ECDSA_P256_SHA256_FIXED_SIGNING, private, public, rng)
        .map_err(|e| format!("EC key rejected: {e}"))
}

/// One DER TLV: (tag, content, rest). Definite lengths up to 4 bytes only.
fn der_any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn der_tlv(input: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
    der_any(input).filter(|(t, _, _)| *t == tag)
}

enum CertKeyAlg {
    Rsa,
    EcP256,
    Other,
}

struct CertKey<'a> {
    algorithm: CertKeyAlg,
    key: &'a [u8],
}

/// The subject public key of an X.509 certificate: for RSA the `RSAPublicKey` DER, for EC the
/// uncompressed point (the forms ring reports for a key pair's public key).
fn cert_public_key(der: &[u8]) -> Option<CertKey<'_>> {
    let (_, cert, _) = der_tlv(der, 0x30)?;
    let (_, tbs, _) = der_tlv(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_any(rest)?.2;
    }
    let (_, _, rest) = der_tlv(rest, 0x02)?; // serialNumber
    let (_, _, rest) = der_tlv(rest, 0x30)?; // signature
    let (_, _, rest) = der_tlv(rest, 0x30)?; // issuer
    let (_, _, rest) = der_tlv(rest, 0x30)?; // validity
    let (_, _, rest) = der_tlv(rest, 0x30)?; // subject
    let (_, spki, _) = der_tlv(rest, 0x30)?;
    let (_, alg, rest) = der_tlv(spki, 0x30)?;
    let (_, bits, _) = der_tlv(rest, 0x03)?;
    let (_, oid, params) = der_tlv(alg, 0x06)?;
    let algorithm = if oid == OID_RSA_ENCRYPTION {
        CertKeyAlg::Rsa
    } else if oid == OID_EC_PUBLIC_KEY && der_tlv(params, 0x06).is_some_and(|(_, c, _)| c == OID_PRIME256V1) {
        CertKeyAlg::EcP256
    } else {
        CertKeyAlg::Other
    };
    let key = bits.get(1..).filter(|_| bits.first() == Some(&0))?;
    Some(CertKey { algorithm, key })
}

// ---------------------------------------------------------------------------------------------
// Envelope splitting and Body canonicalisation

/// The unsigned envelope cut into what we copy and what we rewrite.
struct Parts<'a> {
    /// Input up to where the Header's open tag (ours or theirs) is written.
    before_header: &'a str,
    /// Header open tag (and, for a non-empty Header, nothing else: its content is in `between`).
    header_open: String,
    /// Closing tag of a Header we create or expand; empty when the input's Header had content.
    header_close: String,
    /// Input between the Security insertion point and the Body.
    between: &'a str,
    /// The Body's exclusive-c14n form, which is digested.
    canonical_body: String,
    /// The Body as written into the document (see [`Canon`]).
    document_body: String,
    /// Input after the Body.
    after_body: &'a str,
    /// A prefix bound to the SOAP 1.1 namespace where Security goes.
    soap_prefix: String,
}

#[derive(PartialEq)]
enum Stage {
    Prolog,
    InEnvelope { seen_header: bool },
    InHeader { depth: usize },
    InBody { depth: usize },
    AfterBody,
    AfterEnvelope,
}

/// A namespace binding: prefix ("" for the default namespace) and URI.
type Binding = (String, String);

struct NsStack {
    frames: Vec<Vec<Binding>>,
}

impl NsStack {
    fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        self.frames.iter().rev().flat_map(|f| f.iter().rev()).find(|(p, _)| p == prefix).map(|(_, u)| u.as_str())
    }
}

/// An element's name, attributes and declarations, values normalised.
struct Element {
    qname: String,
    prefix: String,
    local: String,
    decls: Vec<Binding>,
    attrs: Vec<(String, String)>,
}

fn split_qname(qname: &str) -> Result<(&str, &str), String> {
    let (prefix, local) = match qname.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", qname),
    };
    if local.is_empty() || local.contains(':') || (qname.contains(':') && prefix.is_empty()) {
        return Err(format!("malformed name {qname:?}"));
    }
    Ok((prefix, local))
}

fn read_element(e: &BytesStart<'_>) -> Result<Element, String> {
    let qname = e.name().0.to_string();
    let (prefix, local) = split_qname(&qname)?;
    let (prefix, local) = (prefix.to_string(), local.to_string());
    let mut decls = Vec::new();
    let mut attrs = Vec::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|err| format!("malformed attribute on {qname}: {err}"))?;
        let key = attr.key.0;
        let value = normalize_attr_value(&attr.value)?;
        if key == "xmlns" {
            decls.push((String::new(), value));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            split_qname(p)?;
            if value.is_empty() {
                return Err(format!("namespace prefix {p} undeclared (not allowed in XML 1.0)"));
            }
            if RESERVED_PREFIXES.contains(&p) {
                return Err(format!("the input declares prefix {p}, which the signer reserves"));
            }
            decls.push((p.to_string(), value));
        } else {
            split_qname(key)?;
            attrs.push((key.to_string(), value));
        }
    }
    Ok(Element { qname, prefix, local, decls, attrs })
}

/// The character a reference (`&name;` without `&` and `;`) stands for.
fn resolve_reference(name: &str) -> Result<char, String> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix('x') {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => num.parse::<u32>(),
        }
        .map_err(|_| "bad character reference".to_string())?;
        return char::from_u32(code).filter(|&c| c != '\0').ok_or_else(|| "bad character reference".to_string());
    }
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        // The name is not echoed: the Body holds credentials and errors get logged.
        _ => Err("unknown entity reference (only the five predefined ones are allowed)".to_string()),
    }
}

/// XML attribute-value normalisation for CDATA attributes (no DTD): line ends normalised, then
/// literal tab/CR/LF become a space, references resolved (their characters kept as is).
fn normalize_attr_value(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\r' => {
                if chars.peek().is_some_and(|&(_, n)| n == '\n') {
                    chars.next();
                }
                out.push(' ');
            }
            '\n' | '\t' => out.push(' '),
            '<' => return Err("'<' in an attribute value".to_string()),
            '&' => {
                let end = raw[i..].find(';').ok_or("unterminated reference in an attribute value")?;
                out.push(resolve_reference(&raw[i + 1..i + end])?);
                while chars.peek().is_some_and(|&(j, _)| j <= i + end) {
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            _ => out.push(c),
        }
    }
}

fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            _ => out.push(c),
        }
    }
}

/// The exclusive-c14n writer for the Body subtree.
///
/// It writes two texts: `out`, the canonical form that is digested, and `doc`, what goes into the
/// document. They differ only by ` xmlns=""` on an unprefixed element in no namespace whose
/// document context has a non-empty default namespace (inherited from outside the Body or from
/// an input declaration that c14n drops): c14n omits that undeclaration, the document needs it
/// to keep the element out of the inherited namespace. A canonicaliser reading `doc` again
/// produces `out`, as exclusive c14n ignores `xmlns=""` unless an output ancestor wrote a
/// non-empty default.
struct Canon {
    out: String,
    doc: String,
    /// Namespace bindings written on each open output element.
    rendered: Vec<Vec<Binding>>,
    /// The default namespace in scope in `doc` at the Body's parent.
    outer_default: String,
    /// For each open element, the default namespace it set in `doc`, if it set one.
    doc_default: Vec<Option<String>>,
}

impl Canon {
    fn new(outer_default: &str) -> Canon {
        Canon {
            out: String::new(),
            doc: String::new(),
            rendered: Vec::new(),
            outer_default: outer_default.to_string(),
            doc_default: Vec::new(),
        }
    }

    fn text(&mut self, s: &str) {
        let from = self.out.len();
        escape_text(s, &mut self.out);
        let escaped = &self.out[from..];
        self.doc.push_str(escaped);
    }

    fn doc_default_in_scope(&self) -> &str {
        self.doc_default.iter().rev().flatten().next().unwrap_or(&self.outer_default)
    }

    fn rendered_value(&self, prefix: &str) -> Option<&str> {
        let found =
            self.rendered.iter().rev().flat_map(|f| f.iter()).find(|(p, _)| p == prefix).map(|(_, u)| u.as_str());
        // The default namespace starts out empty; named prefixes start out unrendered.
        found.or(if prefix.is_empty() { Some("") } else { None })
    }

    /// Writes the start tag of `el` (whose declarations are already on `ns`), plus `extra`
    /// attributes (qname, namespace URI of their prefix, value) that are not in the input.
    fn start(&mut self, el: &Element, ns: &NsStack, extra: &[(&str, &str, &str)]) -> Result<(), String> {
        // Namespaces visibly used: the element's prefix (or the default) and attribute prefixes.
        let mut used: Vec<String> = vec![el.prefix.clone()];
        for (qname, _) in &el.attrs {
            if let Some((p, _)) = qname.split_once(':') {
                used.push(p.to_string());
            }
        }
        for (qname, _, _) in extra {
            if let Some((p, _)) = qname.split_once(':') {
                used.push(p.to_string());
            }
        }
        used.sort();
        used.dedup();
        let mut frame: Vec<Binding> = Vec::new();
        for prefix in used {
            if prefix == "xml" {
                continue;
            }
            let uri = match extra.iter().find(|(q, _, _)| q.split_once(':').is_some_and(|(p, _)| p == prefix)) {
                Some((_, uri, _)) => uri.to_string(),
                None if prefix.is_empty() => ns.lookup("").unwrap_or("").to_string(),
                None => ns.lookup(&prefix).ok_or_else(|| format!("prefix {prefix} is not declared"))?.to_string(),
            };
            if self.rendered_value(&prefix) != Some(uri.as_str()) {
                frame.push((prefix, uri));
            }
        }
        // Attributes sorted by (namespace URI, local name); unqualified ones have no URI.
        let mut attrs: Vec<(String, String, &str, &str)> = Vec::new();
        for (qname, value) in &el.attrs {
            let (prefix, local) = split_qname(qname)?;
            let uri = if prefix.is_empty() {
                String::new()
            } else {
                ns.lookup(prefix).ok_or_else(|| format!("prefix {prefix} is not declared"))?.to_string()
            };
            attrs.push((uri, local.to_string(), qname.as_str(), value.as_str()));
        }
        for (qname, uri, value) in extra {
            let (_, local) = split_qname(qname)?;
            attrs.push((uri.to_string(), local.to_string(), qname, value));
        }
        attrs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        if attrs.windows(2).any(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1) {
            return Err(format!("duplicate attribute on {}", el.qname));
        }
        let from = self.out.len();
        self.out.push('<');
        self.out.push_str(&el.qname);
        for (prefix, uri) in &frame {
            self.out.push_str(if prefix.is_empty() { " xmlns" } else { " xmlns:" });
            self.out.push_str(prefix);
            self.out.push_str("=\"");
            escape_attr(uri, &mut self.out);
            self.out.push('"');
        }
        for (_, _, qname, value) in &attrs {
            self.out.push(' ');
            self.out.push_str(qname);
            self.out.push_str("=\"");
            escape_attr(value, &mut self.out);
            self.out.push('"');
        }
        self.out.push('>');
        let tag = &self.out[from..];
        let written_default = frame.iter().find(|(p, _)| p.is_empty()).map(|(_, u)| u.clone());
        let undeclare = el.prefix.is_empty() && written_default.is_none() && !self.doc_default_in_scope().is_empty();
        if undeclare {
            // Only reached when c14n wrote no default here, so `tag` has no xmlns attribute.
            self.doc.push('<');
            self.doc.push_str(&el.qname);
            self.doc.push_str(" xmlns=\"\"");
            self.doc.push_str(tag.get(1 + el.qname.len()..).unwrap_or(">"));
            self.doc_default.push(Some(String::new()));
        } else {
            self.doc.push_str(tag);
            self.doc_default.push(written_default);
        }
        self.rendered.push(frame);
        Ok(())
    }

    fn end(&mut self, qname: &str) {
        for out in [&mut self.out, &mut self.doc] {
            out.push_str("</");
            out.push_str(qname);
            out.push('>');
        }
        self.rendered.pop();
        self.doc_default.pop();
    }
}

fn is_soap(ns: &NsStack, el: &Element, local: &str) -> bool {
    el.local == local && !el.prefix.is_empty() && ns.lookup(&el.prefix) == Some(SOAP11_NS)
}

fn offset(pos: u64) -> Result<usize, String> {
    usize::try_from(pos).map_err(|_| "envelope too large".to_string())
}

fn split_envelope(input: &str) -> Result<Parts<'_>, String> {
    let mut reader = Reader::from_str(input);
    {
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
    }
    let mut ns = NsStack { frames: Vec::new() };
    let mut stage = Stage::Prolog;
    let mut canon = Canon::new("");
    let mut env_prefix = String::new();
    // (start of the Header's tag, end of it, open tag text, close tag text, soap prefix)
    let mut header: Option<(usize, usize, String, String, String)> = None;
    let mut body_start = 0usize;
    let mut body_end = 0usize;

    loop {
        let start = offset(reader.buffer_position())?;
        let event = reader.read_event().map_err(|e| format!("envelope is not well-formed XML: {e}"))?;
        let end = offset(reader.buffer_position())?;
        match event {
            Event::Eof => break,
            Event::Decl(d) => {
                if stage != Stage::Prolog || start != 0 {
                    return Err("misplaced XML declaration".to_string());
                }
                if d.version().map_err(|e| format!("bad XML declaration: {e}"))?.as_ref() != "1.0" {
                    return Err("only XML 1.0 is supported".to_string());
                }
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|e| format!("bad XML declaration: {e}"))?;
                    if !enc.eq_ignore_ascii_case("utf-8") {
                        return Err(format!("unsupported encoding {enc:?} (UTF-8 only)"));
                    }
                }
            }
            Event::Text(t) => {
                let text = t.xml10_content();
                match &stage {
                    Stage::InBody { .. } => canon.text(&text),
                    Stage::InHeader { .. } => {}
                    _ if text.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')) => {}
                    _ => return Err("unexpected text outside the Header and Body".to_string()),
                }
            }
            Event::GeneralRef(r) => match &stage {
                Stage::InBody { .. } => {
                    let c = resolve_reference(&r.into_inner())?;
                    canon.text(c.encode_utf8(&mut [0u8; 4]));
                }
                Stage::InHeader { .. } => {
                    resolve_reference(&r.into_inner())?;
                }
                _ => return Err("unexpected reference outside the Header and Body".to_string()),
            },
            Event::CData(c) => match &stage {
                Stage::InBody { .. } => canon.text(&c.xml10_content()),
                Stage::InHeader { .. } => {}
                _ => return Err("unexpected CDATA outside the Header and Body".to_string()),
            },
            Event::Comment(_) => return Err("comments are not supported in the envelope".to_string()),
            Event::PI(_) => return Err("processing instructions are not supported in the envelope".to_string()),
            Event::DocType(_) => return Err("a DOCTYPE is not supported in the envelope".to_string()),
            Event::Start(_) | Event::Empty(_) => {
                let (e, empty) = match &event {
                    Event::Empty(e) => (e, true),
                    Event::Start(e) => (e, false),
                    _ => return Err("internal: not a start tag".to_string()),
                };
                let el = read_element(e)?;
                ns.frames.push(el.decls.clone());
                match &mut stage {
                    Stage::Prolog => {
                        if !is_soap(&ns, &el, "Envelope") {
                            return Err("the root element is not a prefixed SOAP 1.1 Envelope".to_string());
                        }
                        if empty {
                            return Err("the Envelope is empty".to_string());
                        }
                        env_prefix = el.prefix.clone();
                        stage = Stage::InEnvelope { seen_header: false };
                    }
                    Stage::InEnvelope { seen_header } if is_soap(&ns, &el, "Header") => {
                        if *seen_header {
                            return Err("more than one Header".to_string());
                        }
                        if empty {
                            let tag = input.get(start..end).ok_or("bad offsets")?;
                            let open = format!("{}>", tag.trim_end_matches("/>").trim_end());
                            let close = format!("</{}>", el.qname);
                            header = Some((start, end, open, close, el.prefix.clone()));
                            ns.frames.pop();
                            *seen_header = true;
                        } else {
                            let tag = input.get(start..end).ok_or("bad offsets")?;
                            header = Some((start, end, tag.to_string(), String::new(), el.prefix.clone()));
                            stage = Stage::InHeader { depth: 1 };
                        }
                    }
                    Stage::InEnvelope { .. } if is_soap(&ns, &el, "Body") => {
                        if !el.attrs.is_empty() {
                            return Err("the Body has attributes other than namespace declarations".to_string());
                        }
                        body_start = start;
                        // The default namespace the document has at the Body's parent.
                        let outer = ns.frames.len().saturating_sub(1);
                        let outer_default = NsStack { frames: ns.frames[..outer].to_vec() };
                        canon = Canon::new(outer_default.lookup("").unwrap_or(""));
                        canon.start(&el, &ns, &[("wsu:Id", WSU_NS, BODY_ID)])?;
                        if empty {
                            canon.end(&el.qname);
                            ns.frames.pop();
                            body_end = end;
                            stage = Stage::AfterBody;
                        } else {
                            stage = Stage::InBody { depth: 1 };
                        }
                    }
                    Stage::InHeader { depth } => {
                        if el.local == "Security" && ns.lookup(&el.prefix) == Some(WSSE_NS) {
                            return Err("the envelope already has a wsse:Security header".to_string());
                        }
                        if empty {
                            ns.frames.pop();
                        } else {
                            *depth += 1;
                        }
                    }
                    Stage::InBody { depth } => {
                        canon.start(&el, &ns, &[])?;
                        if empty {
                            canon.end(&el.qname);
                            ns.frames.pop();
                        } else {
                            *depth += 1;
                        }
                    }
                    _ => return Err(format!("unexpected element {} in the envelope", el.qname)),
                }
            }
            Event::End(e) => {
                ns.frames.pop();
                match &mut stage {
                    Stage::InHeader { depth } => {
                        *depth -= 1;
                        if *depth == 0 {
                            stage = Stage::InEnvelope { seen_header: true };
                        }
                    }
                    Stage::InBody { depth } => {
                        canon.end(e.name().0);
                        *depth -= 1;
                        if *depth == 0 {
                            body_end = end;
                            stage = Stage::AfterBody;
                        }
                    }
                    Stage::AfterBody => stage = Stage::AfterEnvelope,
                    _ => return Err("the envelope has no Body".to_string()),
                }
            }
        }
    }
    if stage != Stage::AfterEnvelope {
        return Err("the envelope is incomplete or has no Body".to_string());
    }
    let slice = |a: usize, b: usize| input.get(a..b).ok_or_else(|| "bad offsets".to_string());
    let parts = match header {
        Some((hs, he, open, close, prefix)) => Parts {
            before_header: slice(0, hs)?,
            header_open: open,
            header_close: close,
            between: slice(he, body_start)?,
            canonical_body: canon.out,
            document_body: canon.doc,
            after_body: slice(body_end, input.len())?,
            soap_prefix: prefix,
        },
        None => Parts {
            before_header: slice(0, body_start)?,
            header_open: format!("<{env_prefix}:Header>"),
            header_close: format!("</{env_prefix}:Header>"),
            between: "",
            canonical_body: canon.out,
            document_body: canon.doc,
            after_body: slice(body_end, input.len())?,
            soap_prefix: env_prefix,
        },
    };
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVELOPE: &str = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:vision="urn:vision">
  <soapenv:Header/>
  <soapenv:Body>
    <vision:visionRequest>
      <vision:serviceDefinition><vision:name>VOS.GetConfiguration</vision:name><vision:version>2.3.0</vision:version></vision:serviceDefinition>
      <vision:serviceHeader>
        <vision:id>0f8fad5b-d9cb-469f-a165-70867728950e</vision:id><vision:creationTime>2026-12-01T10:00:00</vision:creationTime>
        <vision:target><vision:nationalCode>A12345</vision:nationalCode></vision:target>
        <vision:credentials><vision:rosuAccountId>R&amp;1</vision:rosuAccountId><vision:apiKey>k&lt;"y"&gt;</vision:apiKey></vision:credentials>
        <vision:opsReference><vision:provider>P1</vision:provider><vision:accountId>P1</vision:accountId></vision:opsReference>
      </vision:serviceHeader>
      <vision:serviceContent/>
    </vision:visionRequest>
  </soapenv:Body>
</soapenv:Envelope>"#;

    fn ec_pems() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert =
            rcgen::CertificateParams::new(vec!["t".to_string()]).expect("params").self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn ec_signer() -> Signer {
        let (cert, key) = ec_pems();
        Signer::from_pem(cert.as_bytes(), key.as_bytes()).expect("signer")
    }

    fn between<'a>(s: &'a str, from: &str, to: &str) -> &'a str {
        let start = s.find(from).expect("start marker");
        let end = s[start..].find(to).expect("end marker") + start + to.len();
        &s[start..end]
    }

    #[test]
    fn canonical_body_of_the_vision_request() {
        let parts = split_envelope(ENVELOPE).expect("split");
        let expected = concat!(
            r#"<soapenv:Body xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:wsu=""#,
            "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
            r#"" wsu:Id="Body-wssec">"#,
            "\n    ",
            r#"<vision:visionRequest xmlns:vision="urn:vision">"#,
            "\n      ",
            "<vision:serviceDefinition><vision:name>VOS.GetConfiguration</vision:name>",
            "<vision:version>2.3.0</vision:version></vision:serviceDefinition>\n      <vision:serviceHeader>\n        ",
            "<vision:id>0f8fad5b-d9cb-469f-a165-70867728950e</vision:id>",
            "<vision:creationTime>2026-12-01T10:00:00</vision:creationTime>\n        ",
            "<vision:target><vision:nationalCode>A12345</vision:nationalCode></vision:target>\n        ",
            "<vision:credentials><vision:rosuAccountId>R&amp;1</vision:rosuAccountId>",
            r#"<vision:apiKey>k&lt;"y"&gt;</vision:apiKey></vision:credentials>"#,
            "\n        <vision:opsReference><vision:provider>P1</vision:provider>",
            "<vision:accountId>P1</vision:accountId></vision:opsReference>\n      ",
            "</vision:serviceHeader>\n      <vision:serviceContent></vision:serviceContent>\n    ",
            "</vision:visionRequest>\n  </soapenv:Body>",
        );
        assert_eq!(parts.canonical_body, expected);
        assert_eq!(parts.document_body, expected);
        assert_eq!(parts.soap_prefix, "soapenv");
        assert_eq!(parts.header_open, "<soapenv:Header>");
        assert_eq!(parts.header_close, "</soapenv:Header>");
    }

    #[test]
    fn canonicalisation_rules() {
        let env = concat!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:d" xmlns:v="urn:v">"#,
            r#"<s:Body xmlns:unused="urn:u"><v:a z="1" b="&#9;x&#xA;" v:c="2" xml:lang="en" a="	y"#,
            "\r\n",
            r#"">t&#13;"#,
            "\r\n\r<![CDATA[<&>]]></v:a><e/><n xmlns=\"\"><v:m/></n></s:Body></s:Envelope>",
        );
        let parts = split_envelope(env).expect("split");
        let body = parts.canonical_body.split_once('>').expect("tag").1;
        assert_eq!(
            body,
            concat!(
                r#"<v:a xmlns:v="urn:v" a=" y " b="&#x9;x&#xA;" z="1" xml:lang="en" v:c="2">t&#xD;"#,
                "\n\n&lt;&amp;&gt;</v:a>",
                r#"<e xmlns="urn:d"></e><n><v:m xmlns:v="urn:v"></v:m></n></s:Body>"#,
            )
        );
        // The document keeps `n` out of the inherited default namespace.
        assert!(parts.document_body.contains(r#"<n xmlns=""><v:m xmlns:v="urn:v"></v:m></n>"#));
        assert_eq!(parts.document_body.replace(r#"<n xmlns="">"#, "<n>"), parts.canonical_body);
    }

    #[test]
    fn signed_info_and_timestamp_shapes() {
        assert_eq!(
            signed_info_xml(RSA_SHA256_URI, "BD", "TD"),
            concat!(
                r#"<ds:SignedInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#">"#,
                r#"<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"></ds:CanonicalizationMethod>"#,
                r#"<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"></ds:SignatureMethod>"#,
                r##"<ds:Reference URI="#Body-wssec"><ds:Transforms>"##,
                r#"<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"></ds:Transform></ds:Transforms>"#,
                r#"<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"></ds:DigestMethod>"#,
                "<ds:DigestValue>BD</ds:DigestValue></ds:Reference>",
                r##"<ds:Reference URI="#TS-wssec"><ds:Transforms>"##,
                r#"<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"></ds:Transform></ds:Transforms>"#,
                r#"<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"></ds:DigestMethod>"#,
                "<ds:DigestValue>TD</ds:DigestValue></ds:Reference></ds:SignedInfo>",
            )
        );
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z").expect("time").with_timezone(&Utc);
        assert_eq!(
            timestamp_xml(now),
            concat!(
                r#"<wsu:Timestamp xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd" wsu:Id="TS-wssec">"#,
                "<wsu:Created>2026-01-02T03:04:05.678Z</wsu:Created><wsu:Expires>2026-01-02T03:09:05.678Z</wsu:Expires>",
                "</wsu:Timestamp>",
            )
        );
    }

    #[test]
    fn signed_envelope_is_self_consistent() {
        let signer = ec_signer();
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").expect("time").with_timezone(&Utc);
        let signed = signer.sign_envelope_at(ENVELOPE, now).expect("sign");
        assert!(signed.starts_with(
            "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:vision=\"urn:vision\">\n  \
             <soapenv:Header><wsse:Security "
        ));
        assert!(signed.contains(r#" soapenv:mustUnderstand="1">"#));
        assert!(signed.contains(&format!(r#"<wsse:BinarySecurityToken EncodingType="{BASE64_ENCODING_TYPE}""#)));
        assert!(signed.contains(&format!(r#"wsu:Id="X509-wssec">{}<"#, B64.encode(signer.certificate_der()))));
        assert!(signed.contains(&format!(r##"<wsse:Reference URI="#X509-wssec" ValueType="{X509V3_VALUE_TYPE}"/>"##)));
        assert!(signed.ends_with("</soapenv:Envelope>"));
        let body = between(&signed, "<soapenv:Body ", "</soapenv:Body>");
        let ts = between(&signed, "<wsu:Timestamp ", "</wsu:Timestamp>");
        let signed_info = between(&signed, "<ds:SignedInfo ", "</ds:SignedInfo>");
        assert_eq!(
            signed_info,
            signed_info_xml(ECDSA_SHA256_URI, &sha256_b64(body.as_bytes()), &sha256_b64(ts.as_bytes()))
        );
        let value = between(&signed, "<ds:SignatureValue>", "</ds:SignatureValue>");
        let value = value.trim_start_matches("<ds:SignatureValue>").trim_end_matches("</ds:SignatureValue>");
        let sig = B64.decode(value).expect("base64");
        assert_eq!(sig.len(), 64, "raw r||s");
        let public = cert_public_key(signer.certificate_der()).expect("spki").key.to_vec();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public)
            .verify(signed_info.as_bytes(), &sig)
            .expect("signature verifies");
    }

    #[test]
    fn bad_pem_inputs_are_named() {
        let (cert, key) = ec_pems();
        let err = |c: &str, k: &str| Signer::from_pem(c.as_bytes(), k.as_bytes()).expect_err("must fail");
        assert_eq!(err("", &key), "certificate: no CERTIFICATE PEM block found");
        assert_eq!(err(&key, &key), "certificate: no CERTIFICATE PEM block found");
        assert_eq!(
            err("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", &key),
            "certificate: malformed PEM: invalid base64"
        );
        assert_eq!(
            err("-----BEGIN CERTIFICATE-----\nMIIB\n", &key),
            "certificate: malformed PEM: a section has no END line"
        );
        assert_eq!(
            err("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n", &key),
            "certificate: not a valid X.509 certificate"
        );
        let no_key =
            "private key: no unencrypted private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) PEM block found";
        assert_eq!(err(&cert, ""), no_key);
        assert_eq!(err(&cert, &cert), no_key);
        assert_eq!(
            err(&cert, "-----BEGIN ENCRYPTED PRIVATE KEY-----\naGVsbG8=\n-----END ENCRYPTED PRIVATE KEY-----\n"),
            no_key
        );
        let unsupported = "private key: key type unsupported (need RSA of at least 2048 bits or EC P-256)";
        assert_eq!(err(&cert, "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n"), unsupported);
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let other = rcgen::KeyPair::generate_for(alg).expect("key").serialize_pem();
            assert_eq!(err(&cert, &other), unsupported);
        }
        assert_eq!(
            err(&cert, "-----BEGIN EC PRIVATE KEY-----\naGVsbG8=\n-----END EC PRIVATE KEY-----\n"),
            "private key: malformed EC PRIVATE KEY"
        );
        assert_eq!(
            err(&cert, "-----BEGIN RSA PRIVATE KEY-----\naGVsbG8=\n-----END RSA PRIVATE KEY-----\n"),
            "private key: RSA key rejected: InvalidEncoding"
        );
    }

    #[test]
    fn signer_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Signer>();
    }

    #[test]
    fn mismatched_key_and_certificate() {
        let (cert, _) = ec_pems();
        let (_, other_key) = ec_pems();
        assert_eq!(
            Signer::from_pem(cert.as_bytes(), other_key.as_bytes()).expect_err("mismatch"),
            "private key does not match certificate: both are EC P-256 but the public keys differ"
        );
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("wssec-unit-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = ec_pems();
        let (_, other_key) = ec_pems();
        let cert_path = dir.join("c.pem");
        let key_path = dir.join("k.pem");
        let other_path = dir.join("o.pem");
        std::fs::write(&cert_path, &cert).expect("write");
        std::fs::write(&key_path, &key).expect("write");
        std::fs::write(&other_path, &other_key).expect("write");
        let missing = dir.join("missing.pem");
        let e = Signer::from_pem_files(&missing, &key_path).expect_err("missing cert");
        assert!(e.starts_with(&format!("certificate file {}: unreadable: ", missing.display())), "{e}");
        let e = Signer::from_pem_files(&cert_path, &missing).expect_err("missing key");
        assert!(e.starts_with(&format!("private key file {}: unreadable: ", missing.display())), "{e}");
        let e = Signer::from_pem_files(&key_path, &key_path).expect_err("key as cert");
        assert_eq!(e, format!("certificate file {}: no CERTIFICATE PEM block found", key_path.display()));
        let e = Signer::from_pem_files(&cert_path, &cert_path).expect_err("cert as key");
        assert!(e.starts_with(&format!("private key file {}: no unencrypted private key", cert_path.display())), "{e}");
        let e = Signer::from_pem_files(&cert_path, &other_path).expect_err("mismatch");
        assert_eq!(
            e,
            format!(
                "private key file {} does not match certificate file {}: both are EC P-256 but the public keys differ",
                other_path.display(),
                cert_path.display()
            )
        );
        assert!(Signer::from_pem_files(&cert_path, &key_path).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn debug_and_errors_hold_no_key_material() {
        let (cert, key) = ec_pems();
        let signer = Signer::from_pem(cert.as_bytes(), key.as_bytes()).expect("signer");
        let debug = format!("{signer:?} {signer:#?}");
        assert!(debug.contains("certificate_sha256") && debug.contains(ECDSA_SHA256_URI), "{debug}");
        let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        let key_der = B64.decode(&key_body).expect("base64");
        let key_hex: String = key_der.iter().map(|b| format!("{b:02x}")).collect();
        for chunk in key_body.as_bytes().chunks(12).chain(key_hex.as_bytes().chunks(12)) {
            let chunk = std::str::from_utf8(chunk).expect("ascii");
            assert!(!debug.contains(chunk), "Debug shows key material: {debug}");
        }
        assert!(!debug.contains(&format!("{key_der:?}")[1..20]));
        // A key that fails to load, in a damaged file.
        let damaged = key.replacen("MI", "XX", 1);
        let err = Signer::from_pem(cert.as_bytes(), damaged.as_bytes()).expect_err("damaged");
        for chunk in key_body.as_bytes().chunks(12) {
            assert!(!err.contains(std::str::from_utf8(chunk).expect("ascii")), "{err}");
        }
    }

    #[test]
    fn unsupported_envelopes_are_errors() {
        let signer = ec_signer();
        let ok_body = "<soapenv:Body><vision:x>1</vision:x></soapenv:Body>";
        let wrap = |inner: &str| {
            format!(
                r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:vision="urn:vision">{inner}</soapenv:Envelope>"#
            )
        };
        assert!(signer.sign_envelope(&wrap(ok_body)).is_ok());
        let cases = [
            String::new(),
            "garbage".to_string(),
            wrap(""),
            wrap("<soapenv:Header/>"),
            wrap(&format!("{ok_body}{ok_body}")),
            wrap(&format!("{ok_body}<soapenv:Header/>")),
            wrap(&format!("<soapenv:Header/><soapenv:Header/>{ok_body}")),
            wrap(&format!("{ok_body}<vision:after/>")),
            wrap(&format!("text{ok_body}")),
            wrap(&format!("<!-- c -->{ok_body}")),
            wrap("<soapenv:Body><!-- c --></soapenv:Body>"),
            wrap("<soapenv:Body><?pi x?></soapenv:Body>"),
            wrap("<soapenv:Body>&nbsp;</soapenv:Body>"),
            wrap("<soapenv:Body>&#0;</soapenv:Body>"),
            wrap("<soapenv:Body>a & b</soapenv:Body>"),
            wrap("<soapenv:Body><undeclared:x/></soapenv:Body>"),
            wrap("<soapenv:Body><vision:x undeclared:a=\"1\"/></soapenv:Body>"),
            wrap("<soapenv:Body><vision:x a=\"1\" a=\"2\"/></soapenv:Body>"),
            wrap("<soapenv:Body><vision:x xmlns:p=\"urn:p\" xmlns:q=\"urn:p\" p:a=\"1\" q:a=\"2\"/></soapenv:Body>"),
            wrap("<soapenv:Body><vision:x a=\"<\"/></soapenv:Body>"),
            wrap("<soapenv:Body><vision:x></vision:y></soapenv:Body>"),
            wrap("<soapenv:Body><vision:x>"),
            wrap("<soapenv:Body Id=\"x\"></soapenv:Body>"),
            wrap("<soapenv:Body><wsu:x xmlns:wsu=\"urn:other\"/></soapenv:Body>"),
            wrap(&format!("<soapenv:Header><wsse:Security xmlns:wsse=\"urn:x\"/></soapenv:Header>{ok_body}")),
            wrap(&format!("<soapenv:Header><s:Security xmlns:s=\"{WSSE_NS}\"/></soapenv:Header>{ok_body}")),
            format!("<!DOCTYPE x>{}", wrap(ok_body)),
            format!("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>{}", wrap(ok_body)),
            format!("<?xml version=\"1.1\"?>{}", wrap(ok_body)),
            format!("{}<x/>", wrap(ok_body)),
            format!("{}trailing", wrap(ok_body)),
            format!("<Envelope xmlns=\"{SOAP11_NS}\"><Body></Body></Envelope>"),
            "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Body></s:Body></s:Envelope>"
                .to_string(),
            format!("<s:Envelope xmlns:s=\"{SOAP11_NS}\"/>"),
        ];
        for case in &cases {
            assert!(signer.sign_envelope(case).is_err(), "accepted: {case}");
        }
    }

    #[test]
    fn no_panic_on_truncated_or_mutated_envelopes() {
        let signer = ec_signer();
        for (i, _) in ENVELOPE.char_indices() {
            let _ = signer.sign_envelope(&ENVELOPE[..i]);
            let _ = signer.sign_envelope(&ENVELOPE[i..]);
            for c in ['<', '>', '&', '"', '/', ':', '\r', 'é', ' '] {
                let mut s = ENVELOPE.to_string();
                s.replace_range(
                    i..i + ENVELOPE[i..].chars().next().map_or(0, char::len_utf8),
                    c.encode_utf8(&mut [0; 4]),
                );
                let _ = signer.sign_envelope(&s);
            }
        }
    }
}
