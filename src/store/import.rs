//! Storing new tokens row by row: the API's PUT, the demo, and the replacements of a bulk
//! import ([`super::bulk_import`]), in batches inside one transaction, so a rejected file
//! changes nothing.
//!
//! Per batch: duplicates within the file are caught through a temporary table of the user
//! ids seen so far (memory stays flat for a million lines); existing rows are locked and
//! their tokens decrypted to compare, because writing the same token again must change
//! nothing; everything else is upserted with its event rows and notifications in one
//! statement, bumping the fencing token so no in-flight verdict about an old token lands.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::{Postgres, Transaction};

use super::StandingColumns;
use crate::crypto::Keyring;
use crate::model::{Status, Supplier};
use crate::policy::{self, Standing};
use crate::token::{NewCredential, Token};

/// Counts of what an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ImportStats {
    pub new: u64,
    pub replaced: u64,
    pub unchanged: u64,
}

/// A line repeated a user id first seen on an earlier line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub line: u64,
    pub first_line: u64,
}

/// One import, in one transaction.
pub struct ImportTx<'k> {
    tx: Transaction<'static, Postgres>,
    keys: &'k Keyring,
    now: DateTime<Utc>,
    pub stats: ImportStats,
}

impl<'k> ImportTx<'k> {
    pub async fn begin(pool: &sqlx::PgPool, keys: &'k Keyring, now: DateTime<Utc>) -> sqlx::Result<Self> {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "CREATE TEMPORARY TABLE im1_import_seen (user_id text PRIMARY KEY, line bigint NOT NULL) ON COMMIT DROP",
        )
        .execute(&mut *tx)
        .await?;
        Ok(ImportTx { tx, keys, now, stats: ImportStats::default() })
    }

    /// Adds a batch of valid lines. Returns the lines that repeat an earlier user id;
    /// those are not stored.
    pub async fn add(&mut self, batch: Vec<(u64, NewCredential)>) -> sqlx::Result<Vec<Duplicate>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let duplicates = self.find_duplicates(&batch).await?;
        let batch: Vec<_> = batch.into_iter().filter(|(line, _)| !duplicates.iter().any(|d| d.line == *line)).collect();
        self.store(batch).await?;
        Ok(duplicates)
    }

    /// The import's connection, inside its transaction (the bulk path's statements).
    pub(super) fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }

    pub(super) fn keys(&self) -> &'k Keyring {
        self.keys
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.now
    }

    pub async fn commit(self) -> sqlx::Result<ImportStats> {
        self.tx.commit().await?;
        Ok(self.stats)
    }

    pub async fn rollback(self) -> sqlx::Result<()> {
        self.tx.rollback().await
    }

    async fn find_duplicates(&mut self, batch: &[(u64, NewCredential)]) -> sqlx::Result<Vec<Duplicate>> {
        let ids: Vec<&str> = batch.iter().map(|(_, c)| c.user_id.as_str()).collect();
        let lines: Vec<i64> = batch.iter().map(|(l, _)| *l as i64).collect();
        let firsts: Vec<(i64,)> = sqlx::query_as(
            "INSERT INTO im1_import_seen (user_id, line) SELECT * FROM UNNEST($1::text[], $2::int8[]) \
             ON CONFLICT (user_id) DO NOTHING RETURNING line",
        )
        .bind(&ids)
        .bind(&lines)
        .fetch_all(&mut *self.tx)
        .await?;
        if firsts.len() == batch.len() {
            return Ok(vec![]);
        }
        let stored: std::collections::HashSet<i64> = firsts.into_iter().map(|(l,)| l).collect();
        let repeated: Vec<&str> =
            batch.iter().filter(|(l, _)| !stored.contains(&(*l as i64))).map(|(_, c)| c.user_id.as_str()).collect();
        let first_lines: HashMap<String, i64> =
            sqlx::query_as::<_, (String, i64)>("SELECT user_id, line FROM im1_import_seen WHERE user_id = ANY($1)")
                .bind(&repeated)
                .fetch_all(&mut *self.tx)
                .await?
                .into_iter()
                .collect();
        Ok(batch
            .iter()
            .filter(|(l, _)| !stored.contains(&(*l as i64)))
            .map(|(line, c)| Duplicate {
                line: *line,
                first_line: first_lines.get(&c.user_id).copied().unwrap_or_default() as u64,
            })
            .collect())
    }

    async fn store(&mut self, batch: Vec<(u64, NewCredential)>) -> sqlx::Result<()> {
        let ids: Vec<String> = batch.iter().map(|(_, c)| c.user_id.clone()).collect();
        let existing: HashMap<String, Existing> = sqlx::query!(
            r#"
            SELECT user_id, supplier, ods_code, token_ciphertext,
                   status, reason, refresh_required, refresh_attempts, refresh_suppressed_until,
                   strike_at, strike_reason, last_checked_at, last_outcome, last_verified_at,
                   invalidated_at, failures
              FROM im1_credentials
             WHERE user_id = ANY($1)
             ORDER BY user_id
               FOR UPDATE
            "#,
            &ids,
        )
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(|r| {
            let existing = Existing {
                supplier: r.supplier.parse().ok(),
                ods_code: r.ods_code,
                ciphertext: r.token_ciphertext,
                standing: standing_row!(r).into_standing(),
            };
            (r.user_id, existing)
        })
        .collect();

        let mut rows = UpsertRows::with_capacity(batch.len());
        for (_, cred) in &batch {
            let old = existing.get(&cred.user_id);
            if old.is_some_and(|old| old.holds(&cred.user_id, cred, self.keys)) {
                self.stats.unchanged += 1;
                continue;
            }
            let decision = if cred.supplier == Supplier::Microtest {
                policy::Decision {
                    standing: Standing::unsupported(),
                    next_check_at: self.now,
                    event: true,
                    notify: old.is_none_or(|o| o.standing.status != Status::Unsupported || o.standing.refresh_required),
                }
            } else {
                policy::replace_token(old.map(|o| &o.standing), self.now)
            };
            if old.is_some() {
                self.stats.replaced += 1;
            } else {
                self.stats.new += 1;
            }
            let ciphertext = match &cred.token {
                Token::Microtest => None,
                token => Some(self.keys.encrypt(&cred.user_id, &token.to_plaintext())),
            };
            rows.push(cred, ciphertext, self.keys.primary_id(), old.map(|o| o.standing.status), &decision);
        }
        rows.write(&mut self.tx, self.now).await
    }
}

