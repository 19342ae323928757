//! Shared verdict-safety state: live processes, rolling-window counts, each supplier's
//! breaker and guard. One statement a second per process (the sync) keeps every replica's
//! view current; transitions are single conditional updates, so when two processes decide
//! the same transition at once, one makes it and the other finds it made.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::model::Supplier;

/// Width of one count bucket. Windows are sums over whole buckets, so a window's edges
/// are accurate to this much.
pub const BUCKET_SECONDS: i64 = 5;

/// The bucket `at` falls in.
pub fn bucket_of(at: DateTime<Utc>) -> DateTime<Utc> {
    let secs = at.timestamp().div_euclid(BUCKET_SECONDS) * BUCKET_SECONDS;
    DateTime::from_timestamp(secs, 0).unwrap_or(at)
}

/// What one process saw of one supplier since its last flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Supplier calls made (every attempt) and those that were transient.
    pub calls: i64,
    pub transient: i64,
    /// Checks answered valid or invalid, and the invalid ones.
    pub answers: i64,
    pub invalid: i64,
    /// Checks finished with an outcome, whatever it was (what `im1_checks_total` counts).
    pub checks: i64,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    pub fn add(&mut self, other: &Counts) {
        self.calls += other.calls;
        self.transient += other.transient;
        self.answers += other.answers;
        self.invalid += other.invalid;
        self.checks += other.checks;
    }
}

/// This process, as its heartbeat row records it.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub process_id: Uuid,
    pub command: String,
    pub hostname: String,
    pub pid: i32,
    pub version: String,
    pub started_at: DateTime<Utc>,
}

/// A supplier's shared state with its window sums, as of one sync.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SupplierState {
    pub supplier: Supplier,
    /// `closed`, `open` or `half_open`.
    pub breaker_state: String,
    pub breaker_changed_at: Option<DateTime<Utc>>,
    pub breaker_open_until: Option<DateTime<Utc>>,
    pub breaker_evidence: Option<serde_json::Value>,
    pub guard_held_since: Option<DateTime<Utc>>,
    pub guard_evidence: Option<serde_json::Value>,
    /// Calls and transient calls in the breaker's window (since it last closed).
    pub breaker_window: Counts,
    /// Answers and invalid answers in the guard's window (since an operator last cleared it).
    pub guard_window: Counts,
    pub held_verdicts: i64,
}

/// What one sync learned.
#[derive(Debug, Clone)]
pub struct Synced {
    /// Other processes whose heartbeat is recent.
    pub other_processes: i64,
    pub suppliers: Vec<SupplierState>,
}

/// Window bounds for a sync or a status read.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub breaker_from: DateTime<Utc>,
    pub guard_from: DateTime<Utc>,
    /// Heartbeats before this are dead processes.
    pub alive_after: DateTime<Utc>,
}

/// The sync: heartbeats this process's row, adds its counts to the current bucket, and
/// reads every supplier's state, the window sums (as they were before this statement's
/// own counts were added; the caller adds those) and the other live processes. One
/// statement, so one round trip.
pub async fn sync(
    pool: &PgPool,
    me: &ProcessInfo,
    now: DateTime<Utc>,
    flush: &[(Supplier, Counts)],
    windows: Windows,
) -> sqlx::Result<Synced> {
    sync_as(pool, me, true, now, flush, windows).await
}

/// Every supplier's state and window sums without heartbeating or counting (`status`).
pub async fn read(pool: &PgPool, now: DateTime<Utc>, windows: Windows) -> sqlx::Result<Synced> {
    let nobody = ProcessInfo {
        process_id: Uuid::nil(),
        command: String::new(),
        hostname: String::new(),
        pid: 0,
        version: String::new(),
        started_at: now,
    };
    sync_as(pool, &nobody, false, now, &[], windows).await
}

