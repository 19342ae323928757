//! Token encryption at rest: AES-256-GCM with a key ring, so keys can be rotated without
//! a flag day.
//!
//! Every ciphertext describes itself, so a row can always be matched to the key that
//! sealed it, and `keys rotate` can find what still uses an old key:
//!
//! ```text
//! +---------+--------+----------------+-----------+--------------------------+
//! | version | id len | key id (ASCII) | nonce     | ciphertext ‖ 16-byte tag |
//! | 1 byte  | 1 byte | 1..=64 bytes   | 12 bytes  | plaintext length + 16    |
//! +---------+--------+----------------+-----------+--------------------------+
//! ```
//!
//! The associated data is a domain tag, the header above and the user id. Binding the
//! user id means a ciphertext copied into another user's row does not decrypt (so a
//! mix-up can never check one person's GP account under another's name); binding the
//! header means the version and key id cannot be edited without detection either.
//!
//! Nonces are 96 random bits from the operating system for every encryption. With the
//! number of tokens an RP stores (millions, re-encrypted a handful of times) the chance
//! of a repeat is far below anything that matters; a counter would need coordinated
//! state across replicas.
//!
//! Nothing here ever formats key bytes: [`Keyring`]'s `Debug` lists key ids only, and
//! [`Keyring::parse`]'s messages name entries by position and id, never their text.

use std::fmt;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use secrecy::zeroize::Zeroize as _;
use secrecy::{ExposeSecret as _, SecretString};

/// The format described in the module docs. A new layout gets a new number, and
/// decryption keeps accepting the old ones for as long as rows may hold them.
const VERSION: u8 = 1;

/// Separates this use of a key from any other it might ever be given.
const AAD_DOMAIN: &[u8] = b"im1-token:v1:";

/// AES-256 takes a 32-byte key.
const KEY_LEN: usize = 32;

/// AES-GCM's authentication tag.
const TAG_LEN: usize = 16;

/// Key ids are stored in every ciphertext behind a one-byte length; 64 is plenty for a
/// name like `2026-03-primary` and keeps rows small.
const MAX_ID_LEN: usize = 64;

/// Why a stored ciphertext could not be turned back into a token. Callers record
/// [`DecryptError::label`] as a metric label and in event evidence, so the variants are
/// deliberately coarse and say nothing about the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Not in the format above: wrong version, bad key id, or too short.
    #[error("the stored ciphertext is malformed")]
    Malformed,
    /// Sealed under a key id that is not configured in `IM1_ENCRYPTION_KEYS`.
    #[error("the stored ciphertext uses a key id that is not configured")]
    UnknownKeyId,
    /// Authentication failed: tampered bytes, the wrong key behind a known id, or a
    /// ciphertext that belongs to another user.
    #[error("the stored ciphertext failed authentication")]
    Failed,
    /// Authentic, but the plaintext is not UTF-8 (written by something other than us).
    #[error("the decrypted token is not UTF-8 text")]
    NotUtf8,
}

impl DecryptError {
    /// A stable, low-cardinality name for metrics (`why`) and event evidence.
    pub fn label(self) -> &'static str {
        match self {
            DecryptError::Malformed => "malformed_ciphertext",
            DecryptError::UnknownKeyId => "unknown_key_id",
            DecryptError::Failed => "decryption_failed",
            DecryptError::NotUtf8 => "not_utf8",
        }
    }
}

/// One configured key.
#[derive(Clone)]
struct KeyEntry {
    id: String,
    /// The ciphertext header for this key (version, id length, id), built once at parse
    /// time, where the id's length is checked, so sealing needs no fallible step.
    header: Vec<u8>,
    key: LessSafeKey,
}

/// The configured encryption keys: the first encrypts, every one decrypts.
///
/// Built from `IM1_ENCRYPTION_KEYS` by [`Keyring::parse`]. To rotate, put a new key first
/// and keep the old ones after it until `keys rotate` reports nothing left under them.
#[derive(Clone)]
pub struct Keyring {
    /// Kept apart from the rest so a ring without a primary key cannot be represented.
    primary: KeyEntry,
    others: Vec<KeyEntry>,
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids only: `LessSafeKey` would not print its bytes either, but nothing here
        // should depend on a dependency's Debug to keep a secret.
        f.debug_struct("Keyring").field("primary", &self.primary.id).field("ids", &self.ids()).finish()
    }
}

