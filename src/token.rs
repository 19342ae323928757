//! IM1 tokens as the RP gives them to us (import lines, the API's PUT) and as they are
//! stored (encrypted JSON). Every secret field is a [`SecretString`]: `Debug` prints a
//! redaction, and the only way to the text is an explicit `expose_secret()`.
//!
//! Validation here is shared by `credentials import`, the API and the sweep (a decrypted
//! token is validated again, so a row written around us is `skipped`, never checked
//! with missing fields). Messages name fields, never values.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::model::Supplier;

/// One IM1 token, by supplier. Field names match im1-wire.md's stored token shapes.
#[derive(Clone)]
pub enum Token {
    Emis {
        access_identity_guid: SecretString,
    },
    Tpp {
        account_id: SecretString,
        passphrase: SecretString,
        /// Falls back to `IM1_TPP_PROVIDER_ID` when absent.
        provider_id: Option<SecretString>,
    },
    Vision {
        rosu_account_id: SecretString,
        api_key: SecretString,
    },
    /// Microtest linkage keys from NHS login are dummies: nothing is stored.
    Microtest,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, [REDACTED])", self.supplier())
    }
}

/// A problem with one field of an input, named by its path (`token.passphrase`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Longest token field accepted, in characters (real ones are GUIDs and short keys).
pub const MAX_TOKEN_FIELD: usize = 1024;

/// (field name, required) per supplier, in the order they are stored.
fn fields_of(supplier: Supplier) -> &'static [(&'static str, bool)] {
    match supplier {
        Supplier::Emis => &[("access_identity_guid", true)],
        Supplier::Tpp => &[("account_id", true), ("passphrase", true), ("provider_id", false)],
        Supplier::Vision => &[("rosu_account_id", true), ("api_key", true)],
        Supplier::Microtest => &[],
    }
}

impl Token {
    pub fn supplier(&self) -> Supplier {
        match self {
            Token::Emis { .. } => Supplier::Emis,
            Token::Tpp { .. } => Supplier::Tpp,
            Token::Vision { .. } => Supplier::Vision,
            Token::Microtest => Supplier::Microtest,
        }
    }

    /// Validates a token object for `supplier`: an object, every required field a
    /// non-empty string, no unknown field (Microtest's fields are ignored).
    ///
    /// Input (an import line, the API's PUT) is held to more: each field at most
    /// [`MAX_TOKEN_FIELD`] characters and no control character (NUL included).
    pub fn from_value(supplier: Supplier, value: &Value) -> Result<Token, Vec<FieldError>> {
        Token::from_value_with(supplier, value, true)
    }

