//! WS-Security signing of the Vision envelope, verified by an independent implementation:
//! `xmlsec1` (Debian package `xmlsec1`; CI installs it). RSA keys come from the `openssl` CLI
//! (rcgen with ring cannot generate RSA keys); EC P-256 keys and certificates from rcgen.

use std::path::{Path, PathBuf};
use std::process::Command;

use im1_revalidator::suppliers::wssec::Signer;

/// The envelope of im1-wire.md (Vision) with sample values, as the adapter sends it.
const ENVELOPE: &str = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:vision="urn:vision">
  <soapenv:Header/>
  <soapenv:Body>
    <vision:visionRequest>
      <vision:serviceDefinition><vision:name>VOS.GetConfiguration</vision:name><vision:version>2.3.0</vision:version></vision:serviceDefinition>
      <vision:serviceHeader>
        <vision:id>0f8fad5b-d9cb-469f-a165-70867728950e</vision:id><vision:creationTime>2026-12-01T10:00:00</vision:creationTime>
        <vision:target><vision:nationalCode>A12345</vision:nationalCode></vision:target>
        <vision:credentials><vision:rosuAccountId>1234567</vision:rosuAccountId><vision:apiKey>k&amp;y&lt;"q"&gt;</vision:apiKey></vision:credentials>
        <vision:opsReference><vision:provider>PROV-1</vision:provider><vision:accountId>PROV-1</vision:accountId></vision:opsReference>
      </vision:serviceHeader>
      <vision:serviceContent/>
    </vision:visionRequest>
  </soapenv:Body>
</soapenv:Envelope>"#;

const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const WSU: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("wssec-it-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// An RSA-2048 key (PKCS#8) and self-signed certificate from the openssl CLI: (cert, key).
fn openssl_rsa(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.path(&format!("{name}.key.pem"));
    let cert = dir.path(&format!("{name}.cert.pem"));
    let (ok, out) = run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key));
    assert!(ok, "openssl genpkey failed: {out}");
    let (ok, out) = run(Command::new("openssl")
        .args(["req", "-x509", "-new", "-key"])
        .arg(&key)
        .args(["-subj", "/CN=wssec-test", "-days", "1", "-out"])
        .arg(&cert));
    assert!(ok, "openssl req failed: {out}");
    (cert, key)
}

/// An EC P-256 key (PKCS#8) and self-signed certificate from rcgen: (cert, key).
fn rcgen_ec(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate EC key");
    let cert = rcgen::CertificateParams::new(vec!["wssec-test".to_string()])
        .expect("params")
        .self_signed(&key_pair)
        .expect("self-sign");
    let key_path = dir.path(&format!("{name}.key.pem"));
    let cert_path = dir.path(&format!("{name}.cert.pem"));
    std::fs::write(&key_path, key_pair.serialize_pem()).expect("write key");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    (cert_path, key_path)
}

fn xmlsec1() -> &'static str {
    let found = Command::new("xmlsec1").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "xmlsec1 is not installed (Debian/Ubuntu: apt-get install xmlsec1); these tests need it");
    "xmlsec1"
}

/// Runs `xmlsec1 --verify` on `signed` with the public key of `cert`: (verified, output).
fn xmlsec_verify(dir: &TempDir, cert: &Path, signed: &str, name: &str) -> (bool, String) {
    let file = dir.path(&format!("{name}.xml"));
    std::fs::write(&file, signed).expect("write signed envelope");
    run(Command::new(xmlsec1())
        .arg("--verify")
        .arg("--pubkey-cert-pem")
        .arg(cert)
        .arg("--id-attr:Id")
        .arg(format!("{SOAP}:Body"))
        .arg("--id-attr:Id")
        .arg(format!("{WSU}:Timestamp"))
        .arg(&file))
}

fn sign_and_verify(cert: &Path, key: &Path, dir: &TempDir, name: &str) {
    let signer = Signer::from_pem_files(cert, key).expect("load signer");
    let signed = signer.sign_envelope(ENVELOPE).expect("sign");
    let (ok, out) = xmlsec_verify(dir, cert, &signed, name);
    assert!(ok, "xmlsec1 rejected the signed envelope:\n{out}\n{signed}");

    // Tampering with one character of the Body must break verification.
    let tampered = signed.replacen("A12345", "A12346", 1);
    assert_ne!(tampered, signed);
    let (ok, out) = xmlsec_verify(dir, cert, &tampered, &format!("{name}-tampered-body"));
    assert!(!ok, "xmlsec1 accepted an envelope whose Body was altered:\n{out}");

    // ... and so must tampering with the Timestamp (the second Reference).
    let tampered = signed.replacen("<wsu:Created>2", "<wsu:Created>1", 1);
    assert_ne!(tampered, signed);
    let (ok, out) = xmlsec_verify(dir, cert, &tampered, &format!("{name}-tampered-ts"));
    assert!(!ok, "xmlsec1 accepted an envelope whose Timestamp was altered:\n{out}");
}

#[test]
fn rsa_signed_envelope_verifies_with_xmlsec1() {
    let dir = TempDir::new();
    let (cert, key) = openssl_rsa(&dir, "rsa");
    sign_and_verify(&cert, &key, &dir, "rsa");
}

#[test]
fn ec_p256_signed_envelope_verifies_with_xmlsec1() {
    let dir = TempDir::new();
    let (cert, key) = rcgen_ec(&dir, "ec");
    sign_and_verify(&cert, &key, &dir, "ec");
}

