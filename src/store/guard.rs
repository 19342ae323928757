//! The mass-invalidation guard's operator side: what it holds, and `guard release|discard`.
//!
//! While a supplier's guard holds (`im1_supplier_state.guard_held_since`), the sweep stores
//! new invalid answers in `im1_held_verdicts` instead of applying them: a wave of "invalid"
//! from a supplier that is answering nonsense must not flag thousands of users at once.
//! Only an operator ends that, here: `release` applies the held answers as if they had
//! just been seen, `discard` drops them. Either clears the guard once the supplier has no
//! held verdicts left, and restarts its window so the same answers do not trip it again.
//!
//! Lock order, the same in both: the supplier's state row first (so two operators'
//! commands on one supplier run one after the other), then credential rows in `user_id`
//! order, the order every other writer (import, write-back) locks them in.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::claims::{self, Verdict, WriteKind};
use crate::model::{LastOutcome, Reason, Supplier};
use crate::policy::{self, Observation, Rules};

/// Verdicts per write-back statement within a release (the sweep's default batch size):
/// a release after a large wave stays one transaction without one enormous statement.
const RELEASE_BATCH: usize = 1000;

/// One supplier's guard, as `guard list` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GuardState {
    pub supplier: String,
    /// Set while the guard holds new invalid answers; `None` when it is clear.
    pub held_since: Option<DateTime<Utc>>,
    /// Checks before this are not counted in the guard's window (set when an operator
    /// last cleared it).
    pub window_from: Option<DateTime<Utc>>,
    /// The counts that tripped it: what the operator judges first.
    pub evidence: Option<Value>,
    /// Held verdicts waiting for `guard release|discard`.
    pub held_verdicts: i64,
}

/// Every checkable supplier's guard with its count of held verdicts, in supplier order.
pub async fn states(pool: &PgPool) -> sqlx::Result<Vec<GuardState>> {
    sqlx::query_as!(
        GuardState,
        r#"
        SELECT s.supplier, s.guard_held_since AS held_since, s.guard_window_from AS window_from,
               s.guard_evidence AS evidence,
               (SELECT count(*) FROM im1_held_verdicts h WHERE h.supplier = s.supplier) AS "held_verdicts!"
          FROM im1_supplier_state s
         ORDER BY s.supplier
        "#
    )
    .fetch_all(pool)
    .await
}

/// An invalid answer the guard held instead of applying. The evidence is the supplier's
/// (HTTP status, code, message), never a token.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeldVerdict {
    pub user_id: String,
    pub supplier: String,
    pub ods_code: String,
    pub reason: String,
    pub evidence: Value,
    pub held_at: DateTime<Utc>,
}

/// The first `limit` of `supplier`'s held verdicts (optionally one practice's), oldest
/// first, so an operator can read what the supplier actually said.
pub async fn held(
    pool: &PgPool,
    supplier: Supplier,
    ods_code: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<HeldVerdict>> {
    sqlx::query_as!(
        HeldVerdict,
        r#"
        SELECT user_id, supplier, ods_code, reason, evidence, held_at
          FROM im1_held_verdicts
         WHERE supplier = $1
           AND ($2::text IS NULL OR ods_code = $2)
         ORDER BY held_at, user_id
         LIMIT $3
        "#,
        supplier.as_str(),
        ods_code,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// `supplier`'s held verdicts counted per practice (ODS code), largest first: one practice
/// dominating usually means that practice really did invalidate everyone at once (it
/// changed GP system, merged, or revoked online access), not that the supplier is wrong.
pub async fn held_by_practice(pool: &PgPool, supplier: Supplier) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"
        SELECT ods_code, count(*) AS "count!"
          FROM im1_held_verdicts
         WHERE supplier = $1
         GROUP BY ods_code
         ORDER BY count(*) DESC, ods_code
        "#,
        supplier.as_str(),
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.ods_code, r.count)).collect())
}

