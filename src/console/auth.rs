//! Who is asking: password sign-in (argon2 hashes from `IM1_CONSOLE_USERS`) with a session
//! cookie, or a trusted header from an SSO proxy; their role; the CSRF token every form
//! carries; and the rate limit on sign-in attempts.
//!
//! Sessions live in this process's memory: a restart signs everyone out, and behind a
//! load balancer the console needs sticky sessions (or one replica serving it).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use governor::{Quota, RateLimiter};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::ExposeSecret;

pub use crate::config::console::is_argon2_hash;
use crate::config::console::{ConsoleSettings, ConsoleUser, Role};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "im1_console";
/// The sign-in form's CSRF cookie (double submit: the form echoes it).
pub const LOGIN_COOKIE: &str = "im1_console_login";
/// A session ends this long after sign-in, or after this long unused.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Sessions kept at most (expired ones are dropped first); more sign-ins are refused.
const MAX_SESSIONS: usize = 10_000;

/// Makes an argon2id PHC string for `password` (the defaults of the `argon2` crate:
/// 19 MiB, 2 passes, 1 lane), with a random 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

fn verify(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The operating system's generator; failing it is not recoverable.
    SystemRandom::new().fill(&mut bytes).expect("the system random generator works");
    bytes
}

/// A random 32-byte value, URL-safe base64: session ids and CSRF tokens.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// Compares two tokens in constant time: both are hashed (so their lengths do not
/// matter) and every byte of the digests is compared, with no early exit.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (
        ring::digest::digest(&ring::digest::SHA256, a.as_bytes()),
        ring::digest::digest(&ring::digest::SHA256, b.as_bytes()),
    );
    a.as_ref().iter().zip(b.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is asking, and the CSRF token their forms must carry.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub csrf: String,
    /// Signed in with a password (so may sign out); a trusted-header user may not.
    pub session: bool,
}

impl Principal {
    pub fn may_act(&self) -> bool {
        self.role == Role::Operator
    }

    /// How the user is named in events: `console:NAME`.
    pub fn actor(&self) -> String {
        format!("console:{}", self.name)
    }
}

struct Session {
    name: String,
    role: Role,
    csrf: String,
    created: Instant,
    seen: Instant,
}

type Keyed = RateLimiter<String, governor::state::keyed::HashMapStateStore<String>, governor::clock::DefaultClock>;
type Direct = RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, governor::clock::DefaultClock>;

/// Users, sessions and the sign-in limits of one console.
pub struct Auth {
    users: Vec<ConsoleUser>,
    trusted_header: Option<String>,
    trusted_operators: Vec<String>,
    sessions: Mutex<HashMap<String, Session>>,
    /// Sign-in attempts per known user name (unknown names share one key, so the map
    /// stays as small as the user list).
    per_user: Keyed,
    /// Sign-in attempts over all names: a spray across many names is limited too.
    overall: Direct,
    /// Verified against when the name is unknown, so an unknown name costs the same time.
    dummy_hash: String,
    /// Derives a trusted-header user's CSRF token (they have no session to keep one in).
    csrf_key: ring::hmac::Key,
}

/// Why a sign-in was refused. The page says the same for a wrong name and a wrong
/// password.
#[derive(Debug, PartialEq, Eq)]
pub enum SignInError {
    Refused,
    RateLimited,
    TooManySessions,
}

impl Auth {
    pub fn new(settings: &ConsoleSettings) -> Auth {
        let per_user = Quota::per_minute(NonZeroU32::new(5).expect("non-zero"));
        let overall = Quota::per_minute(NonZeroU32::new(60).expect("non-zero"))
            .allow_burst(NonZeroU32::new(20).expect("non-zero"));
        Auth {
            users: settings.users.clone(),
            trusted_header: settings.trusted_header.clone(),
            trusted_operators: settings.trusted_operators.clone(),
            sessions: Mutex::new(HashMap::new()),
            per_user: RateLimiter::hashmap(per_user),
            overall: RateLimiter::direct(overall),
            dummy_hash: hash_password(&random_token()).unwrap_or_default(),
            csrf_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &random_bytes::<32>()),
        }
    }

    pub fn has_passwords(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks a name and password (slow on purpose: argon2). Rate limited per name and
    /// overall before any hashing.
    pub async fn sign_in(&self, name: &str, password: &str) -> Result<String, SignInError> {
        let user = self.users.iter().find(|u| u.name == name).cloned();
        let key = user.as_ref().map_or_else(|| "?".to_owned(), |u| u.name.clone());
        if self.overall.check().is_err() || self.per_user.check_key(&key).is_err() {
            return Err(SignInError::RateLimited);
        }
        let hash = user.as_ref().map_or_else(|| self.dummy_hash.clone(), |u| u.hash.expose_secret().to_owned());
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify(&hash, &password)).await.unwrap_or(false);
        let (true, Some(user)) = (ok, user) else { return Err(SignInError::Refused) };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| live(s, now));
        if sessions.len() >= MAX_SESSIONS {
            return Err(SignInError::TooManySessions);
        }
        let id = random_token();
        sessions.insert(
            id.clone(),
            Session { name: user.name, role: user.role, csrf: random_token(), created: now, seen: now },
        );
        Ok(id)
    }

    pub fn sign_out(&self, session_id: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(session_id);
    }

    /// The principal of a request: its trusted header when one is configured and
    /// present, else its session cookie.
    pub fn principal(&self, headers: &axum::http::HeaderMap) -> Option<Principal> {
        if let Some(header) = &self.trusted_header
            && let Some(name) = headers.get(header.as_str()).and_then(|v| v.to_str().ok())
        {
            let name = name.trim();
            if !crate::config::console::valid_name(name) {
                return None;
            }
            let role = if self.trusted_operators.iter().any(|o| o == name) { Role::Operator } else { Role::Viewer };
            let tag = ring::hmac::sign(&self.csrf_key, format!("{}:{name}", role.as_str()).as_bytes());
            let csrf = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
            return Some(Principal { name: name.to_owned(), role, csrf, session: false });
        }
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let session = sessions.get_mut(id)?;
        if !live(session, now) {
            sessions.remove(id);
            return None;
        }
        session.seen = now;
        Some(Principal { name: session.name.clone(), role: session.role, csrf: session.csrf.clone(), session: true })
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.created) < SESSION_LIFETIME && now.duration_since(s.seen) < SESSION_IDLE
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, path `/`, `Secure` when asked;
/// `max_age` zero deletes it.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut out = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        out.push_str("; Secure");
    }
    if let Some(age) = max_age {
        out.push_str(&format!("; Max-Age={age}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(is_argon2_hash(&hash) && hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify(&hash, "correct horse"));
        assert!(!verify(&hash, "correct horsf"));
        assert!(!verify("not a hash", "correct horse"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salts differ");
    }

    #[test]
    fn cookies_are_found_and_set_strictly() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(axum::http::header::COOKIE, "a=1; im1_console=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
        assert_eq!(set_cookie("n", "v", true, None), "n=v; Path=/; HttpOnly; SameSite=Strict; Secure");
        assert!(set_cookie("n", "", false, Some(0)).ends_with("SameSite=Strict; Max-Age=0"));
    }
}
