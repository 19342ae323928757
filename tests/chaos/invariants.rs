//! What must hold after every scenario and after the soak, read from the database and the
//! simulator's call counts once the faults have stopped.
//!
//! The system is at-least-once: a credential may be checked twice in one cycle only when
//! a process died (or lost its connection) holding an answer it had not yet written, so
//! duplicate calls are bounded by what the faults could have cut short.
//!
//! Every check is SQL over the whole population (so the soak's million rows are never
//! read into memory) and reports how many things break it, with a few examples.

use std::fmt;
use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::population::{REVOKED, expected_calls, token, truth};
use crate::scenarios::Scenario;
use crate::world::World;
use crate::{Failure, SETTLE};

/// One invariant, measured: how many things break it (0: it holds) and a few of them.
pub struct Measured {
    pub name: &'static str,
    pub count: i64,
    pub examples: Vec<String>,
    /// Measures progress (every credential checked, every revocation confirmed), so only
    /// means something once the system has had time to settle.
    pub progress: bool,
}

impl Measured {
    pub fn holds(&self) -> bool {
        self.count == 0
    }

    /// From rows of `(count(*) OVER (), example)`, at most a few.
    pub fn of(name: &'static str, rows: Vec<(i64, String)>) -> Measured {
        let count = rows.first().map_or(0, |(n, _)| *n);
        Measured { name, count, examples: rows.into_iter().map(|(_, e)| e).collect(), progress: false }
    }

    fn progress(self) -> Measured {
        Measured { progress: true, ..self }
    }
}

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.count)?;
        if !self.examples.is_empty() {
            write!(f, ", e.g. {}", self.examples.join("; "))?;
        }
        Ok(())
    }
}

/// A credential whose truth is not what its row says yet.
fn unsettled() -> String {
    format!("CASE WHEN {REVOKED} THEN status <> 'invalid' ELSE status <> 'valid' END")
}

/// A credential that is not revoked but is invalid or flagged: a false invalidation.
fn falsely_flagged() -> String {
    format!("NOT {REVOKED} AND (status = 'invalid' OR refresh_required)")
}

async fn rows(db: &mut PgConnection, sql: String) -> Vec<(i64, String)> {
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(db).await.expect("an invariant's query runs")
}

/// The invariants read from the database, for a scenario or the soak, once the system
/// has settled and a lease has passed since the faults stopped.
pub async fn database(world: &World, db: &mut PgConnection) -> Vec<Measured> {
    let mut measured = vec![
        Measured::of(
            "false invalidations: credentials with a valid truth now invalid or flagged",
            rows(
                db,
                format!(
                    "SELECT count(*) OVER (), format('%s is %s, refresh_required %s', user_id, status, refresh_required)
                       FROM im1_credentials WHERE {} ORDER BY user_id LIMIT 3",
                    falsely_flagged()
                ),
            )
            .await,
        ),
        Measured::of(
            "false invalidations in the audit trail: credentials with a valid truth ever invalid or flagged",
            rows(
                db,
                format!(
                    "SELECT count(*) OVER (), user_id FROM (
                         SELECT DISTINCT user_id FROM im1_credential_events
                          WHERE NOT {REVOKED} AND (to_status = 'invalid' OR refresh_required)) f
                      ORDER BY user_id LIMIT 3"
                ),
            )
            .await,
        ),
        Measured::of(
            "revoked credentials not confirmed invalid",
            rows(
                db,
                format!(
                    "SELECT count(*) OVER (), format('%s is %s (%s)', user_id, status, last_outcome)
                       FROM im1_credentials WHERE {REVOKED} AND status <> 'invalid' ORDER BY user_id LIMIT 3"
                ),
            )
            .await,
        )
        .progress(),
        Measured::of(
            "credentials never checked",
            rows(
                db,
                "SELECT count(*) OVER (), user_id FROM im1_credentials WHERE last_checked_at IS NULL ORDER BY user_id LIMIT 3"
                    .to_owned(),
            )
            .await,
        )
        .progress(),
        // A fifth of the population is revoked, under the guard's 50 % threshold: only
        // answers wrongly taken as invalid can trip it.
        Measured::of(
            "invalidation guards tripped (a fifth revoked is under their threshold)",
            rows(
                db,
                "SELECT count(*) OVER (), format('%s since %s: %s', supplier, guard_held_since, guard_evidence)
                   FROM im1_supplier_state WHERE guard_held_since IS NOT NULL"
                    .to_owned(),
            )
            .await,
        ),
    ];
    measured.extend(claims(world, db).await);
    measured.push(Measured::of("breaks in the audit trail (a change without its event)", audit_trail(db).await));
    measured
}

