//! Key rotation's SQL: re-encrypting tokens under the primary key, one short transaction
//! per batch, and counting what is left.
//!
//! A batch locks its rows with `FOR UPDATE SKIP LOCKED`, so rotation never waits behind a
//! sweep's claim or write-back or an import holding a row (those rows are picked up by a
//! later pass), and nothing else can change a token between our decrypting it and writing
//! its new ciphertext. Only `token_ciphertext`, `key_id` and `updated_at` change: the token
//! itself is the same, so the fencing token is left alone (a sweep's verdict about this
//! token is still right and must still land), and no standing column, event or
//! notification is involved. `updated_at` moves because the row did change.
//!
//! Batches walk the table in `user_id` order from a cursor, so a pass reads each row once
//! however many rows before it were already rotated or could not be.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::crypto::{DecryptError, Keyring};

/// A token re-encrypted under the primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub user_id: String,
    /// The key id it was stored under before.
    pub from_key_id: String,
}

/// A row whose stored ciphertext could not be decrypted; it was left exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecryptable {
    pub user_id: String,
    /// The key id column of the row (the ciphertext's own header may disagree when the
    /// bytes are corrupt).
    pub key_id: String,
    pub why: DecryptError,
}

/// What one batch did.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Rows the batch locked and looked at: rotated plus undecryptable.
    pub selected: usize,
    pub rotated: Vec<Rotated>,
    pub undecryptable: Vec<Undecryptable>,
    /// The last user id looked at: the next batch of the same pass starts after it.
    pub last_user_id: Option<String>,
}

/// Re-encrypts, in one transaction, up to `limit` tokens not under `keys`' primary key
/// whose user id sorts after `after` (`""` for the start), skipping rows another
/// transaction holds. A row that does not decrypt is counted and left untouched; one bad
/// row never fails the batch.
pub async fn rotate_batch(
    pool: &PgPool,
    keys: &Keyring,
    after: &str,
    limit: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Batch> {
    let primary = keys.primary_id();
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        r#"
        SELECT user_id, key_id AS "key_id!", token_ciphertext AS "token_ciphertext!"
          FROM im1_credentials
         WHERE key_id <> $1
           AND token_ciphertext IS NOT NULL
           AND user_id > $2
         ORDER BY user_id
         LIMIT $3
           FOR UPDATE SKIP LOCKED
        "#,
        primary,
        after,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;

    let mut batch = Batch { selected: rows.len(), ..Batch::default() };
    let mut user_ids = Vec::with_capacity(rows.len());
    let mut ciphertexts = Vec::with_capacity(rows.len());
    for row in rows {
        match keys.decrypt(&row.user_id, &row.token_ciphertext) {
            Ok(plaintext) => {
                // The same AAD rules as import: `encrypt` binds the user id and the new
                // header. The plaintext is a SecretString, zeroed when dropped here.
                ciphertexts.push(keys.encrypt(&row.user_id, &plaintext));
                user_ids.push(row.user_id.clone());
                batch.rotated.push(Rotated { user_id: row.user_id.clone(), from_key_id: row.key_id });
            }
            Err(why) => {
                batch.undecryptable.push(Undecryptable { user_id: row.user_id.clone(), key_id: row.key_id, why })
            }
        }
        batch.last_user_id = Some(row.user_id);
    }

    if !user_ids.is_empty() {
        sqlx::query!(
            r#"
            UPDATE im1_credentials AS c
               SET token_ciphertext = v.token_ciphertext,
                   key_id = $1,
                   updated_at = $4
              FROM UNNEST($2::text[], $3::bytea[]) AS v(user_id, token_ciphertext)
             WHERE c.user_id = v.user_id
            "#,
            primary,
            &user_ids,
            &ciphertexts,
            now,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(batch)
}

/// Tokens not under `primary`, leaving out the users in `except` (rows already found
/// undecryptable, so that what remains is what a retry could still rotate).
pub async fn not_under(pool: &PgPool, primary: &str, except: &[String]) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM im1_credentials
            WHERE key_id <> $1 AND token_ciphertext IS NOT NULL AND NOT (user_id = ANY($2))"#,
        primary,
        except,
    )
    .fetch_one(pool)
    .await
}