#[test]
fn signature_by_another_key_fails_xmlsec1() {
    let dir = TempDir::new();
    let (cert_a, key_a) = openssl_rsa(&dir, "a");
    let (cert_b, _) = openssl_rsa(&dir, "b");
    let signed = Signer::from_pem_files(&cert_a, &key_a).expect("load").sign_envelope(ENVELOPE).expect("sign");
    let (ok, out) = xmlsec_verify(&dir, &cert_b, &signed, "other-key");
    assert!(!ok, "xmlsec1 accepted a signature checked against the wrong certificate:\n{out}");
}

#[test]
fn mismatched_rsa_key_and_certificate_are_refused() {
    let dir = TempDir::new();
    let (cert_a, _) = openssl_rsa(&dir, "a");
    let (_, key_b) = openssl_rsa(&dir, "b");
    let err = Signer::from_pem_files(&cert_a, &key_b).expect_err("mismatch must be refused");
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains("a.cert.pem") && err.contains("b.key.pem"), "{err}");
}

#[test]
fn pkcs1_rsa_key_is_accepted() {
    let dir = TempDir::new();
    let (cert, key) = openssl_rsa(&dir, "p1");
    let pkcs1 = dir.path("p1.rsa.pem");
    let (ok, out) = run(Command::new("openssl").args(["rsa", "-traditional", "-in"]).arg(&key).arg("-out").arg(&pkcs1));
    assert!(ok, "openssl rsa failed: {out}");
    let text = std::fs::read_to_string(&pkcs1).expect("read");
    assert!(text.contains("BEGIN RSA PRIVATE KEY"), "not PKCS#1: {text:.40}");
    sign_and_verify(&cert, &pkcs1, &dir, "p1");
}

#[test]
fn sec1_ec_key_is_accepted() {
    let dir = TempDir::new();
    let key = dir.path("sec1.key.pem");
    let cert = dir.path("sec1.cert.pem");
    let (ok, out) =
        run(Command::new("openssl").args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"]).arg(&key));
    assert!(ok, "openssl ecparam failed: {out}");
    let (ok, out) = run(Command::new("openssl")
        .args(["req", "-x509", "-new", "-key"])
        .arg(&key)
        .args(["-subj", "/CN=wssec-test", "-days", "1", "-out"])
        .arg(&cert));
    assert!(ok, "openssl req failed: {out}");
    assert!(std::fs::read_to_string(&key).expect("read").contains("BEGIN EC PRIVATE KEY"));
    sign_and_verify(&cert, &key, &dir, "sec1");
}

/// Shapes other than the adapter's exact text that `sign_envelope` accepts, including a Body
/// that exercises every canonicalisation rule; each must verify with xmlsec1, and break when
/// its Body is altered.
#[test]
fn supported_envelope_variants_verify_with_xmlsec1() {
    let dir = TempDir::new();
    let (cert, key) = rcgen_ec(&dir, "variants");
    let signer = Signer::from_pem_files(&cert, &key).expect("load signer");
    let variants = [
        // XML declaration, no whitespace, no Header at all.
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:vision="urn:vision">"#,
            r#"<soapenv:Body><vision:visionRequest><vision:odsCode>A12345</vision:odsCode></vision:visionRequest></soapenv:Body>"#,
            "</soapenv:Envelope>\n",
        )
        .to_string(),
        // A Header with content of its own (kept, unsigned), another SOAP prefix.
        concat!(
            r#"<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/">"#,
            r#"<S:Header><x:trace xmlns:x="urn:x">t-1</x:trace></S:Header>"#,
            r#"<S:Body><v:visionRequest xmlns:v="urn:vision"><v:odsCode>A12345</v:odsCode></v:visionRequest></S:Body>"#,
            "</S:Envelope>",
        )
        .to_string(),
        // Default namespaces, undeclaring one, attribute order and escapes, CR/CRLF, character
        // references, CDATA, non-ASCII, empty elements, an unused declaration on Body.
        [
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:v="urn:vision" xmlns="urn:default">"#,
            "\r\n  <s:Header></s:Header>\r\n",
            r#"  <s:Body xmlns:unused="urn:unused">"#,
            "\r\n",
            r#"<v:req b="2" a="1" v:z="3" xml:lang="en" attr="x&#9;y&#10;z	w&#13;&quot;&lt;&gt;'&apos;&amp;">"#,
            "<plain>A12345 CRLF\r\n lone\r ref&#13;&#xD; &#x3E; ]]&gt; <![CDATA[<cdata & \"stuff\">]]> é€😀 &quot;&apos;</plain>",
            r#"<inner xmlns="" x:y="1" xmlns:x="urn:x"><v:deep/><again xmlns="urn:default"/></inner>"#,
            "<empty/>\t\n</v:req>\n</s:Body>\r\n</s:Envelope>",
        ]
        .concat(),
    ];
    for (i, envelope) in variants.iter().enumerate() {
        let signed = signer.sign_envelope(envelope).unwrap_or_else(|e| panic!("variant {i}: {e}"));
        let (ok, out) = xmlsec_verify(&dir, &cert, &signed, &format!("variant-{i}"));
        assert!(ok, "variant {i}: xmlsec1 rejected:\n{out}\n{signed}");
        if i == 2 {
            // The undeclaration c14n drops is kept in the document (else `inner` would change
            // namespace).
            assert!(signed.contains(r#"<inner xmlns="" xmlns:x="urn:x" x:y="1">"#), "{signed}");
        }
        let tampered = signed.replacen("A12345", "A12346", 1);
        assert_ne!(tampered, signed);
        let (ok, out) = xmlsec_verify(&dir, &cert, &tampered, &format!("variant-{i}-tampered"));
        assert!(!ok, "variant {i}: xmlsec1 accepted an altered Body:\n{out}");
    }
}
