//! The envelope's layout, rotation, tampering and truncation refused byte by byte, key ring
//! parsing with every problem named, and no key material in any Debug or error.

use super::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn spec(entries: &[(&str, u8)]) -> String {
    entries.iter().map(|(id, fill)| format!("{id}:{}", b64(&[*fill; 32]))).collect::<Vec<_>>().join(",")
}

fn ring(entries: &[(&str, u8)]) -> Keyring {
    Keyring::parse(&spec(entries)).unwrap()
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

#[test]
fn round_trip_and_layout() {
    let keys = ring(&[("k1", 1)]);
    let sealed = keys.encrypt("user-1", &secret(r#"{"access_identity_guid":"g"}"#));
    assert_eq!(sealed[0], VERSION);
    assert_eq!(sealed[1], 2);
    assert_eq!(&sealed[2..4], b"k1");
    assert_eq!(sealed.len(), 4 + NONCE_LEN + 28 + TAG_LEN);
    assert_eq!(key_id_of(&sealed), Ok("k1"));
    let opened = keys.decrypt("user-1", &sealed).unwrap();
    assert_eq!(opened.expose_secret(), r#"{"access_identity_guid":"g"}"#);
    // The plaintext does not appear in the ciphertext.
    assert!(!sealed.windows(4).any(|w| w == b"guid"));
}

#[test]
fn empty_plaintext_round_trips() {
    let keys = ring(&[("k1", 1)]);
    let sealed = keys.encrypt("u", &secret(""));
    assert_eq!(keys.decrypt("u", &sealed).unwrap().expose_secret(), "");
}

#[test]
fn nonces_differ_between_encryptions() {
    let keys = ring(&[("k1", 1)]);
    let a = keys.encrypt("u", &secret("same"));
    let b = keys.encrypt("u", &secret("same"));
    assert_ne!(a, b);
}

#[test]
fn rotation_new_key_encrypts_old_key_still_decrypts() {
    let old = ring(&[("old", 1)]);
    let under_old = old.encrypt("u", &secret("token"));

    let rotated = ring(&[("new", 2), ("old", 1)]);
    assert_eq!(rotated.primary_id(), "new");
    assert_eq!(rotated.ids(), ["new", "old"]);
    assert!(rotated.has("old") && rotated.has("new") && !rotated.has("other"));
    assert_eq!(rotated.decrypt("u", &under_old).unwrap().expose_secret(), "token");

    let under_new = rotated.encrypt("u", &secret("token"));
    assert_eq!(key_id_of(&under_new), Ok("new"));
    assert_eq!(old.decrypt("u", &under_new).unwrap_err(), DecryptError::UnknownKeyId);
}

#[test]
fn unknown_key_id_and_same_id_with_another_key() {
    let sealed = ring(&[("k1", 1)]).encrypt("u", &secret("t"));
    assert_eq!(ring(&[("k2", 1)]).decrypt("u", &sealed).unwrap_err(), DecryptError::UnknownKeyId);
    // Same id, different key bytes: authentication fails rather than garbage out.
    assert_eq!(ring(&[("k1", 9)]).decrypt("u", &sealed).unwrap_err(), DecryptError::Failed);
}

#[test]
fn wrong_user_id_fails() {
    let keys = ring(&[("k1", 1)]);
    let sealed = keys.encrypt("alice", &secret("t"));
    assert_eq!(keys.decrypt("bob", &sealed).unwrap_err(), DecryptError::Failed);
    assert_eq!(keys.decrypt("alice ", &sealed).unwrap_err(), DecryptError::Failed);
    assert_eq!(keys.decrypt("", &sealed).unwrap_err(), DecryptError::Failed);
}

#[test]
fn every_tampered_byte_is_rejected() {
    // A second key whose id differs from the primary's in one bit of one byte ("k1" vs
    // "k0"), so even a tampered id that names a configured key must fail.
    let keys = ring(&[("k1", 1), ("k0", 1)]);
    let sealed = keys.encrypt("u", &secret("tok"));
    for position in 0..sealed.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut tampered = sealed.clone();
            tampered[position] ^= flip;
            let err = keys.decrypt("u", &tampered).unwrap_err();
            let header_len = 2 + 2;
            if position < header_len {
                assert!(
                    matches!(err, DecryptError::Malformed | DecryptError::UnknownKeyId | DecryptError::Failed),
                    "position {position}: {err:?}"
                );
            } else {
                assert_eq!(err, DecryptError::Failed, "position {position}");
            }
        }
    }
    // Appending a byte breaks the tag too.
    let mut longer = sealed.clone();
    longer.push(0);
    assert_eq!(keys.decrypt("u", &longer).unwrap_err(), DecryptError::Failed);
}

#[test]
fn every_truncation_is_an_error() {
    let keys = ring(&[("k1", 1)]);
    let sealed = keys.encrypt("u", &secret("tok"));
    for len in 0..sealed.len() {
        let cut = &sealed[..len];
        let err = keys.decrypt("u", cut).unwrap_err();
        assert!(matches!(err, DecryptError::Malformed | DecryptError::Failed), "length {len}: {err:?}");
        // Short of a header, nonce and tag, the format check catches it before any key.
        if len < 4 + NONCE_LEN + TAG_LEN {
            assert_eq!(err, DecryptError::Malformed, "length {len}");
            assert_eq!(key_id_of(cut), Err(DecryptError::Malformed), "length {len}");
        }
    }
}

#[test]
fn malformed_headers() {
    let keys = ring(&[("k1", 1)]);
    let mut sealed = keys.encrypt("u", &secret("tok"));
    sealed[0] = 2;
    assert_eq!(key_id_of(&sealed), Err(DecryptError::Malformed));
    let mut zero_len = keys.encrypt("u", &secret("tok"));
    zero_len[1] = 0;
    assert_eq!(key_id_of(&zero_len), Err(DecryptError::Malformed));
    let mut bad_char = keys.encrypt("u", &secret("tok"));
    bad_char[2] = b'!';
    assert_eq!(keys.decrypt("u", &bad_char).unwrap_err(), DecryptError::Malformed);
    let mut long = vec![VERSION, 200];
    long.extend(std::iter::repeat_n(b'a', 300));
    assert_eq!(key_id_of(&long), Err(DecryptError::Malformed));
    assert_eq!(key_id_of(&[]), Err(DecryptError::Malformed));
}

#[test]
fn authentic_non_utf8_plaintext_is_reported() {
    // Seal raw bytes the way `encrypt` would, but with invalid UTF-8 inside.
    let keys = ring(&[("k1", 1)]);
    let entry = &keys.primary;
    let nonce = [7u8; NONCE_LEN];
    let mut body = vec![0xff, 0xfe];
    entry
        .key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(&entry.header, "u")),
            &mut body,
        )
        .unwrap();
    let mut sealed = entry.header.clone();
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&body);
    assert_eq!(keys.decrypt("u", &sealed).unwrap_err(), DecryptError::NotUtf8);
}

