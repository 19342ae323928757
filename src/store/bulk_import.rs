//! `credentials import` at NHS scale: COPY into a staging table, then set-based writes, all
//! inside the one transaction of an [`ImportTx`], so a rejected file still changes nothing.
//!
//! 1. [`BulkImport::stage`]: every valid line is encrypted and streamed with `COPY` into a
//!    temporary staging table, about 1 MiB per `COPY`, so memory stays flat whatever the
//!    file's size (nothing of a line is kept once it is sent).
//! 2. [`BulkImport::duplicates`]: lines repeating an earlier line's user id are taken out of
//!    the staging table and returned for the report (the first line of a user stays).
//! 3. [`BulkImport::write`]: lines whose user already has a credential move to a second
//!    table and go through [`ImportTx::add`], the per-row path the API's PUT takes (decrypt
//!    to compare, `policy::replace_token`, fenced upsert in `user_id` order), 1000 at a
//!    time; every other line is a new credential, and every new credential gets the same
//!    standing (`policy::replace_token(None, now)`, or unsupported for Microtest), so they
//!    are written with their events and notifications in one `INSERT … SELECT`. A user
//!    written by someone else meanwhile (an API PUT racing the import) fails that insert
//!    at a savepoint; the lines are then moved to the per-row path and the insert retried.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::{Acquire, PgConnection};

use super::StandingColumns;
use super::import::{Duplicate, ImportStats, ImportTx};
use crate::model::Supplier;
use crate::policy::{self, Standing};
use crate::token::{NewCredential, Token};

/// Bytes of COPY data sent per statement.
const COPY_CHUNK: usize = 1 << 20;
/// Existing credentials compared and replaced per round trip.
const REPLACE_BATCH: i64 = 1000;
/// Times the new-credential insert is retried after a concurrent writer took a user id.
const INSERT_ATTEMPTS: u32 = 3;

/// A staged line read back: line, user id, supplier, ODS code, ciphertext (none: Microtest).
type StagedRow = (i64, String, String, String, Option<Vec<u8>>);

const STAGING_COLUMNS: &str = "line, user_id, supplier, ods_code, token_ciphertext, key_id";

/// One bulk import. Call [`stage`](Self::stage) per valid line, then
/// [`duplicates`](Self::duplicates), then either [`write`](Self::write) and
/// [`commit`](Self::commit), or [`rollback`](Self::rollback).
pub struct BulkImport<'k> {
    tx: ImportTx<'k>,
    /// COPY text not sent yet.
    buf: Vec<u8>,
}

impl<'k> BulkImport<'k> {
    pub async fn begin(
        pool: &sqlx::PgPool,
        keys: &'k crate::crypto::Keyring,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Self> {
        let mut tx = ImportTx::begin(pool, keys, now).await?;
        let conn = tx.conn();
        // Temporary tables are not WAL-logged; neither has an index while it is loaded.
        sqlx::query(
            "CREATE TEMPORARY TABLE im1_import_staging (
                 line bigint NOT NULL, user_id text NOT NULL, supplier text NOT NULL,
                 ods_code text NOT NULL, token_ciphertext bytea, key_id text
             ) ON COMMIT DROP",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("CREATE TEMPORARY TABLE im1_import_replacing (LIKE im1_import_staging) ON COMMIT DROP")
            .execute(&mut *conn)
            .await?;
        Ok(BulkImport { tx, buf: Vec::with_capacity(COPY_CHUNK + 4096) })
    }

