//! The signer against fixed envelopes and keys: canonical bytes, template shapes, a signature
//! that verifies, bad keys and unsupported envelopes named, and no panic on mangled input.
//! Verification by xmlsec1, an independent implementation, is in `tests/it/wssec.rs`.

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
    let cert = rcgen::CertificateParams::new(vec!["t".to_string()]).expect("params").self_signed(&key).expect("cert");
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
        "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Body></s:Body></s:Envelope>".to_string(),
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
            s.replace_range(i..i + ENVELOPE[i..].chars().next().map_or(0, char::len_utf8), c.encode_utf8(&mut [0; 4]));
            let _ = signer.sign_envelope(&s);
        }
    }
}
