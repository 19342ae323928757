//! The Vision adapter and the WS-Security signer together, through the configuration path:
//! the envelope the adapter really sends is signed and verifies with `xmlsec1`.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::post;
use im1_revalidator::config::Settings;
use im1_revalidator::model::Supplier;
use im1_revalidator::suppliers::CheckTarget;
use im1_revalidator::token::Token;
use secrecy::SecretString;

use crate::helpers::install_crypto;

const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const WSU: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";

#[tokio::test]
async fn the_envelope_the_vision_adapter_sends_is_signed_and_verifies() {
    install_crypto();
    let dir = std::env::temp_dir().join(format!("im1-vision-sign-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["im1-revalidator".to_owned()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("sign.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("sign.key"), key.serialize_pem()).unwrap();

    // A stand-in Vision endpoint that keeps what it receives.
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = received.clone();
    let app = Router::new().route(
        "/vision",
        post(move |body: String| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(body);
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let vars: HashMap<String, String> = [
        ("IM1_VISION_URL", format!("http://{addr}/vision")),
        ("IM1_VISION_PROVIDER_ID", "prov-1".to_owned()),
        ("IM1_VISION_SIGNING_CERT", dir.join("sign.pem").display().to_string()),
        ("IM1_VISION_SIGNING_KEY", dir.join("sign.key").display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = Settings::from_vars(&vars).unwrap();
    let adapters = im1_revalidator::cli::adapters(&settings).unwrap();
    let token = Token::Vision {
        rosu_account_id: SecretString::from("ROSU-SECRET-1"),
        api_key: SecretString::from("KEY-SECRET-1"),
    };
    let answer = adapters[&Supplier::Vision].check(CheckTarget { ods_code: "C81001", token: &token }).await;
    assert_ne!(answer.evidence.detail.as_deref(), Some("signing_failed"), "{answer:?}");

    let body = received.lock().unwrap().first().cloned().expect("the adapter sent a request");
    assert!(body.contains("wsse:Security") && body.contains("ds:Signature"), "{body}");
    let file = dir.join("sent.xml");
    let verify = |xml: &str| {
        std::fs::write(&file, xml).unwrap();
        let out = Command::new("xmlsec1")
            .arg("--verify")
            .arg("--pubkey-cert-pem")
            .arg(dir.join("sign.pem"))
            .args(["--id-attr:Id", &format!("{SOAP}:Body"), "--id-attr:Id", &format!("{WSU}:Timestamp")])
            .arg(&file)
            .output()
            .expect("xmlsec1 is installed (scripts/test installs it)");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, out) = verify(&body);
    assert!(ok, "xmlsec1 rejected the adapter's signed envelope:\n{out}\n{body}");
    let (ok, _) = verify(&body.replace("C81001", "C81002"));
    assert!(!ok, "an altered ODS code must break the signature");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_signing_files_stop_start_up() {
    install_crypto();
    let vars: HashMap<String, String> = [
        ("IM1_VISION_URL", "http://127.0.0.1:1/vision"),
        ("IM1_VISION_PROVIDER_ID", "prov-1"),
        ("IM1_VISION_SIGNING_CERT", "/nonexistent/sign.pem"),
        ("IM1_VISION_SIGNING_KEY", "/nonexistent/sign.key"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = Settings::from_vars(&vars).unwrap();
    let err = im1_revalidator::cli::adapters(&settings).err().expect("refused").to_string();
    assert!(err.contains("IM1_VISION_SIGNING_CERT"), "{err}");
}