    /// Encrypts one valid line and queues it for the staging table.
    pub async fn stage(&mut self, line: u64, cred: NewCredential) -> sqlx::Result<()> {
        let keys = self.tx.keys();
        let ciphertext = match &cred.token {
            Token::Microtest => None,
            token => Some(keys.encrypt(&cred.user_id, &token.to_plaintext())),
        };
        let buf = &mut self.buf;
        buf.extend_from_slice(line.to_string().as_bytes());
        buf.push(b'\t');
        copy_text(buf, &cred.user_id);
        buf.push(b'\t');
        copy_text(buf, cred.supplier.as_str());
        buf.push(b'\t');
        copy_text(buf, &cred.ods_code);
        buf.push(b'\t');
        match &ciphertext {
            Some(ciphertext) => copy_bytea(buf, ciphertext),
            None => buf.extend_from_slice(b"\\N"),
        }
        buf.push(b'\t');
        match ciphertext {
            Some(_) => copy_text(buf, keys.primary_id()),
            None => buf.extend_from_slice(b"\\N"),
        }
        buf.push(b'\n');
        if self.buf.len() >= COPY_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> sqlx::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(COPY_CHUNK + 4096));
        let conn = self.tx.conn();
        let mut copy =
            conn.copy_in_raw(&format!("COPY im1_import_staging ({STAGING_COLUMNS}) FROM STDIN (FORMAT text)")).await?;
        if let Err(e) = copy.send(data).await {
            // The COPY must be ended before the connection is usable again.
            let _ = copy.abort("the import could not send its data").await;
            return Err(e);
        }
        copy.finish().await?;
        Ok(())
    }

    /// Sends what is left, then takes out every line that repeats an earlier line's user
    /// id and hands each to `each`, in line order, as the server streams them (memory stays
    /// flat however many there are). Returns how many.
    pub async fn duplicates(&mut self, mut each: impl FnMut(Duplicate)) -> sqlx::Result<u64> {
        use futures_util::TryStreamExt;
        self.flush().await?;
        let conn = self.tx.conn();
        // Temporary tables are never analysed automatically; the joins below need the
        // row count to pick hash joins over nested loops.
        sqlx::query("ANALYZE im1_import_staging").execute(&mut *conn).await?;
        let mut rows = sqlx::query_as::<_, (i64, i64)>(
            "WITH d AS (
                 SELECT line, min(line) OVER (PARTITION BY user_id) AS first_line FROM im1_import_staging
             ),
             x AS (
                 DELETE FROM im1_import_staging s USING d
                  WHERE s.line = d.line AND d.line <> d.first_line
                 RETURNING s.line, d.first_line
             )
             SELECT line, first_line FROM x ORDER BY line",
        )
        .fetch(&mut *conn);
        let mut found = 0;
        while let Some((line, first)) = rows.try_next().await? {
            each(Duplicate { line: line as u64, first_line: first as u64 });
            found += 1;
        }
        Ok(found)
    }

    /// Writes every staged line: replacements through the per-row path, new credentials
    /// in one statement. Call after [`duplicates`](Self::duplicates).
    pub async fn write(&mut self) -> sqlx::Result<()> {
        self.flush().await?;
        let mut attempt = 1;
        loop {
            self.move_existing().await?;
            self.replace_existing().await?;
            let now = self.tx.now();
            let conn = self.tx.conn();
            let mut savepoint = conn.begin().await?;
            match insert_new(&mut savepoint, now).await {
                Ok(written) => {
                    savepoint.commit().await?;
                    self.tx.stats.new += written;
                    return Ok(());
                }
                Err(e) if attempt < INSERT_ATTEMPTS && is_unique_violation(&e) => {
                    savepoint.rollback().await?;
                    tracing::info!(attempt, "a user id was written by another process during the import; retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves the staged lines whose user already has a credential to the replacing table.
    async fn move_existing(&mut self) -> sqlx::Result<()> {
        let conn = self.tx.conn();
        sqlx::query(
            "WITH m AS (
                 DELETE FROM im1_import_staging s USING im1_credentials c
                  WHERE c.user_id = s.user_id
                 RETURNING s.*
             )
             INSERT INTO im1_import_replacing SELECT * FROM m",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Replaces (or leaves unchanged) every credential in the replacing table through
    /// [`ImportTx::add`], in `user_id` order, then empties the table.
    async fn replace_existing(&mut self) -> sqlx::Result<()> {
        let mut after = String::new();
        loop {
            let conn = self.tx.conn();
            let rows: Vec<StagedRow> = sqlx::query_as(
                "SELECT line, user_id, supplier, ods_code, token_ciphertext FROM im1_import_replacing
                  WHERE user_id > $1 ORDER BY user_id LIMIT $2",
            )
            .bind(&after)
            .bind(REPLACE_BATCH)
            .fetch_all(&mut *conn)
            .await?;
            let Some(last) = rows.last() else { break };
            after.clone_from(&last.1);
            let keys = self.tx.keys();
            let mut batch = Vec::with_capacity(rows.len());
            for (line, user_id, supplier, ods_code, ciphertext) in rows {
                let supplier: Supplier = supplier.parse().map_err(|_| staging_corrupt("supplier"))?;
                // Sealed by this import a moment ago under the primary key.
                let token = match ciphertext {
                    None => Token::Microtest,
                    Some(ciphertext) => {
                        let plain = keys.decrypt(&user_id, &ciphertext).map_err(|_| staging_corrupt("token"))?;
                        Token::from_plaintext(supplier, plain.expose_secret()).map_err(|_| staging_corrupt("token"))?
                    }
                };
                batch.push((line as u64, NewCredential { user_id, supplier, ods_code, token }));
            }
            self.tx.add(batch).await?;
        }
        sqlx::query("TRUNCATE im1_import_replacing").execute(self.tx.conn()).await?;
        Ok(())
    }

    pub async fn commit(self) -> sqlx::Result<ImportStats> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> sqlx::Result<()> {
        self.tx.rollback().await
    }
}

/// Writes every line left in the staging table as a new credential with its event and
/// notification; returns how many.
async fn insert_new(conn: &mut PgConnection, now: DateTime<Utc>) -> sqlx::Result<u64> {
    // Index 1: a checkable supplier's new token; index 2: Microtest's.
    let checkable = policy::replace_token(None, now);
    let microtest =
        policy::Decision { standing: Standing::unsupported(), next_check_at: now, event: true, notify: true };
    let mut s = StandingColumns::with_capacity(2);
    s.push(&checkable.standing);
    s.push(&microtest.standing);
    let notify = [checkable.notify, microtest.notify];
    let next_check_at = [checkable.next_check_at, microtest.next_check_at];
    // Unchecked at compile time: the staging table is temporary, so `query!` cannot see it.
    let (written, _notified): (i64, i64) = sqlx::query_as(
        r#"
        WITH p AS (
            SELECT *
              FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::int4[], $5::timestamptz[],
                          $6::timestamptz[], $7::text[], $8::timestamptz[], $9::text[],
                          $10::timestamptz[], $11::timestamptz[], $12::int4[], $13::timestamptz[],
                          $14::bool[])
                   WITH ORDINALITY
                AS p(status, reason, refresh_required, refresh_attempts, refresh_suppressed_until,
                     strike_at, strike_reason, last_checked_at, last_outcome, last_verified_at,
                     invalidated_at, failures, next_check_at, emit_notify, which)
        ),
        u AS (
            INSERT INTO im1_credentials AS c
                   (user_id, supplier, ods_code, token_ciphertext, key_id,
                    status, reason, refresh_required, refresh_attempts, refresh_suppressed_until,
                    strike_at, strike_reason, last_checked_at, last_outcome,
                    last_verified_at, invalidated_at, failures, next_check_at,
                    created_at, updated_at)
            SELECT s.user_id, s.supplier, s.ods_code, s.token_ciphertext, s.key_id,
                   p.status, p.reason, p.refresh_required, p.refresh_attempts, p.refresh_suppressed_until,
                   p.strike_at, p.strike_reason, p.last_checked_at, p.last_outcome,
                   p.last_verified_at, p.invalidated_at, p.failures, p.next_check_at, $15, $15
              FROM im1_import_staging s
              JOIN p ON p.which = CASE WHEN s.supplier = 'microtest' THEN 2 ELSE 1 END
             ORDER BY s.user_id
            RETURNING c.user_id, c.supplier, c.ods_code, c.status, c.reason, c.refresh_required,
                      c.refresh_attempts
        ),
        e AS (
            INSERT INTO im1_credential_events
                   (user_id, supplier, ods_code, at, kind, from_status, to_status, outcome,
                    reason, refresh_required, evidence)
            SELECT user_id, supplier, ods_code, $15, 'import', NULL, status, NULL, reason,
                   refresh_required,
                   jsonb_build_object('change', 'new', 'refresh_attempts', refresh_attempts)
              FROM u
        ),
        n AS (
            SELECT pg_notify('im1_credential_status',
                             json_build_object('user_id', u.user_id, 'status', u.status,
                                               'refresh_required', u.refresh_required)::text)
              FROM u
              JOIN p ON p.which = CASE WHEN u.supplier = 'microtest' THEN 2 ELSE 1 END
             WHERE p.emit_notify
        )
        SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)
        "#,
    )
    .bind(&s.status)
    .bind(&s.reason)
    .bind(&s.refresh_required)
    .bind(&s.refresh_attempts)
    .bind(&s.refresh_suppressed_until)
    .bind(&s.strike_at)
    .bind(&s.strike_reason)
    .bind(&s.last_checked_at)
    .bind(&s.last_outcome)
    .bind(&s.last_verified_at)
    .bind(&s.invalidated_at)
    .bind(&s.failures)
    .bind(&next_check_at[..])
    .bind(&notify[..])
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(written as u64)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|code| code == "23505")
}

/// A staged row this import wrote cannot be read back: a bug, named without its content.
fn staging_corrupt(field: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("the import's staging table holds an unreadable {field}"))
}

/// Appends `text` as one field of COPY's text format.
fn copy_text(buf: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

/// Appends `bytes` as a bytea field of COPY's text format (`\x` hex, its backslash escaped).
fn copy_bytea(buf: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.extend_from_slice(b"\\\\x");
    for &b in bytes {
        buf.push(HEX[(b >> 4) as usize]);
        buf.push(HEX[(b & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_fields_are_escaped() {
        let mut buf = Vec::new();
        copy_text(&mut buf, "a\tb\\c\nd\re");
        assert_eq!(buf, b"a\\tb\\\\c\\nd\\re");
        let mut buf = Vec::new();
        copy_bytea(&mut buf, &[0x00, 0xab, 0x7f]);
        assert_eq!(buf, b"\\\\x00ab7f");
    }
}