struct Existing {
    supplier: Option<Supplier>,
    ods_code: String,
    ciphertext: Option<Vec<u8>>,
    standing: Standing,
}

impl Existing {
    /// The stored row already holds exactly this credential. A stored token that cannot
    /// be decrypted is never "the same": the new one replaces it.
    fn holds(&self, user_id: &str, cred: &NewCredential, keys: &Keyring) -> bool {
        if self.supplier != Some(cred.supplier) || self.ods_code != cred.ods_code {
            return false;
        }
        match (&self.ciphertext, &cred.token) {
            (None, Token::Microtest) => true,
            (Some(ciphertext), token) => keys
                .decrypt(user_id, ciphertext)
                .ok()
                .and_then(|plain| Token::from_plaintext(cred.supplier, plain.expose_secret()).ok())
                .is_some_and(|stored| stored.same_as(token)),
            _ => false,
        }
    }
}

/// Column arrays for one batched upsert.
struct UpsertRows {
    user_id: Vec<String>,
    supplier: Vec<String>,
    ods_code: Vec<String>,
    ciphertext: Vec<Option<Vec<u8>>>,
    key_id: Vec<Option<String>>,
    from_status: Vec<Option<String>>,
    notify: Vec<bool>,
    next_check_at: Vec<DateTime<Utc>>,
    standing: StandingColumns,
}

impl UpsertRows {
    fn with_capacity(n: usize) -> Self {
        UpsertRows {
            user_id: Vec::with_capacity(n),
            supplier: Vec::with_capacity(n),
            ods_code: Vec::with_capacity(n),
            ciphertext: Vec::with_capacity(n),
            key_id: Vec::with_capacity(n),
            from_status: Vec::with_capacity(n),
            notify: Vec::with_capacity(n),
            next_check_at: Vec::with_capacity(n),
            standing: StandingColumns::with_capacity(n),
        }
    }

    fn push(
        &mut self,
        cred: &NewCredential,
        ciphertext: Option<Vec<u8>>,
        key_id: &str,
        from_status: Option<Status>,
        decision: &policy::Decision,
    ) {
        self.user_id.push(cred.user_id.clone());
        self.supplier.push(cred.supplier.as_str().to_owned());
        self.ods_code.push(cred.ods_code.clone());
        self.key_id.push(ciphertext.as_ref().map(|_| key_id.to_owned()));
        self.ciphertext.push(ciphertext);
        self.from_status.push(from_status.map(|s| s.as_str().to_owned()));
        self.notify.push(decision.notify);
        self.next_check_at.push(decision.next_check_at);
        self.standing.push(&decision.standing);
    }