/// What a `release` or `discard` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resolved {
    /// Held verdicts applied (release): each credential's standing was decided anew.
    pub applied: u64,
    /// Of those, credentials whose `refresh_required` became true (their users are now
    /// asked to refresh): the number an operator most needs to see.
    pub newly_flagged: u64,
    /// Held verdicts dropped unapplied by a release because their credential has moved on
    /// since (checked again, or a new token): that credential is checked again normally.
    pub stale: u64,
    /// Held verdicts dropped by a discard.
    pub discarded: u64,
    /// The supplier's held verdicts left (other practices', with `--ods-code`).
    pub remaining: i64,
    /// The guard is clear after this call: none remained, so it was cleared and its window
    /// restarted (or it was not holding to begin with).
    pub guard_cleared: bool,
}

impl Resolved {
    /// The log line for a release or discard, from the CLI or the console: what was
    /// applied, flagged, dropped and left, and who did it (`by`, e.g. `console:alice`, or
    /// `an operator` from the CLI). Counts only, never a user id or token.
    pub fn log(&self, supplier: Supplier, ods_code: Option<&str>, done: &str, by: &str) {
        tracing::info!(
            supplier = supplier.as_str(),
            ods_code,
            by,
            applied = self.applied,
            newly_flagged = self.newly_flagged,
            stale = self.stale,
            discarded = self.discarded,
            remaining = self.remaining,
            guard_clear = self.guard_cleared,
            "guard verdicts {done} by {by}"
        );
    }
}

/// Applies `supplier`'s held verdicts (optionally only one practice's), in one transaction.
///
/// A held verdict is applied only when its credential's `last_outcome` is still `held`:
/// nothing has happened to it since (no newer check, no new token). Its standing is then
/// decided as if the held invalid answer had been seen now, so the two-strike rule still
/// applies: a released first strike is only `suspect`, and only a row that already had a
/// strike at least `IM1_CONFIRM_AFTER` old becomes `invalid` (and its user flagged). The
/// verdicts are written by the sweep's own write-back (events of kind `guard`, NOTIFY for
/// status or flag changes, all inside this transaction), and the written rows' fences are
/// bumped so a sweep still holding a claim on one cannot overwrite the released verdict
/// with its older check. Every matching held verdict is deleted, applied or stale; the
/// guard is cleared when the supplier has none left.
pub async fn release(
    pool: &PgPool,
    supplier: Supplier,
    ods_code: Option<&str>,
    now: DateTime<Utc>,
    rules: &Rules,
) -> sqlx::Result<Resolved> {
    release_as(pool, supplier, ods_code, now, rules, None).await
}

/// [`release`], naming who released in each event's evidence (`"by"`): the console
/// passes its signed-in user.
pub async fn release_as(
    pool: &PgPool,
    supplier: Supplier,
    ods_code: Option<&str>,
    now: DateTime<Utc>,
    rules: &Rules,
    by: Option<&str>,
) -> sqlx::Result<Resolved> {
    let mut tx = pool.begin().await?;
    let resolved = release_in(&mut tx, supplier, ods_code, now, rules, by).await?;
    tx.commit().await?;
    Ok(resolved)
}

/// What [`release`] would do now, without doing it: the same code in a transaction that
/// is rolled back (so no event, no NOTIFY, no change). The console's confirmation shows
/// these counts, `newly_flagged` first. The two-strike decision does not depend on the
/// schedule's jitter, so the counts are exact as of this moment.
pub async fn preview_release(
    pool: &PgPool,
    supplier: Supplier,
    ods_code: Option<&str>,
    now: DateTime<Utc>,
    rules: &Rules,
) -> sqlx::Result<Resolved> {
    let mut tx = pool.begin().await?;
    let resolved = release_in(&mut tx, supplier, ods_code, now, rules, None).await?;
    tx.rollback().await?;
    Ok(resolved)
}