impl Keyring {
    /// Parses `id:base64key[,id:base64key…]`. Ids are 1 to 64 letters, digits, `-` or `_`;
    /// each key is 32 bytes in standard (padded) base64. Whitespace around entries is
    /// ignored. The first entry encrypts; all of them decrypt.
    ///
    /// Every problem is reported, one message each, naming the entry by position (from 1)
    /// and, when it is a well-formed id, by id. No message contains key text: an entry
    /// that is not `id:key` may be a bare key pasted on its own, so it is not quoted.
    pub fn parse(spec: &str) -> Result<Keyring, Vec<String>> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(vec!["must list at least one key as id:base64key".to_owned()]);
        }
        let mut problems = Vec::new();
        let mut entries: Vec<KeyEntry> = Vec::new();
        for (index, entry) in spec.split(',').enumerate() {
            let position = index + 1;
            match parse_entry(entry.trim()) {
                Ok(parsed) => {
                    if let Some(first) = entries.iter().position(|e| e.id == parsed.id) {
                        problems.push(format!(
                            "entry {position} (id {:?}): duplicate key id (also entry {})",
                            parsed.id,
                            first + 1
                        ));
                    }
                    entries.push(parsed);
                }
                Err(problem) => problems.push(format!("entry {position}{problem}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut entries = entries.into_iter();
        match entries.next() {
            Some(primary) => Ok(Keyring { primary, others: entries.collect(), rng: SystemRandom::new() }),
            // Unreachable: a non-empty spec splits into at least one entry, and an entry
            // either parses or is reported above. Kept as an error rather than a panic.
            None => Err(vec!["must list at least one key as id:base64key".to_owned()]),
        }
    }

    /// The id new ciphertexts are sealed under.
    pub fn primary_id(&self) -> &str {
        &self.primary.id
    }

    /// Every configured id, primary first.
    pub fn ids(&self) -> Vec<&str> {
        self.entries().map(|e| e.id.as_str()).collect()
    }

    /// Whether `id` is configured (for `check-config` and `keys status`).
    pub fn has(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    /// Seals `plaintext` for `user_id` under the primary key, with a fresh random nonce.
    ///
    /// # Panics
    ///
    /// Only if the operating system's random number generator fails (reusing or guessing a
    /// nonce would be worse than stopping) or the plaintext exceeds AES-GCM's limit of
    /// about 64 GiB. Neither depends on data a caller can supply in practice.
    pub fn encrypt(&self, user_id: &str, plaintext: &SecretString) -> Vec<u8> {
        let entry = &self.primary;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the operating system's random number generator failed");

        let text = plaintext.expose_secret().as_bytes();
        // Sized exactly, so the vector never reallocates and leaves a stray copy of the
        // plaintext in freed memory.
        let mut out = Vec::with_capacity(entry.header.len() + NONCE_LEN + text.len() + TAG_LEN);
        out.extend_from_slice(&entry.header);
        out.extend_from_slice(&nonce);
        let body_start = out.len();
        out.extend_from_slice(text);
        let tag = entry
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(&entry.header, user_id)),
                &mut out[body_start..],
            )
            .expect("token plaintext within AES-GCM's size limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a ciphertext made by [`Keyring::encrypt`] for the same `user_id`, with
    /// whichever configured key its header names. Never panics, whatever the input.
    pub fn decrypt(&self, user_id: &str, ciphertext: &[u8]) -> Result<SecretString, DecryptError> {
        let parts = Parts::split(ciphertext)?;
        let entry = self.find(parts.key_id).ok_or(DecryptError::UnknownKeyId)?;
        let nonce = Nonce::try_assume_unique_for_key(parts.nonce).map_err(|_| DecryptError::Malformed)?;

        let mut buffer = parts.body.to_vec();
        let opened = entry
            .key
            .open_in_place(nonce, Aad::from(associated_data(parts.header, user_id)), &mut buffer)
            .map(|plain| plain.len());
        let Ok(len) = opened else {
            // ring zeroes the buffer when authentication fails; nothing secret remains.
            return Err(DecryptError::Failed);
        };
        buffer.truncate(len);
        match String::from_utf8(buffer) {
            Ok(text) => Ok(SecretString::from(text)),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(DecryptError::NotUtf8)
            }
        }
    }

    fn entries(&self) -> impl Iterator<Item = &KeyEntry> {
        std::iter::once(&self.primary).chain(&self.others)
    }

    fn find(&self, id: &str) -> Option<&KeyEntry> {
        self.entries().find(|e| e.id == id)
    }
}

/// The key id a ciphertext was sealed under, read from its header without any key (for
/// `keys status` and `keys rotate`). Fails only when the header itself is malformed.
pub fn key_id_of(ciphertext: &[u8]) -> Result<&str, DecryptError> {
    Parts::split(ciphertext).map(|p| p.key_id)
}

/// A ciphertext cut along the format's boundaries, with every length checked.
struct Parts<'a> {
    /// Version, id length and id: authenticated as associated data.
    header: &'a [u8],
    key_id: &'a str,
    nonce: &'a [u8],
    /// Ciphertext followed by the tag.
    body: &'a [u8],
}

impl<'a> Parts<'a> {
    fn split(ciphertext: &'a [u8]) -> Result<Parts<'a>, DecryptError> {
        let [version, id_len, rest @ ..] = ciphertext else {
            return Err(DecryptError::Malformed);
        };
        if *version != VERSION {
            return Err(DecryptError::Malformed);
        }
        let id_len = usize::from(*id_len);
        if id_len == 0 || id_len > MAX_ID_LEN || rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return Err(DecryptError::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        if !id.iter().copied().all(is_id_byte) {
            return Err(DecryptError::Malformed);
        }
        // Valid id bytes are ASCII, so this cannot fail; it is checked anyway.
        let key_id = std::str::from_utf8(id).map_err(|_| DecryptError::Malformed)?;
        let (nonce, body) = rest.split_at(NONCE_LEN);
        Ok(Parts { header: &ciphertext[..2 + id_len], key_id, nonce, body })
    }
}

/// Domain tag, then the header (self-delimiting, so no separator is needed), then the
/// user id, which runs to the end.
fn associated_data(header: &[u8], user_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + header.len() + user_id.len());
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(header);
    aad.extend_from_slice(user_id.as_bytes());
    aad
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(is_id_byte)
}

/// Parses one `id:base64key` entry. An error is the rest of a message that starts with
/// "entry N", so it can add the id when there is a well-formed one to show.
fn parse_entry(entry: &str) -> Result<KeyEntry, String> {
    if entry.is_empty() {
        return Err(": is empty (check for a doubled or trailing comma)".to_owned());
    }
    let Some((id, encoded)) = entry.split_once(':') else {
        return Err(": must be id:base64key (no ':' found)".to_owned());
    };
    let (id, encoded) = (id.trim(), encoded.trim());
    if id.is_empty() {
        return Err(": the key id before ':' is empty".to_owned());
    }
    if !is_valid_id(id) {
        // Not quoted: text that fails the id rules may be key material in the wrong place.
        return Err(format!(": the key id must be 1 to {MAX_ID_LEN} letters, digits, '-' or '_'"));
    }
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| format!(" (id {id:?}): the key is not valid standard base64"))?;
    let key = if bytes.len() == KEY_LEN {
        UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| format!(" (id {id:?}): the key was rejected"))
    } else {
        Err(format!(" (id {id:?}): the key must decode to {KEY_LEN} bytes (got {})", bytes.len()))
    };
    bytes.zeroize();
    let id_len = u8::try_from(id.len()).map_err(|_| format!(": the key id is longer than {MAX_ID_LEN} characters"))?;
    let mut header = vec![VERSION, id_len];
    header.extend_from_slice(id.as_bytes());
    Ok(KeyEntry { id: id.to_owned(), header, key: LessSafeKey::new(key?) })
}

#[cfg(test)]
mod tests;