#[test]
fn labels() {
    assert_eq!(DecryptError::Malformed.label(), "malformed_ciphertext");
    assert_eq!(DecryptError::UnknownKeyId.label(), "unknown_key_id");
    assert_eq!(DecryptError::Failed.label(), "decryption_failed");
    assert_eq!(DecryptError::NotUtf8.label(), "not_utf8");
}

#[test]
fn parse_accepts_whitespace_and_ids_with_dashes() {
    let spec = format!(" 2026-03_a : {} , old:{} ", b64(&[1; 32]), b64(&[2; 32]));
    let keys = Keyring::parse(&spec).unwrap();
    assert_eq!(keys.ids(), ["2026-03_a", "old"]);
}

#[test]
fn parse_reports_every_problem_without_key_material() {
    let short = b64(b"SHORT-KEY-MATERIAL");
    let bare = b64(&[0x5a; 32]);
    let spec = format!(
        "k1:{good},,{bare},:{good},bad id!:{good},k2:{short},k3:not*base64*KEYTEXT,k1:{good}",
        good = b64(&[1; 32])
    );
    let problems = Keyring::parse(&spec).unwrap_err();
    assert_eq!(
        problems,
        [
            "entry 2: is empty (check for a doubled or trailing comma)",
            "entry 3: must be id:base64key (no ':' found)",
            "entry 4: the key id before ':' is empty",
            "entry 5: the key id must be 1 to 64 letters, digits, '-' or '_'",
            "entry 6 (id \"k2\"): the key must decode to 32 bytes (got 18)",
            "entry 7 (id \"k3\"): the key is not valid standard base64",
            "entry 8 (id \"k1\"): duplicate key id (also entry 1)",
        ]
    );
    let all = problems.concat();
    assert!(!all.contains(&short) && !all.contains(&bare) && !all.contains("KEYTEXT"));
    assert!(!all.contains(&b64(&[1; 32])));
}

#[test]
fn parse_rejects_empty_and_overlong_ids() {
    assert_eq!(Keyring::parse("").unwrap_err(), ["must list at least one key as id:base64key"]);
    assert_eq!(Keyring::parse("  ").unwrap_err().len(), 1);
    let long_id = "a".repeat(65);
    let problems = Keyring::parse(&format!("{long_id}:{}", b64(&[1; 32]))).unwrap_err();
    assert_eq!(problems, ["entry 1: the key id must be 1 to 64 letters, digits, '-' or '_'"]);
    assert!(Keyring::parse(&format!("{}:{}", "a".repeat(64), b64(&[1; 32]))).is_ok());
}

#[test]
fn debug_and_errors_show_no_key_material() {
    let key = b64(&[0x42; 32]);
    let keys = Keyring::parse(&format!("primary:{key},older:{}", b64(&[0x43; 32]))).unwrap();
    let debug = format!("{keys:?}");
    assert_eq!(debug, r#"Keyring { primary: "primary", ids: ["primary", "older"] }"#);
    assert!(!debug.contains(&key));
    for e in [DecryptError::Malformed, DecryptError::UnknownKeyId, DecryptError::Failed, DecryptError::NotUtf8] {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&key) && !text.contains("primary"));
    }
}