async fn release_in(
    tx: &mut Transaction<'static, Postgres>,
    supplier: Supplier,
    ods_code: Option<&str>,
    now: DateTime<Utc>,
    rules: &Rules,
    by: Option<&str>,
) -> sqlx::Result<Resolved> {
    let was_holding = lock_state(tx, supplier).await?;
    let rows = sqlx::query!(
        r#"
        SELECT h.user_id, h.reason AS held_reason, h.evidence AS held_evidence, c.fence,
               c.status, c.reason, c.refresh_required, c.refresh_attempts,
               c.refresh_suppressed_until, c.strike_at, c.strike_reason, c.last_checked_at,
               c.last_outcome, c.last_verified_at, c.invalidated_at, c.failures
          FROM im1_held_verdicts h
          JOIN im1_credentials c ON c.user_id = h.user_id
         WHERE h.supplier = $1
           AND ($2::text IS NULL OR h.ods_code = $2)
         ORDER BY h.user_id
           FOR UPDATE OF c
        "#,
        supplier.as_str(),
        ods_code,
    )
    .fetch_all(&mut **tx)
    .await?;

    let mut resolved = Resolved::default();
    let mut matched = Vec::with_capacity(rows.len());
    let mut verdicts = Vec::new();
    // Whether each verdict's credential already asked for a refresh before the release.
    let mut flagged_before = Vec::new();
    for r in rows {
        matched.push(r.user_id.clone());
        let reason = r.held_reason.parse::<Reason>().ok();
        let (user_id, fence, held_evidence) = (r.user_id.clone(), r.fence, r.held_evidence.clone());
        let standing = standing_row!(r).into_standing();
        // Stale: the credential has moved on since the answer was held. (An unreadable
        // reason cannot happen under the table's constraint; it is not applied either.)
        let still_held = standing.last_outcome == Some(LastOutcome::Held);
        let (true, Some(reason)) = (still_held, reason) else {
            resolved.stale += 1;
            continue;
        };
        let jitter = rand::random_range(-1.0..=1.0);
        let decision = policy::decide(&standing, &Observation::Invalid(reason), now, rules, jitter);
        flagged_before.push(standing.refresh_required);
        verdicts.push(Verdict {
            user_id,
            fence,
            from_status: standing.status,
            decision,
            evidence: released_evidence(held_evidence, by),
            held: None,
        });
    }

    let mut written_ids = Vec::with_capacity(verdicts.len());
    for (batch, before) in verdicts.chunks(RELEASE_BATCH).zip(flagged_before.chunks(RELEASE_BATCH)) {
        let written = claims::write_back(&mut **tx, batch, now, WriteKind::Guard).await?;
        for (v, flagged_before) in batch.iter().zip(before) {
            // The rows are locked and their fences read under the lock, so none is lost;
            // if one were, it would simply not count as applied.
            if written.lost.contains(&v.user_id) {
                continue;
            }
            resolved.applied += 1;
            if v.decision.standing.refresh_required && !flagged_before {
                resolved.newly_flagged += 1;
            }
            written_ids.push(v.user_id.clone());
        }
    }
    // A sweep may hold a claim on a released row (its check in flight): its write-back
    // must fail the fence check rather than replace the released verdict.
    sqlx::query!(r#"UPDATE im1_credentials SET fence = fence + 1 WHERE user_id = ANY($1)"#, &written_ids)
        .execute(&mut **tx)
        .await?;
    // Only the rows examined above: a verdict held since (by a sweep that committed
    // meanwhile) stays for the next release rather than vanish unexamined.
    sqlx::query!(r#"DELETE FROM im1_held_verdicts WHERE user_id = ANY($1)"#, &matched).execute(&mut **tx).await?;
    (resolved.remaining, resolved.guard_cleared) = finish(tx, supplier, was_holding, now).await?;
    Ok(resolved)
}

/// The held evidence, marked as released by an operator (so the event row says why an
/// old answer was applied now).
fn released_evidence(held: Value, by: Option<&str>) -> Value {
    let mut map = match held {
        Value::Object(map) => map,
        other => serde_json::Map::from_iter([("held_evidence".to_owned(), other)]),
    };
    map.insert("guard".into(), Value::from("released"));
    if let Some(by) = by {
        map.insert("by".into(), Value::from(by));
    }
    Value::Object(map)
}

/// Drops `supplier`'s held verdicts (optionally only one practice's), in one transaction:
/// the operator judged the supplier's answers to be nonsense. Standings are not changed:
/// each credential is simply checked again on its schedule. One event row (kind `guard`,
/// the credential's status unchanged, evidence `{"guard": "discarded", "held_reason",
/// "held_evidence"}`) records each discarded answer. The guard is cleared when the supplier
/// has none left.
pub async fn discard(
    pool: &PgPool,
    supplier: Supplier,
    ods_code: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<Resolved> {
    discard_as(pool, supplier, ods_code, now, None).await
}

/// [`discard`], naming who discarded in each event's evidence (`"by"`).
pub async fn discard_as(
    pool: &PgPool,
    supplier: Supplier,
    ods_code: Option<&str>,
    now: DateTime<Utc>,
    by: Option<&str>,
) -> sqlx::Result<Resolved> {
    let mut tx = pool.begin().await?;
    let was_holding = lock_state(&mut tx, supplier).await?;
    let row = sqlx::query!(
        r#"
        WITH d AS (
            DELETE FROM im1_held_verdicts h
             WHERE h.supplier = $1
               AND ($2::text IS NULL OR h.ods_code = $2)
            RETURNING h.user_id, h.reason, h.evidence
        ),
        e AS (
            INSERT INTO im1_credential_events
                   (user_id, supplier, ods_code, at, kind, from_status, to_status, outcome,
                    reason, refresh_required, evidence)
            SELECT c.user_id, c.supplier, c.ods_code, $3, 'guard', c.status, c.status, 'held',
                   NULL, c.refresh_required,
                   jsonb_build_object('guard', 'discarded', 'held_reason', d.reason,
                                      'held_evidence', d.evidence)
                   || CASE WHEN $4::text IS NULL THEN '{}'::jsonb
                           ELSE jsonb_build_object('by', $4::text) END
              FROM d JOIN im1_credentials c ON c.user_id = d.user_id
             ORDER BY c.user_id
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM d) AS "discarded!", (SELECT count(*) FROM e) AS "events!"
        "#,
        supplier.as_str(),
        ods_code,
        now,
        by,
    )
    .fetch_one(&mut *tx)
    .await?;
    let mut resolved = Resolved { discarded: row.discarded as u64, ..Resolved::default() };
    (resolved.remaining, resolved.guard_cleared) = finish(&mut tx, supplier, was_holding, now).await?;
    tx.commit().await?;
    Ok(resolved)
}

/// Locks the supplier's state row; returns whether its guard is holding.
async fn lock_state(tx: &mut Transaction<'static, Postgres>, supplier: Supplier) -> sqlx::Result<bool> {
    let held_since = sqlx::query_scalar!(
        r#"SELECT guard_held_since FROM im1_supplier_state WHERE supplier = $1 FOR UPDATE"#,
        supplier.as_str(),
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(held_since.flatten().is_some())
}

/// Counts the supplier's remaining held verdicts and, when there are none, clears the
/// guard and restarts its window at `now` (so the answers that tripped it are not counted
/// again). Returns the remaining count and whether the guard is clear now.
async fn finish(
    tx: &mut Transaction<'static, Postgres>,
    supplier: Supplier,
    was_holding: bool,
    now: DateTime<Utc>,
) -> sqlx::Result<(i64, bool)> {
    let row = sqlx::query!(
        r#"
        WITH r AS (
            SELECT count(*) AS n FROM im1_held_verdicts WHERE supplier = $1
        ),
        u AS (
            UPDATE im1_supplier_state
               SET guard_held_since = NULL,
                   guard_evidence = NULL,
                   guard_window_from = $2,
                   updated_at = $2
             WHERE supplier = $1
               AND guard_held_since IS NOT NULL
               AND (SELECT n FROM r) = 0
            RETURNING 1
        )
        SELECT (SELECT n FROM r) AS "remaining!", EXISTS (SELECT 1 FROM u) AS "cleared!"
        "#,
        supplier.as_str(),
        now,
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.remaining, row.cleared || !was_holding))
}
