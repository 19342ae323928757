//! Canary credentials: known-good tokens an operator marks so that a sweep can tell a
//! supplier gone wrong from a population of dead tokens. Each sweep probes a supplier's
//! canaries first; if any fails, that supplier gives no verdicts in that sweep.
//!
//! A canary is a mark on an existing credential (`im1_canaries`, cascading on erasure), not
//! a second copy of its token: the probe reads the credential's own ciphertext. Probe
//! results are kept on the canary row and never change the credential's own standing.
//!
//! Time comes from the caller (`now`, `at`), never from SQL `now()`, like the rest of the
//! store.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use crate::model::Supplier;

/// The most characters a note may have (the table's `im1_canaries_note_check`).
pub const MAX_NOTE_CHARS: usize = 500;

/// One canary as `credentials canary list` shows it: the mark, the credential it marks,
/// and what its last probe came to. Never carries the token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CanaryRow {
    pub user_id: String,
    pub supplier: Supplier,
    pub ods_code: String,
    /// The operator's reason for trusting this credential (whose account it is, ...).
    pub note: Option<String>,
    pub added_at: DateTime<Utc>,
    pub last_probed_at: Option<DateTime<Utc>>,
    /// What the last probe came to: `valid`, `invalid`, `transient`, ...
    pub last_outcome: Option<String>,
    /// The supplier's answer to the last probe (HTTP status, code, message; never a token).
    pub last_evidence: Option<serde_json::Value>,
}

/// Why a credential could not be made a canary.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// No credential is stored for this user id, so there is nothing to probe.
    #[error("no credential is stored for this user")]
    UnknownUser,
    /// A Microtest credential: it is never checked, so it cannot vouch for anything.
    #[error("Microtest credentials are never checked, so they cannot be canaries")]
    Unsupported,
    /// The note breaks a rule (too long, or control characters that would garble tables).
    #[error("note {0}")]
    InvalidNote(&'static str),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What the sweep needs to probe one canary: its supplier, practice and stored ciphertext
/// (decrypted by the caller with the keyring, exactly as a claimed credential is).
#[derive(Clone)]
pub struct Probe {
    pub user_id: String,
    pub supplier: Supplier,
    pub ods_code: String,
    pub token_ciphertext: Vec<u8>,
}

/// By hand, so that a `{:?}` in a log line or a panic message never prints the
/// ciphertext (which names the key id and, with the key, is the token).
impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("user_id", &self.user_id)
            .field("supplier", &self.supplier)
            .field("ods_code", &self.ods_code)
            .field("token_ciphertext", &format_args!("[ciphertext]"))
            .finish()
    }
}

/// Checks a note before it reaches the table's constraint, so a bad one is the
/// operator's input error with a reason rather than a database error.
fn check_note(note: &str) -> Result<(), AddError> {
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(AddError::InvalidNote("must be at most 500 characters"));
    }
    if note.chars().any(char::is_control) {
        return Err(AddError::InvalidNote("must not contain control characters (newlines, tabs, ...)"));
    }
    Ok(())
}

/// Marks `user_id`'s credential as a canary. Returns `true` when it is newly marked and
/// `false` when it already was: adding is idempotent, so a provisioning script may run it
/// again. On a repeat, a given note replaces the old one (an empty note clears it) and
/// `None` keeps it; `added_at` keeps the first time.
///
/// The credential must exist and be checkable: a Microtest one is refused, since it is
/// never probed and could not vouch for its supplier. A credential erased at the same
/// moment reads as unknown (the foreign key refuses the mark).
pub async fn add<'e>(
    db: impl PgExecutor<'e>,
    user_id: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, AddError> {
    if let Some(note) = note {
        check_note(note)?;
    }
    let row = sqlx::query!(
        r#"
        WITH c AS (
            SELECT supplier FROM im1_credentials WHERE user_id = $1
        ),
        k AS (
            INSERT INTO im1_canaries (user_id, added_at, note)
            SELECT $1, $2, NULLIF($3::text, '')
              FROM c
             WHERE c.supplier <> 'microtest'
            ON CONFLICT (user_id) DO UPDATE
               SET note = CASE WHEN $4 THEN EXCLUDED.note ELSE im1_canaries.note END
            RETURNING (xmax = 0) AS inserted
        )
        SELECT (SELECT supplier FROM c) AS supplier, (SELECT inserted FROM k) AS inserted
        "#,
        user_id,
        now,
        note,
        note.is_some(),
    )
    .fetch_one(db)
    .await;
    let row = match row {
        Ok(row) => row,
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => return Err(AddError::UnknownUser),
        Err(e) => return Err(e.into()),
    };
    match (row.supplier.as_deref(), row.inserted) {
        (None, _) => Err(AddError::UnknownUser),
        (Some("microtest"), _) => Err(AddError::Unsupported),
        (Some(_), Some(inserted)) => Ok(inserted),
        // Unreachable: a checkable credential is always inserted or updated.
        (Some(_), None) => Err(AddError::UnknownUser),
    }
}

