//! Where each supplier stands, in one read: credentials per status, breaker and guard with
//! their window counts, held verdicts, canaries, the live processes and the last sweep.
//! `status` prints it; the operator console's overview draws it.

use std::collections::BTreeMap;

use crate::config::Settings;
use crate::model::{Status, Supplier};
use crate::store;

/// Everything `status` shows.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub suppliers: BTreeMap<String, SupplierStatus>,
    pub last_sweep: Option<store::sweeps::LastSweep>,
    /// Processes sharing the suppliers' rate limits (recent heartbeat).
    pub processes: Vec<store::safety::LiveProcess>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct SupplierStatus {
    /// Credentials per status (every status present, zeros included).
    pub statuses: BTreeMap<String, i64>,
    pub refresh_required: i64,
    /// Whether this process's configuration checks the supplier.
    pub configured: bool,
    /// `closed`, `open` or `half_open` (none for Microtest).
    pub breaker: Option<String>,
    pub breaker_open_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Calls and transient calls in the breaker's window.
    pub breaker_window: Option<store::safety::Counts>,
    /// `clear` or `holding` (none for Microtest).
    pub guard: Option<String>,
    pub guard_held_since: Option<chrono::DateTime<chrono::Utc>>,
    pub guard_evidence: Option<serde_json::Value>,
    /// Token answers and invalid ones in the guard's window.
    pub guard_window: Option<store::safety::Counts>,
    pub held_verdicts: i64,
    pub canaries: i64,
}

/// Reads the report as of the system clock's now.
pub async fn read(pool: &sqlx::PgPool, settings: &Settings) -> Result<Report, sqlx::Error> {
    let mut suppliers: BTreeMap<String, SupplierStatus> = BTreeMap::new();
    for s in Supplier::ALL {
        let entry = suppliers.entry(s.as_str().to_owned()).or_default();
        entry.configured = *s != Supplier::Microtest && settings.supplier(*s).is_some();
        for st in Status::ALL {
            entry.statuses.insert(st.as_str().to_owned(), 0);
        }
    }
    for c in store::status::counts(pool).await? {
        let entry = suppliers.entry(c.supplier.clone()).or_default();
        entry.statuses.insert(c.status, c.count);
        entry.refresh_required += c.refresh_required;
    }
    let now = crate::clock::system().now();
    let config = super::Config::from_settings(settings);
    let windows = store::safety::Windows {
        breaker_from: now - crate::clock::delta(config.breaker.window),
        guard_from: now - crate::clock::delta(config.guard.window),
        alive_after: now - crate::clock::delta(super::PROCESS_TTL),
    };
    for state in store::safety::read(pool, now, windows).await?.suppliers {
        let entry = suppliers.entry(state.supplier.as_str().to_owned()).or_default();
        let breaker = crate::model::Breaker::from_row(&state.breaker_state, state.breaker_open_until).at(now);
        entry.breaker = Some(breaker.as_str().to_owned());
        entry.breaker_open_until = state.breaker_open_until.filter(|_| state.breaker_state == "open");
        entry.breaker_window = Some(state.breaker_window);
        entry.guard = Some(if state.guard_held_since.is_some() { "holding" } else { "clear" }.to_owned());
        entry.guard_held_since = state.guard_held_since;
        entry.guard_evidence = state.guard_evidence;
        entry.guard_window = Some(state.guard_window);
        entry.held_verdicts = state.held_verdicts;
    }
    for canary in store::canaries::list(pool, None).await? {
        suppliers.entry(canary.supplier.as_str().to_owned()).or_default().canaries += 1;
    }
    Ok(Report {
        suppliers,
        last_sweep: store::sweeps::last_success(pool).await?,
        processes: store::safety::live_processes(pool, windows.alive_after).await?,
    })
}