    /// `input`: apply the input-only bounds. A stored token is read back without them, so a
    /// token stored before they existed is still checked, never skipped over a new rule.
    fn from_value_with(supplier: Supplier, value: &Value, input: bool) -> Result<Token, Vec<FieldError>> {
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError::new("token", "must be a JSON object")]);
        };
        if supplier == Supplier::Microtest {
            return Ok(Token::Microtest);
        }
        let mut errors = Vec::new();
        let allowed = fields_of(supplier);
        for key in object.keys() {
            if !allowed.iter().any(|(name, _)| name == key) {
                errors.push(FieldError::new(
                    format!("token.{}", printable_key(key)),
                    format!("is not a {supplier} token field"),
                ));
            }
        }
        let mut take = |name: &str, required: bool| -> Option<SecretString> {
            match object.get(name) {
                Some(Value::String(s)) if s.is_empty() => {
                    errors.push(FieldError::new(format!("token.{name}"), "must not be empty"));
                    None
                }
                Some(Value::String(s)) if input && s.chars().count() > MAX_TOKEN_FIELD => {
                    errors.push(FieldError::new(
                        format!("token.{name}"),
                        format!("must be at most {MAX_TOKEN_FIELD} characters"),
                    ));
                    None
                }
                // A NUL or other control character has no place in a token, and XML (the
                // TPP and Vision requests) cannot carry most of them.
                Some(Value::String(s)) if input && s.chars().any(char::is_control) => {
                    errors.push(FieldError::new(format!("token.{name}"), "must contain only printable characters"));
                    None
                }
                Some(Value::String(s)) => Some(SecretString::from(s.as_str())),
                Some(_) => {
                    errors.push(FieldError::new(format!("token.{name}"), "must be a string"));
                    None
                }
                None if required => {
                    errors.push(FieldError::new(format!("token.{name}"), "is required"));
                    None
                }
                None => None,
            }
        };
        let token = match supplier {
            Supplier::Emis => {
                take("access_identity_guid", true).map(|access_identity_guid| Token::Emis { access_identity_guid })
            }
            Supplier::Tpp => {
                let account_id = take("account_id", true);
                let passphrase = take("passphrase", true);
                let provider_id = take("provider_id", false);
                account_id.zip(passphrase).map(|(account_id, passphrase)| Token::Tpp {
                    account_id,
                    passphrase,
                    provider_id,
                })
            }
            Supplier::Vision => {
                let rosu = take("rosu_account_id", true);
                let key = take("api_key", true);
                rosu.zip(key).map(|(rosu_account_id, api_key)| Token::Vision { rosu_account_id, api_key })
            }
            Supplier::Microtest => unreachable!("handled above"),
        };
        match token {
            Some(token) if errors.is_empty() => Ok(token),
            _ => Err(errors),
        }
    }

    /// The token's secret values, for scrubbing supplier messages that might echo one.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            Token::Emis { access_identity_guid } => vec![access_identity_guid.expose_secret()],
            Token::Tpp { account_id, passphrase, provider_id } => {
                let mut v = vec![account_id.expose_secret(), passphrase.expose_secret()];
                v.extend(provider_id.as_ref().map(|p| p.expose_secret()));
                v
            }
            Token::Vision { rosu_account_id, api_key } => {
                vec![rosu_account_id.expose_secret(), api_key.expose_secret()]
            }
            Token::Microtest => vec![],
        }
    }

    /// The stored form: a JSON object of the supplier's fields. This exposes the secret and
    /// is called only to encrypt it; the result never leaves `crypto`'s hands in clear.
    pub fn to_plaintext(&self) -> SecretString {
        let mut map = Map::new();
        let mut put = |k: &str, v: &SecretString| {
            map.insert(k.to_owned(), Value::String(v.expose_secret().to_owned()));
        };
        match self {
            Token::Emis { access_identity_guid } => put("access_identity_guid", access_identity_guid),
            Token::Tpp { account_id, passphrase, provider_id } => {
                put("account_id", account_id);
                put("passphrase", passphrase);
                if let Some(p) = provider_id {
                    put("provider_id", p);
                }
            }
            Token::Vision { rosu_account_id, api_key } => {
                put("rosu_account_id", rosu_account_id);
                put("api_key", api_key);
            }
            Token::Microtest => {}
        }
        SecretString::from(Value::Object(map).to_string())
    }

    /// Reads a decrypted stored token back, validating it as strictly as an import.
    pub fn from_plaintext(supplier: Supplier, plaintext: &str) -> Result<Token, Vec<FieldError>> {
        let value: Value = serde_json::from_str(plaintext)
            .map_err(|_| vec![FieldError::new("token", "stored token is not a JSON object")])?;
        Token::from_value_with(supplier, &value, false)
    }

    /// Same supplier and same secret values.
    pub fn same_as(&self, other: &Token) -> bool {
        self.supplier() == other.supplier() && self.secrets() == other.secrets()
    }
}

/// A key name is echoed in an error only when it looks like a field name: 1–40 lowercase
/// letters and underscores. Anything else (it could be a token pasted as a key: a GUID,
/// a passphrase, a key with digits or dashes) is replaced. The parser fuzzing found the
/// earlier rule (40 letters, digits, `_` or `-`) echoing a GUID pasted as a key.
pub fn printable_key(key: &str) -> &str {
    let ok = (1..=40).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if ok { key } else { "<unprintable field name>" }
}

/// A credential as an RP hands it in.
#[derive(Debug, Clone)]
pub struct NewCredential {
    pub user_id: String,
    pub supplier: Supplier,
    pub ods_code: String,
    pub token: Token,
}

/// `user_id`: 1–128 printable characters.
pub fn validate_user_id(user_id: &str) -> Result<(), FieldError> {
    let count = user_id.chars().count();
    if count == 0 || count > 128 {
        return Err(FieldError::new("user_id", "must be 1 to 128 characters"));
    }
    if user_id.chars().any(|c| c.is_control()) {
        return Err(FieldError::new("user_id", "must contain only printable characters"));
    }
    Ok(())
}

