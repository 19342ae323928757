//! PEM and DER: the signing certificate and key, read with rustls-pki-types and checked
//! against each other with a minimal DER walk (no ASN.1 crate for three fields).

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

// DER encodings of the algorithm object identifiers we look for in a certificate.
pub(super) const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
pub(super) const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
pub(super) const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

pub(super) enum Key {
    Rsa(RsaKeyPair),
    EcdsaP256(EcdsaKeyPair),
}

impl Key {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Key::Rsa(_) => "RSA",
            Key::EcdsaP256(_) => "EC P-256",
        }
    }

    pub(super) fn public_key(&self) -> &[u8] {
        match self {
            Key::Rsa(k) => k.public().as_ref(),
            Key::EcdsaP256(k) => k.public_key().as_ref(),
        }
    }
}

pub(super) fn pem_problem(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no {what} PEM block found"),
        pem::Error::MissingSectionEnd { .. } => "malformed PEM: a section has no END line".to_string(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM: bad BEGIN line".to_string(),
        pem::Error::Base64Decode(_) => "malformed PEM: invalid base64".to_string(),
        pem::Error::SectionTooLarge => "malformed PEM: section too large".to_string(),
        _ => "malformed PEM".to_string(),
    }
}

pub(super) fn parse_cert(pem_text: &[u8]) -> Result<Vec<u8>, String> {
    let cert = CertificateDer::from_pem_slice(pem_text).map_err(|e| pem_problem(&e, "CERTIFICATE"))?;
    let der = cert.as_ref().to_vec();
    if cert_public_key(&der).is_none() {
        return Err("not a valid X.509 certificate".to_string());
    }
    Ok(der)
}

pub(super) fn parse_key(pem_text: &[u8]) -> Result<Key, String> {
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
pub(super) fn pkcs8_is_rsa(der: &[u8]) -> bool {
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
pub(super) fn sec1_p256(der: &[u8], rng: &SystemRandom) -> Result<EcdsaKeyPair, String> {
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
pub(super) fn der_any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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

pub(super) fn der_tlv(input: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
    der_any(input).filter(|(t, _, _)| *t == tag)
}

pub(super) enum CertKeyAlg {
    Rsa,
    EcP256,
    Other,
}

pub(super) struct CertKey<'a> {
    pub(super) algorithm: CertKeyAlg,
    pub(super) key: &'a [u8],
}

/// The subject public key of an X.509 certificate: for RSA the `RSAPublicKey` DER, for EC the
/// uncompressed point (the forms ring reports for a key pair's public key).
pub(super) fn cert_public_key(der: &[u8]) -> Option<CertKey<'_>> {
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
