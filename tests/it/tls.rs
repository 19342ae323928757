//! Mutual TLS and private CAs: a TLS simulator that requires a client certificate issued by
//! a CA generated here, reached through the real configuration path.

use std::collections::HashMap;
use std::path::PathBuf;

use im1_revalidator::config::Settings;
use im1_revalidator::model::Supplier;
use im1_revalidator::simulator::{Scenario, Simulator};
use im1_revalidator::suppliers::{CheckTarget, Outcome};
use im1_revalidator::token::Token;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use secrecy::SecretString;

use crate::helpers::install_crypto;

/// A CA, a server certificate for `localhost` and a client certificate, all issued by it,
/// plus an unrelated CA, written as PEM files in a temporary directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!("im1-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = test_ca("im1 test CA");
        let other = test_ca("some other CA");
        let issue = |name: &str, purpose: ExtendedKeyUsagePurpose, issuer: &Issuer<'_, KeyPair>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![purpose];
            (params.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue("simulator", ExtendedKeyUsagePurpose::ServerAuth, &ca);
        let (client_cert, client_key) = issue("im1-revalidator", ExtendedKeyUsagePurpose::ClientAuth, &ca);
        let (stranger_cert, stranger_key) = issue("stranger", ExtendedKeyUsagePurpose::ClientAuth, &other);
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("other-ca.pem", other.pem()),
            ("server.pem", server_cert),
            ("server.key", server_key),
            ("client.pem", client_cert),
            ("client.key", client_key),
            ("stranger.pem", stranger_cert),
            ("stranger.key", stranger_key),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The mutual-TLS settings: client certificate and key `{client}.pem`/`.key`, trusting `{ca}.pem`.
fn client_files(pki: &Pki, client: &str, ca: &str) -> [(&'static str, String); 3] {
    [
        ("IM1_EMIS_CLIENT_CERT", pki.path(&format!("{client}.pem"))),
        ("IM1_EMIS_CLIENT_KEY", pki.path(&format!("{client}.key"))),
        ("IM1_EMIS_CA_CERT", pki.path(&format!("{ca}.pem"))),
    ]
}

fn test_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn settings(url: &str, tls: &[(&str, String)]) -> Result<Settings, String> {
    let mut vars: HashMap<String, String> = [
        ("IM1_EMIS_URL".to_owned(), url.to_owned()),
        ("IM1_EMIS_APPLICATION_ID".to_owned(), "app".to_owned()),
        ("IM1_HTTP_TIMEOUT".to_owned(), "3s".to_owned()),
    ]
    .into_iter()
    .collect();
    for (k, v) in tls {
        vars.insert((*k).to_owned(), v.clone());
    }
    Settings::from_vars(&vars).map_err(|e| e.to_string())
}

async fn check(settings: &Settings) -> im1_revalidator::suppliers::Answer {
    let adapters = im1_revalidator::cli::adapters(settings).expect("TLS files are usable");
    let token = Token::Emis { access_identity_guid: SecretString::from("guid-tls") };
    adapters[&Supplier::Emis].check(CheckTarget { ods_code: "A81001", token: &token }).await
}

/// A simulator over TLS that demands a client certificate from the test CA.
async fn mtls_simulator(pki: &Pki) -> im1_revalidator::simulator::RunningSimulator {
    let config = im1_revalidator::tls::server_config(
        &pki.read("server.pem"),
        &pki.read("server.key"),
        Some(&pki.read("ca.pem")),
    )
    .unwrap();
    Simulator::new(Scenario::default()).spawn_tls("127.0.0.1:0".parse().unwrap(), config).await.unwrap()
}

#[tokio::test]
async fn a_client_certificate_from_the_private_ca_is_accepted() {
    install_crypto();
    let pki = Pki::new();
    let sim = mtls_simulator(&pki).await;
    let s = settings(&sim.https_url("/emis"), &client_files(&pki, "client", "ca")).unwrap();
    let answer = check(&s).await;
    assert_eq!(answer.outcome, Outcome::Valid, "{answer:?}");
}

#[tokio::test]
async fn no_client_certificate_is_never_a_verdict() {
    install_crypto();
    let pki = Pki::new();
    let sim = mtls_simulator(&pki).await;
    let s = settings(&sim.https_url("/emis"), &[("IM1_EMIS_CA_CERT", pki.path("ca.pem"))]).unwrap();
    let answer = check(&s).await;
    assert!(
        matches!(answer.outcome, Outcome::SupplierConfigError | Outcome::Transient { .. }),
        "a refused handshake must not be a verdict: {answer:?}"
    );
    let detail = answer.evidence.detail.clone().unwrap_or_default();
    assert!(detail.contains("tls") || detail.contains("session"), "{answer:?}");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_a_configuration_error() {
    install_crypto();
    let pki = Pki::new();
    let sim = mtls_simulator(&pki).await;
    let s = settings(&sim.https_url("/emis"), &client_files(&pki, "stranger", "ca")).unwrap();
    let answer = check(&s).await;
    assert!(matches!(answer.outcome, Outcome::SupplierConfigError | Outcome::Transient { .. }), "{answer:?}");
}

#[tokio::test]
async fn a_supplier_certificate_outside_the_configured_ca_is_a_configuration_error() {
    install_crypto();
    let pki = Pki::new();
    let sim = mtls_simulator(&pki).await;
    let s = settings(&sim.https_url("/emis"), &client_files(&pki, "client", "other-ca")).unwrap();
    let answer = check(&s).await;
    assert_eq!(answer.outcome, Outcome::SupplierConfigError, "{answer:?}");
    assert!(answer.evidence.detail.unwrap_or_default().contains("tls_server_certificate_untrusted"));
}

#[tokio::test]
async fn plain_tls_with_a_private_ca_and_no_client_certificate_works() {
    install_crypto();
    let pki = Pki::new();
    let config = im1_revalidator::tls::server_config(&pki.read("server.pem"), &pki.read("server.key"), None).unwrap();
    let sim = Simulator::new(Scenario::default()).spawn_tls("127.0.0.1:0".parse().unwrap(), config).await.unwrap();
    let s = settings(&sim.https_url("/emis"), &[("IM1_EMIS_CA_CERT", pki.path("ca.pem"))]).unwrap();
    assert_eq!(check(&s).await.outcome, Outcome::Valid);
}

#[tokio::test]
async fn unusable_tls_files_stop_start_up_naming_variable_and_file() {
    install_crypto();
    let pki = Pki::new();
    std::fs::write(pki.dir.join("garbage.pem"), "not a certificate").unwrap();
    let cases = [
        (
            vec![("IM1_EMIS_CLIENT_CERT", pki.path("client.pem")), ("IM1_EMIS_CLIENT_KEY", pki.path("server.key"))],
            "IM1_EMIS_CLIENT_KEY: the key in",
        ),
        (
            vec![("IM1_EMIS_CLIENT_CERT", pki.path("missing.pem")), ("IM1_EMIS_CLIENT_KEY", pki.path("client.key"))],
            "IM1_EMIS_CLIENT_CERT: cannot read",
        ),
        (vec![("IM1_EMIS_CA_CERT", pki.path("garbage.pem"))], "IM1_EMIS_CA_CERT:"),
        (
            vec![("IM1_EMIS_CLIENT_CERT", pki.path("garbage.pem")), ("IM1_EMIS_CLIENT_KEY", pki.path("client.key"))],
            "IM1_EMIS_CLIENT_CERT:",
        ),
    ];
    for (vars, expected) in cases {
        let s = settings("https://localhost:1/emis", &vars).unwrap();
        let err = im1_revalidator::cli::adapters(&s).err().expect("start-up refuses").to_string();
        assert!(err.contains(expected), "{expected:?} not in {err}");
        assert!(!err.contains("PRIVATE KEY") && !err.contains("BEGIN"), "no file contents in errors: {err}");
        // And the binary says so with exit 2.
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_im1-revalidator"));
        cmd.arg("check-config").env_clear();
        cmd.env("IM1_EMIS_URL", "https://localhost:1/emis").env("IM1_EMIS_APPLICATION_ID", "app");
        for (k, v) in &vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains(expected));
    }
}

#[tokio::test]
async fn the_simulate_command_serves_mutual_tls() {
    install_crypto();
    let pki = Pki::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_im1-revalidator"))
        .args(["simulate", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", &pki.path("server.pem"), "--tls-key", &pki.path("server.key")])
        .args(["--client-ca", &pki.path("ca.pem")])
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the listener (the process is starting; no fixed sleep).
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let url = format!("https://localhost:{port}/emis");
    let with_cert = settings(&url, &client_files(&pki, "client", "ca")).unwrap();
    let without = settings(&url, &[("IM1_EMIS_CA_CERT", pki.path("ca.pem"))]).unwrap();
    let (good, refused) = (check(&with_cert).await, check(&without).await);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(good.outcome, Outcome::Valid, "{good:?}");
    assert!(!matches!(refused.outcome, Outcome::Valid | Outcome::Invalid(_)), "{refused:?}");
}