/// Claims standing once a lease has passed since the faults: only a live worker may hold
/// one, and none may reach further than one lease ahead.
async fn claims(world: &World, db: &mut PgConnection) -> [Measured; 2] {
    let live = world.live_process_ids().await;
    let orphaned = sqlx::query_as(
        "SELECT count(*) OVER (), format('%s leased to %s until %s', user_id, lease_owner, lease_expires_at)
           FROM im1_credentials
          WHERE lease_expires_at > now() AND lease_owner <> ALL($1)
          ORDER BY user_id LIMIT 3",
    )
    .bind(&live)
    .fetch_all(&mut *db)
    .await
    .expect("the orphaned claims query runs");
    let too_long = sqlx::query_as(
        "SELECT count(*) OVER (), format('%s leased until %s', user_id, lease_expires_at)
           FROM im1_credentials
          WHERE lease_expires_at > now() + make_interval(secs => $1)
          ORDER BY user_id LIMIT 3",
    )
    .bind(world.shape.lease.as_secs_f64())
    .fetch_all(&mut *db)
    .await
    .expect("the long claims query runs");
    [
        Measured::of("claims still held by a process that is gone, a lease after the faults", orphaned),
        Measured::of("claims reaching further than one lease", too_long),
    ]
}

/// Every change has its event, written with it: per credential, each event starts from
/// the status the previous one ended in, and the last one ends in the row's status and
/// refresh flag. A change written without its event (or an event without its change)
/// breaks the chain.
async fn audit_trail(db: &mut PgConnection) -> Vec<(i64, String)> {
    sqlx::query_as(
        "WITH e AS (
            SELECT user_id, from_status, to_status, refresh_required,
                   lag(to_status) OVER (PARTITION BY user_id ORDER BY id) AS previous,
                   row_number() OVER (PARTITION BY user_id ORDER BY id) AS n,
                   row_number() OVER (PARTITION BY user_id ORDER BY id DESC) AS from_end
              FROM im1_credential_events
         ), broken AS (
             SELECT user_id, format('%s: event %s starts from %s, the one before ended in %s',
                                    user_id, n, from_status, previous) AS what
               FROM e
              WHERE n > 1 AND from_status IS DISTINCT FROM previous
             UNION ALL
             SELECT c.user_id, format('%s is %s (refresh_required %s), its last event ends in %s (refresh_required %s)',
                                      c.user_id, c.status, c.refresh_required, e.to_status, e.refresh_required)
               FROM im1_credentials c LEFT JOIN e ON e.user_id = c.user_id AND e.from_end = 1
              WHERE e.to_status IS DISTINCT FROM c.status OR e.refresh_required IS DISTINCT FROM c.refresh_required
         )
         SELECT count(*) OVER (), what FROM broken ORDER BY user_id LIMIT 3",
    )
    .fetch_all(db)
    .await
    .expect("the audit trail query runs")
}

/// How the wait for every credential to reach its truth ended.
enum Settling {
    Settled(Duration),
    /// Stopped waiting: a breach was already certain (the checks after name it).
    Abandoned(Duration),
    TimedOut,
}