/// `ods_code`: 3–10 uppercase letters and digits.
pub fn validate_ods_code(ods: &str) -> Result<(), FieldError> {
    let ok = (3..=10).contains(&ods.len()) && ods.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if ok { Ok(()) } else { Err(FieldError::new("ods_code", "must be 3 to 10 uppercase letters and digits")) }
}

/// Validates one import line: exactly `user_id`, `supplier`, `ods_code`, `token`.
pub fn parse_import_line(line: &str) -> Result<NewCredential, Vec<FieldError>> {
    let value: Value = serde_json::from_str(line).map_err(|e| vec![json_error(&e)])?;
    let Some(object) = value.as_object() else {
        return Err(vec![FieldError::new("line", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let user_id = match object.get("user_id") {
        Some(Value::String(s)) => match validate_user_id(s) {
            Ok(()) => Some(s.clone()),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("user_id", "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("user_id", "is required"));
            None
        }
    };
    let body = parse_body_fields(object, &["user_id"], &mut errors);
    match (user_id, body) {
        (Some(user_id), Some((supplier, ods_code, token))) if errors.is_empty() => {
            Ok(NewCredential { user_id, supplier, ods_code, token })
        }
        _ => Err(errors),
    }
}

/// Validates the API's PUT body (`supplier`, `ods_code`, `token`) for a user id taken
/// from the path.
pub fn parse_put_body(user_id: &str, value: &Value) -> Result<NewCredential, Vec<FieldError>> {
    let mut errors = Vec::new();
    if let Err(e) = validate_user_id(user_id) {
        errors.push(e);
    }
    let Some(object) = value.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let body = parse_body_fields(object, &[], &mut errors);
    match body {
        Some((supplier, ods_code, token)) if errors.is_empty() => {
            Ok(NewCredential { user_id: user_id.to_owned(), supplier, ods_code, token })
        }
        _ => Err(errors),
    }
}

fn parse_body_fields(
    object: &Map<String, Value>,
    also_allowed: &[&str],
    errors: &mut Vec<FieldError>,
) -> Option<(Supplier, String, Token)> {
    const FIELDS: [&str; 3] = ["supplier", "ods_code", "token"];
    for key in object.keys() {
        if !FIELDS.contains(&key.as_str()) && !also_allowed.contains(&key.as_str()) {
            errors.push(FieldError::new(printable_key(key), "is not a known field"));
        }
    }
    let supplier = match object.get("supplier") {
        Some(Value::String(s)) => match s.parse::<Supplier>() {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(FieldError::new("supplier", e.to_string()));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("supplier", "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("supplier", "is required"));
            None
        }
    };
    let ods_code = match object.get("ods_code") {
        Some(Value::String(s)) => match validate_ods_code(s) {
            Ok(()) => Some(s.clone()),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("ods_code", "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("ods_code", "is required"));
            None
        }
    };
    let token = match (object.get("token"), supplier) {
        (None, _) => {
            errors.push(FieldError::new("token", "is required"));
            None
        }
        (Some(value), Some(supplier)) => match Token::from_value(supplier, value) {
            Ok(t) => Some(t),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        },
        // Without a valid supplier the token's shape cannot be judged.
        (Some(_), None) => None,
    };
    Some((supplier?, ods_code?, token?))
}

/// serde_json's syntax errors carry a position and a category, never the input text.
fn json_error(e: &serde_json::Error) -> FieldError {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "is truncated JSON",
        serde_json::error::Category::Syntax => "is not valid JSON",
        serde_json::error::Category::Io => "could not be read",
        serde_json::error::Category::Data => "has JSON of the wrong shape",
    };
    let message = if e.to_string().contains("recursion limit") {
        "is nested too deeply".to_owned()
    } else {
        format!("{what} (column {})", e.column())
    };
    FieldError::new("line", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(line: &str) -> Vec<String> {
        parse_import_line(line).unwrap_err().into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn accepts_each_supplier_shape() {
        let lines = [
            r#"{"user_id":"u1","supplier":"emis","ods_code":"A12345","token":{"access_identity_guid":"g"}}"#,
            r#"{"user_id":"u2","supplier":"tpp","ods_code":"B1","token":{"account_id":"a","passphrase":"p"}}"#,
            r#"{"user_id":"u3","supplier":"tpp","ods_code":"B12","token":{"account_id":"a","passphrase":"p","provider_id":"x"}}"#,
            r#"{"user_id":"u4","supplier":"vision","ods_code":"C123","token":{"rosu_account_id":"r","api_key":"k"}}"#,
            r#"{"user_id":"u5","supplier":"microtest","ods_code":"D123","token":{"anything":"ignored"}}"#,
        ];
        for (i, line) in lines.iter().enumerate() {
            let result = parse_import_line(line);
            if i == 1 {
                assert_eq!(errors(line), ["ods_code: must be 3 to 10 uppercase letters and digits"]);
            } else {
                assert!(result.is_ok(), "line {i}: {result:?}");
            }
        }
    }

    #[test]
    fn names_every_problem_without_echoing_values() {
        let line = r#"{"user_id":"","supplier":"EMIS","ods_code":"a1","token":{"access_identity_guid":"SECRET-GUID"},"extra":1}"#;
        let found = errors(line);
        assert!(found.contains(&"user_id: must be 1 to 128 characters".to_owned()), "{found:?}");
        assert!(found.contains(&"extra: is not a known field".to_owned()));
        assert!(found.iter().any(|e| e.starts_with("supplier: must be one of")));
        assert!(found.iter().any(|e| e.starts_with("ods_code:")));
        assert!(!found.concat().contains("SECRET"));
    }

    #[test]
    fn rejects_unknown_and_empty_token_fields() {
        let line =
            r#"{"user_id":"u","supplier":"vision","ods_code":"ABC","token":{"rosu_account_id":"","api_kee":"SECRET"}}"#;
        let found = errors(line);
        assert_eq!(
            found,
            [
                "token.api_kee: is not a vision token field",
                "token.rosu_account_id: must not be empty",
                "token.api_key: is required"
            ]
        );
        let bad_key = format!(
            r#"{{"user_id":"u","supplier":"emis","ods_code":"ABC","token":{{"access_identity_guid":"g","{}":"x"}}}}"#,
            "S".repeat(50)
        );
        assert_eq!(errors(&bad_key), ["token.<unprintable field name>: is not a emis token field"]);
    }

    #[test]
    fn a_token_pasted_as_a_field_name_is_never_echoed() {
        // Found by tests/it/fuzz.rs: a GUID (36 characters of hex and dashes) passed the
        // old "printable" rule and was quoted in the error.
        let guid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
        for key in [guid, "SECRETPASSPHRASE", "passphrase2", "Token"] {
            let line = format!(
                r#"{{"user_id":"u","supplier":"emis","ods_code":"ABC","token":{{"access_identity_guid":"g","{key}":"x"}},"{key}":1}}"#
            );
            let found = errors(&line).concat();
            assert!(!found.contains(key), "{key} echoed: {found}");
            assert!(found.contains("<unprintable field name>"), "{found}");
        }
        assert_eq!(printable_key("provider_id"), "provider_id");
    }

    #[test]
    fn json_errors_never_quote_input() {
        let found = errors(r#"{"user_id": "u", "token": SECRET}"#);
        assert_eq!(found.len(), 1);
        assert!(!found[0].contains("SECRET"), "{found:?}");
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        assert_eq!(errors(&deep), ["line: is nested too deeply"]);
        assert_eq!(errors("[]"), ["line: must be a JSON object"]);
    }

    #[test]
    fn user_id_rules() {
        assert!(validate_user_id(&"x".repeat(128)).is_ok());
        assert!(validate_user_id(&"x".repeat(129)).is_err());
        assert!(validate_user_id("a\u{7}b").is_err());
        assert!(validate_user_id("nhs-user ü").is_ok());
    }

    #[test]
    fn plaintext_round_trip_and_debug_redaction() {
        let token = parse_import_line(
            r#"{"user_id":"u","supplier":"tpp","ods_code":"ABC","token":{"account_id":"ACC","passphrase":"PASS"}}"#,
        )
        .unwrap()
        .token;
        let text = token.to_plaintext();
        let back = Token::from_plaintext(Supplier::Tpp, text.expose_secret()).unwrap();
        assert!(back.same_as(&token));
        assert_eq!(format!("{token:?}"), "Token(tpp, [REDACTED])");
        assert!(Token::from_plaintext(Supplier::Emis, text.expose_secret()).is_err());
    }
}