/// Unmarks `user_id`. Returns whether it was a canary; removing a non-canary is not an
/// error (like erasure, it is idempotent). The credential itself is untouched.
pub async fn remove<'e>(db: impl PgExecutor<'e>, user_id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query!("DELETE FROM im1_canaries WHERE user_id = $1", user_id).execute(db).await?;
    Ok(done.rows_affected() > 0)
}

/// Every canary, or one supplier's, ordered by supplier then user id (a stable order for
/// operators and scripts).
pub async fn list(pool: &PgPool, supplier: Option<Supplier>) -> sqlx::Result<Vec<CanaryRow>> {
    let rows = sqlx::query!(
        r#"
        SELECT k.user_id, c.supplier, c.ods_code, k.note, k.added_at, k.last_probed_at,
               k.last_outcome, k.last_evidence
          FROM im1_canaries k
          JOIN im1_credentials c ON c.user_id = k.user_id
         WHERE $1::text IS NULL OR c.supplier = $1
         ORDER BY c.supplier, k.user_id
        "#,
        supplier.map(Supplier::as_str),
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(CanaryRow {
                supplier: supplier_of(&r.supplier)?,
                user_id: r.user_id,
                ods_code: r.ods_code,
                note: r.note,
                added_at: r.added_at,
                last_probed_at: r.last_probed_at,
                last_outcome: r.last_outcome,
                last_evidence: r.last_evidence,
            })
        })
        .collect()
}

/// The canaries of `supplier` with their stored ciphertext, for the sweep to probe before
/// it claims anything of that supplier. Ordered by user id.
pub async fn for_supplier(pool: &PgPool, supplier: Supplier) -> sqlx::Result<Vec<Probe>> {
    let rows = sqlx::query!(
        r#"
        SELECT k.user_id, c.supplier, c.ods_code, c.token_ciphertext AS "token_ciphertext!"
          FROM im1_canaries k
          JOIN im1_credentials c ON c.user_id = k.user_id
         WHERE c.supplier = $1
           AND c.token_ciphertext IS NOT NULL
         ORDER BY k.user_id
        "#,
        supplier.as_str(),
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Probe {
                supplier: supplier_of(&r.supplier)?,
                user_id: r.user_id,
                ods_code: r.ods_code,
                token_ciphertext: r.token_ciphertext,
            })
        })
        .collect()
}

/// Records what a probe of `user_id` came to (`outcome`: `valid`, `invalid`, `transient`,
/// ...; `evidence`: the supplier's answer, never a token). A probe older than the one
/// already recorded (another replica's, finishing later) does not overwrite it. A canary
/// removed meanwhile is simply not updated.
pub async fn record_probe(
    pool: &PgPool,
    user_id: &str,
    outcome: &str,
    evidence: &serde_json::Value,
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query!(
        r#"
        UPDATE im1_canaries
           SET last_probed_at = $4, last_outcome = $2, last_evidence = $3
         WHERE user_id = $1
           AND (last_probed_at IS NULL OR last_probed_at <= $4)
        "#,
        user_id,
        outcome,
        evidence,
        at,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The table's constraint guarantees the spelling; an unknown one can only mean a newer
/// schema, reported as a decode error rather than guessed at.
fn supplier_of(text: &str) -> sqlx::Result<Supplier> {
    Supplier::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_debug_hides_the_ciphertext() {
        let probe = Probe {
            user_id: "u1".into(),
            supplier: Supplier::Emis,
            ods_code: "A81001".into(),
            token_ciphertext: b"SECRET-BYTES".to_vec(),
        };
        let shown = format!("{probe:?}");
        assert!(shown.contains("[ciphertext]") && shown.contains("u1"), "{shown}");
        assert!(!shown.contains("83, 69") && !shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn notes_are_checked() {
        assert!(check_note("Dr Smith's test account").is_ok());
        assert!(check_note(&"x".repeat(500)).is_ok());
        assert!(matches!(check_note(&"x".repeat(501)), Err(AddError::InvalidNote(_))));
        assert!(matches!(check_note("two\nlines"), Err(AddError::InvalidNote(_))));
    }
}