/// Credentials not at their truth yet, and those falsely flagged.
async fn progress(db: &mut PgConnection) -> (i64, i64) {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE {}), count(*) FILTER (WHERE {}) FROM im1_credentials",
        unsettled(),
        falsely_flagged()
    )))
    .fetch_one(db)
    .await
    .expect("the progress query runs")
}

async fn guard_holding(db: &mut PgConnection) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM im1_supplier_state WHERE guard_held_since IS NOT NULL)")
        .fetch_one(db)
        .await
        .expect("the guard query runs")
}

/// Waits (up to [`SETTLE`]) for every credential to reach its truth, then checks every
/// invariant. The report on success says how long settling took and what was duplicated.
pub async fn settle_and_check(
    world: &mut World,
    scenario: Scenario,
    faults_stopped: Instant,
) -> Result<String, Vec<Failure>> {
    let mut db = world.db().await;
    let bound = scenario.duplicate_bound(world);
    let mut settling = Settling::TimedOut;
    let mut poll = 0u32;
    while faults_stopped.elapsed() < SETTLE {
        let (unsettled, flagged) = progress(&mut db).await;
        if unsettled == 0 {
            settling = Settling::Settled(faults_stopped.elapsed());
            break;
        }
        // A breach already certain ends the wait: the checks below name it.
        world.check_alive();
        let over_bound = match bound {
            Some(bound) if poll % 10 == 9 => excess_calls(world).await > bound,
            _ => false,
        };
        if flagged > 0 || over_bound || !world.breaches.is_empty() || guard_holding(&mut db).await {
            settling = Settling::Abandoned(faults_stopped.elapsed());
            break;
        }
        poll += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One lease after the faults stopped, no claim of a dead process may be left standing.
    let lease = world.shape.lease;
    tokio::time::sleep((lease + Duration::from_secs(1)).saturating_sub(faults_stopped.elapsed())).await;
    let mut breaches = Vec::new();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials").fetch_one(&mut db).await.unwrap();
    if stored != world.population as i64 {
        breaches.push(format!("{stored} credentials stored, {} imported", world.population));
    }
    if let Settling::TimedOut = settling {
        breaches.push(format!(
            "not every credential reached its truth within {SETTLE:?} of the faults ending (time enough for the \
             backoff of two failed checks)"
        ));
    }
    // Once the wait was abandoned for a breach, what is unfinished is no news.
    let abandoned = matches!(settling, Settling::Abandoned(_));
    let measured = database(world, &mut db).await;
    breaches.extend(measured.iter().filter(|m| !(m.holds() || abandoned && m.progress)).map(ToString::to_string));
    let mut excess = 0u64;
    if let Some(bound) = bound {
        excess = excess_calls(world).await;
        if excess > bound {
            breaches.push(format!(
                "{excess} duplicate supplier calls, more than the {bound} the faults can explain ({} kills, {} cuts)",
                world.kills, world.cuts
            ));
        }
    }
    let settled = match settling {
        Settling::Settled(d) => format!("settled {d:.1?} after the faults"),
        Settling::Abandoned(d) => format!("stopped waiting {d:.1?} after the faults"),
        Settling::TimedOut => "never settled".to_owned(),
    };
    let duplicates = match bound {
        Some(bound) => format!("{excess} duplicate calls (bound {bound})"),
        None => "duplicates not bounded (the supplier failed calls)".to_owned(),
    };
    let report = format!("{settled}; {duplicates}; {} kills, {} connection cuts", world.kills, world.cuts);
    if breaches.is_empty() { Ok(report) } else { Err(breaches) }
}

/// Supplier calls beyond what each credential needs when nothing goes wrong.
async fn excess_calls(world: &World) -> u64 {
    let calls = world.token_calls().await;
    (0..world.population)
        .map(|i| calls.get(&token(i)).copied().unwrap_or(0).saturating_sub(expected_calls(truth(i))))
        .sum()
}