    async fn write(self, tx: &mut Transaction<'static, Postgres>, now: DateTime<Utc>) -> sqlx::Result<()> {
        if self.user_id.is_empty() {
            return Ok(());
        }
        let s = &self.standing;
        sqlx::query!(
            r#"
            WITH v AS (
                SELECT *
                  FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                              $6::text[], $7::text[], $8::bool[], $9::int4[], $10::timestamptz[],
                              $11::timestamptz[], $12::text[], $13::timestamptz[], $14::text[],
                              $15::timestamptz[], $16::timestamptz[], $17::int4[],
                              $18::timestamptz[], $19::text[], $20::bool[])
                    AS v(user_id, supplier, ods_code, token_ciphertext, key_id,
                         status, reason, refresh_required, refresh_attempts, refresh_suppressed_until,
                         strike_at, strike_reason, last_checked_at, last_outcome,
                         last_verified_at, invalidated_at, failures,
                         next_check_at, from_status, emit_notify)
            ),
            u AS (
                INSERT INTO im1_credentials AS c
                       (user_id, supplier, ods_code, token_ciphertext, key_id,
                        status, reason, refresh_required, refresh_attempts, refresh_suppressed_until,
                        strike_at, strike_reason, last_checked_at, last_outcome,
                        last_verified_at, invalidated_at, failures, next_check_at,
                        created_at, updated_at)
                SELECT user_id, supplier, ods_code, token_ciphertext, key_id,
                       status, reason, refresh_required, refresh_attempts, refresh_suppressed_until,
                       strike_at, strike_reason, last_checked_at, last_outcome,
                       last_verified_at, invalidated_at, failures, next_check_at, $21, $21
                  FROM v
                ON CONFLICT (user_id) DO UPDATE
                   SET supplier = EXCLUDED.supplier,
                       ods_code = EXCLUDED.ods_code,
                       token_ciphertext = EXCLUDED.token_ciphertext,
                       key_id = EXCLUDED.key_id,
                       status = EXCLUDED.status,
                       reason = EXCLUDED.reason,
                       refresh_required = EXCLUDED.refresh_required,
                       refresh_attempts = EXCLUDED.refresh_attempts,
                       refresh_suppressed_until = EXCLUDED.refresh_suppressed_until,
                       strike_at = EXCLUDED.strike_at,
                       strike_reason = EXCLUDED.strike_reason,
                       last_checked_at = EXCLUDED.last_checked_at,
                       last_outcome = EXCLUDED.last_outcome,
                       last_verified_at = EXCLUDED.last_verified_at,
                       invalidated_at = EXCLUDED.invalidated_at,
                       failures = EXCLUDED.failures,
                       next_check_at = EXCLUDED.next_check_at,
                       lease_expires_at = NULL,
                       lease_owner = NULL,
                       fence = c.fence + 1,
                       updated_at = EXCLUDED.updated_at
                RETURNING c.user_id
            ),
            e AS (
                INSERT INTO im1_credential_events
                       (user_id, supplier, ods_code, at, kind, from_status, to_status, outcome,
                        reason, refresh_required, evidence)
                SELECT v.user_id, v.supplier, v.ods_code, $21, 'import', v.from_status, v.status,
                       NULL, v.reason, v.refresh_required,
                       jsonb_build_object('change', CASE WHEN v.from_status IS NULL THEN 'new' ELSE 'replaced' END,
                                          'refresh_attempts', v.refresh_attempts)
                  FROM u JOIN v ON v.user_id = u.user_id
            ),
            n AS (
                SELECT pg_notify('im1_credential_status',
                                 json_build_object('user_id', v.user_id, 'status', v.status,
                                                   'refresh_required', v.refresh_required)::text)
                  FROM u JOIN v ON v.user_id = u.user_id
                 WHERE v.emit_notify
            )
            SELECT (SELECT count(*) FROM u) AS "written!", (SELECT count(*) FROM n) AS "notified!"
            "#,
            &self.user_id,
            &self.supplier,
            &self.ods_code,
            &self.ciphertext as &[Option<Vec<u8>>],
            &self.key_id as &[Option<String>],
            &s.status,
            &s.reason as &[Option<String>],
            &s.refresh_required,
            &s.refresh_attempts,
            &s.refresh_suppressed_until as &[Option<DateTime<Utc>>],
            &s.strike_at as &[Option<DateTime<Utc>>],
            &s.strike_reason as &[Option<String>],
            &s.last_checked_at as &[Option<DateTime<Utc>>],
            &s.last_outcome as &[Option<String>],
            &s.last_verified_at as &[Option<DateTime<Utc>>],
            &s.invalidated_at as &[Option<DateTime<Utc>>],
            &s.failures,
            &self.next_check_at,
            &self.from_status as &[Option<String>],
            &self.notify,
            now,
        )
        .fetch_one(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Key ids in use and how many tokens each encrypts (for `keys status` and `check-config`).
pub async fn key_ids_in_use(pool: &sqlx::PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT key_id AS "key_id!", count(*) AS "count!" FROM im1_credentials
            WHERE key_id IS NOT NULL GROUP BY key_id ORDER BY key_id"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.key_id, r.count)).collect())
}