async fn sync_as(
    pool: &PgPool,
    me: &ProcessInfo,
    heartbeat: bool,
    now: DateTime<Utc>,
    flush: &[(Supplier, Counts)],
    windows: Windows,
) -> sqlx::Result<Synced> {
    let mut suppliers = Vec::with_capacity(flush.len());
    let (mut calls, mut transient, mut answers, mut invalid, mut checks) = (vec![], vec![], vec![], vec![], vec![]);
    // Sorted, so concurrent flushes lock bucket rows in one order.
    let mut flush: Vec<&(Supplier, Counts)> = flush.iter().filter(|(_, c)| !c.is_empty()).collect();
    flush.sort_by_key(|(s, _)| s.as_str());
    for (s, c) in flush {
        suppliers.push(s.as_str().to_owned());
        calls.push(c.calls);
        transient.push(c.transient);
        answers.push(c.answers);
        invalid.push(c.invalid);
        checks.push(c.checks);
    }
    let rows = sqlx::query!(
        r#"
        WITH hb AS (
            INSERT INTO im1_processes (process_id, command, hostname, pid, version, started_at, heartbeat_at)
            SELECT $1, $2, $3, $4, $5, $6, $7
             WHERE $17::bool
            ON CONFLICT ON CONSTRAINT im1_processes_pkey DO UPDATE SET heartbeat_at = excluded.heartbeat_at
            RETURNING 1
        ),
        flushed AS (
            INSERT INTO im1_supplier_counts AS c (supplier, bucket, calls, transient, answers, invalid, checks)
            SELECT f.supplier, $8, f.calls, f.transient, f.answers, f.invalid, f.checks
              FROM UNNEST($9::text[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $18::int8[])
                   AS f(supplier, calls, transient, answers, invalid, checks)
            ON CONFLICT ON CONSTRAINT im1_supplier_counts_pkey DO UPDATE
               SET calls = c.calls + excluded.calls,
                   transient = c.transient + excluded.transient,
                   answers = c.answers + excluded.answers,
                   invalid = c.invalid + excluded.invalid,
                   checks = c.checks + excluded.checks
            RETURNING 1
        )
        SELECT s.supplier, s.breaker_state, s.breaker_changed_at, s.breaker_open_until, s.breaker_evidence,
               s.guard_held_since, s.guard_evidence,
               b.calls AS "b_calls!", b.transient AS "b_transient!",
               g.answers AS "g_answers!", g.invalid AS "g_invalid!",
               (SELECT count(*) FROM im1_held_verdicts h WHERE h.supplier = s.supplier) AS "held!",
               (SELECT count(*) FROM im1_processes p
                 WHERE p.process_id <> $1 AND p.heartbeat_at > $16) AS "others!",
               (SELECT count(*) FROM hb) + (SELECT count(*) FROM flushed) AS "written!"
          FROM im1_supplier_state s
          CROSS JOIN LATERAL (
              SELECT COALESCE(sum(c.calls), 0)::int8 AS calls, COALESCE(sum(c.transient), 0)::int8 AS transient
                FROM im1_supplier_counts c
               WHERE c.supplier = s.supplier AND c.bucket >= $14
                 AND c.bucket >= COALESCE(s.breaker_window_from, '-infinity')
          ) b
          CROSS JOIN LATERAL (
              SELECT COALESCE(sum(c.answers), 0)::int8 AS answers, COALESCE(sum(c.invalid), 0)::int8 AS invalid
                FROM im1_supplier_counts c
               WHERE c.supplier = s.supplier AND c.bucket >= $15
                 AND c.bucket >= COALESCE(s.guard_window_from, '-infinity')
          ) g
         ORDER BY s.supplier
        "#,
        me.process_id,
        me.command,
        me.hostname,
        me.pid,
        me.version,
        me.started_at,
        now,
        bucket_of(now),
        &suppliers,
        &calls,
        &transient,
        &answers,
        &invalid,
        windows.breaker_from,
        windows.guard_from,
        windows.alive_after,
        heartbeat,
        &checks,
    )
    .fetch_all(pool)
    .await?;
    let others = rows.first().map_or(0, |r| r.others);
    let suppliers = rows
        .into_iter()
        .filter_map(|r| {
            Some(SupplierState {
                supplier: r.supplier.parse().ok()?,
                breaker_state: r.breaker_state,
                breaker_changed_at: r.breaker_changed_at,
                breaker_open_until: r.breaker_open_until,
                breaker_evidence: r.breaker_evidence,
                guard_held_since: r.guard_held_since,
                guard_evidence: r.guard_evidence,
                breaker_window: Counts { calls: r.b_calls, transient: r.b_transient, ..Counts::default() },
                guard_window: Counts { answers: r.g_answers, invalid: r.g_invalid, ..Counts::default() },
                held_verdicts: r.held,
            })
        })
        .collect();
    Ok(Synced { other_processes: others, suppliers })
}

/// A breaker transition, made only from the state it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerMove {
    /// Closed (or a failed probe's half-open) to open until the cool-off ends.
    Open { from: &'static str, until: DateTime<Utc> },
    /// Open, cool-off over, to half-open: a probe decides.
    HalfOpen,
    /// Half-open to closed after a probe got a real answer; its window starts afresh.
    Close,
}

/// Makes `transition` if the breaker is still where it expects (false when another
/// process already moved it). `evidence` replaces the stored evidence when given.
pub async fn move_breaker(
    pool: &PgPool,
    supplier: Supplier,
    transition: BreakerMove,
    now: DateTime<Utc>,
    evidence: Option<&serde_json::Value>,
) -> sqlx::Result<bool> {
    let (from, to, until) = match transition {
        BreakerMove::Open { from, until } => (from, "open", Some(until)),
        BreakerMove::HalfOpen => ("open", "half_open", None),
        BreakerMove::Close => ("half_open", "closed", None),
    };
    let done = sqlx::query!(
        r#"
        UPDATE im1_supplier_state
           SET breaker_state = $3, breaker_changed_at = $4, breaker_open_until = $5,
               breaker_window_from = CASE WHEN $3 = 'closed' THEN $4 ELSE breaker_window_from END,
               breaker_evidence = COALESCE($6, breaker_evidence), updated_at = $4
         WHERE supplier = $1 AND breaker_state = $2
           -- Half-open only once the cool-off is over.
           AND ($3 <> 'half_open' OR breaker_open_until <= $4)
        "#,
        supplier.as_str(),
        from,
        to,
        now,
        until,
        evidence,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Starts holding a supplier's invalid verdicts. False when it already held.
pub async fn hold_guard(
    pool: &PgPool,
    supplier: Supplier,
    now: DateTime<Utc>,
    evidence: &serde_json::Value,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        r#"
        UPDATE im1_supplier_state
           SET guard_held_since = $2, guard_evidence = $3, updated_at = $2
         WHERE supplier = $1 AND guard_held_since IS NULL
        "#,
        supplier.as_str(),
        now,
        evidence,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes this process's heartbeat row (a clean exit), so others take its share at once.
pub async fn deregister(pool: &PgPool, process_id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("DELETE FROM im1_processes WHERE process_id = $1", process_id).execute(pool).await?;
    Ok(())
}

/// Deletes count buckets older than `before` and heartbeat rows of processes dead since
/// then. Returns the rows deleted.
pub async fn prune(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let row = sqlx::query!(
        r#"
        WITH c AS (DELETE FROM im1_supplier_counts WHERE bucket < $1 RETURNING 1),
             p AS (DELETE FROM im1_processes WHERE heartbeat_at < $1 RETURNING 1)
        SELECT (SELECT count(*) FROM c) + (SELECT count(*) FROM p) AS "deleted!"
        "#,
        before,
    )
    .fetch_one(pool)
    .await?;
    Ok(row.deleted as u64)
}

/// A live process, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveProcess {
    pub process_id: Uuid,
    pub command: String,
    pub hostname: String,
    pub pid: i32,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

/// Processes whose heartbeat came after `alive_after`.
pub async fn live_processes(pool: &PgPool, alive_after: DateTime<Utc>) -> sqlx::Result<Vec<LiveProcess>> {
    sqlx::query_as!(
        LiveProcess,
        r#"
        SELECT process_id, command, hostname, pid, version, started_at, heartbeat_at
          FROM im1_processes
         WHERE heartbeat_at > $1
         ORDER BY started_at
        "#,
        alive_after,
    )
    .fetch_all(pool)
    .await
}
