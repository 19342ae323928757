//! Encryption keys in use: what `keys status` reports and the `keys rotate` loop.
//!
//! Rotation is a series of independent batches ([`crate::store::keys::rotate_batch`]), each
//! one short transaction, so it runs beside live sweeps and imports, and a rotation that is
//! killed loses nothing: running it again simply continues with what is left. Rows another
//! transaction holds are skipped and retried a few times after a pause; rows that cannot
//! be decrypted are reported by user id and left alone, never stopping the rest.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::PgPool;

use crate::clock::Clock;
use crate::crypto::Keyring;
use crate::store;
use crate::store::keys::Undecryptable;

/// Tokens under one key id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyCount {
    pub key_id: String,
    pub tokens: i64,
    /// The key new tokens are sealed under (the first in `IM1_ENCRYPTION_KEYS`).
    pub primary: bool,
    /// In `IM1_ENCRYPTION_KEYS`. Tokens under a key id that is not cannot be decrypted.
    pub configured: bool,
}

/// Everything `keys status` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyStatus {
    pub primary: String,
    /// Configured keys in configuration order (primary first, zeros included), then key
    /// ids in use but not configured, by id.
    pub keys: Vec<KeyCount>,
    /// Tokens under any key but the primary: what `keys rotate` would move.
    pub to_rotate: i64,
    /// Tokens under key ids that are not configured: unreadable until the key is back.
    pub undecryptable: i64,
}

/// Tokens per key id (from the `key_id` column), against this configuration.
pub async fn status(pool: &PgPool, keys: &Keyring) -> sqlx::Result<KeyStatus> {
    let in_use: BTreeMap<String, i64> = store::import::key_ids_in_use(pool).await?.into_iter().collect();
    let mut counts: Vec<KeyCount> = keys
        .ids()
        .into_iter()
        .map(|id| KeyCount {
            key_id: id.to_owned(),
            tokens: in_use.get(id).copied().unwrap_or(0),
            primary: id == keys.primary_id(),
            configured: true,
        })
        .collect();
    counts.extend(in_use.iter().filter(|(id, _)| !keys.has(id)).map(|(id, n)| KeyCount {
        key_id: id.clone(),
        tokens: *n,
        primary: false,
        configured: false,
    }));
    Ok(KeyStatus {
        primary: keys.primary_id().to_owned(),
        to_rotate: counts.iter().filter(|k| !k.primary).map(|k| k.tokens).sum(),
        undecryptable: counts.iter().filter(|k| !k.configured).map(|k| k.tokens).sum(),
        keys: counts,
    })
}

/// How `rotate` proceeds.
#[derive(Debug, Clone, Copy)]
pub struct RotateOptions {
    /// Rows per batch (one transaction each).
    pub batch: u32,
    /// Further passes over rows that were locked by another transaction.
    pub retries: u32,
    /// The pause before each such pass.
    pub pause: Duration,
}

impl Default for RotateOptions {
    fn default() -> Self {
        // A sweep holds row locks only for one claim or write-back statement; a second
        // or so covers those. An import holds its rows for the whole file: rather than
        // wait for it, rotation reports what is left and is simply run again.
        RotateOptions { batch: 500, retries: 5, pause: Duration::from_secs(1) }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    /// The key id everything was moved to.
    pub primary: String,
    /// Tokens re-encrypted, per key id they were under.
    pub rotated: BTreeMap<String, u64>,
    /// Rows left alone because they did not decrypt, by user id.
    pub undecryptable: Vec<Undecryptable>,
    /// Tokens still not under the primary at the end, undecryptable ones included.
    pub left: i64,
    /// Of `left`, those not found undecryptable: locked by another transaction through
    /// every retry (or written under another key meanwhile). Another run may move them.
    pub locked: i64,
    pub batches: u64,
}

impl Rotation {
    pub fn total_rotated(&self) -> u64 {
        self.rotated.values().sum()
    }

    /// Everything is under the primary key.
    pub fn complete(&self) -> bool {
        self.left == 0
    }
}

/// Re-encrypts every token not under `keys`' primary key, in batches, until nothing is
/// left but rows that do not decrypt and rows still locked after `options.retries`
/// further passes. Progress is one `info` line per batch.
pub async fn rotate(
    pool: &PgPool,
    keys: &Keyring,
    clock: &dyn Clock,
    options: RotateOptions,
) -> sqlx::Result<Rotation> {
    let limit = i64::from(options.batch.max(1));
    let primary = keys.primary_id();
    let mut report = Rotation { primary: primary.to_owned(), ..Rotation::default() };
    // Keyed by user id: a bad row is met again on every retry pass.
    let mut undecryptable: BTreeMap<String, Undecryptable> = BTreeMap::new();
    let mut pass = 0;
    let locked = loop {
        let mut after = String::new();
        loop {
            let batch = store::keys::rotate_batch(pool, keys, &after, limit, clock.now()).await?;
            if batch.selected == 0 {
                break;
            }
            report.batches += 1;
            for r in &batch.rotated {
                // Written again meanwhile (by an import), say, and decryptable now.
                undecryptable.remove(&r.user_id);
                *report.rotated.entry(r.from_key_id.clone()).or_default() += 1;
            }
            tracing::info!(
                batch = report.batches,
                rotated = batch.rotated.len(),
                undecryptable = batch.undecryptable.len(),
                rotated_so_far = report.total_rotated(),
                to = primary,
                "keys rotate: batch committed"
            );
            for u in batch.undecryptable {
                undecryptable.insert(u.user_id.clone(), u);
            }
            // Fewer rows than asked for: SKIP LOCKED found nothing more after the cursor.
            let end = (batch.selected as i64) < limit;
            after = batch.last_user_id.unwrap_or_default();
            if end {
                break;
            }
        }
        let bad: Vec<String> = undecryptable.keys().cloned().collect();
        let pending = store::keys::not_under(pool, primary, &bad).await?;
        if pending == 0 || pass >= options.retries {
            break pending;
        }
        pass += 1;
        tracing::info!(
            pending,
            pass,
            "keys rotate: tokens held by other transactions (a sweep or an import); trying again shortly"
        );
        tokio::time::sleep(options.pause).await;
    };
    report.undecryptable = undecryptable.into_values().collect();
    report.locked = locked;
    report.left = store::keys::not_under(pool, primary, &[]).await?;
    Ok(report)
}
