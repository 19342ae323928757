//! Planted defects, so the fault suite (`tests/chaos`) can prove it catches a breach: each
//! scenario is also run once with a defect switched on and must report it. Compiled only
//! into debug builds (`cfg(debug_assertions)`): a release binary contains none of this and
//! ignores the variable.
//!
//! Switched on by `CHAOS_PLANTED_DEFECT` (deliberately not an `IM1_*` setting).

/// A defect the fault suite can plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// Claims ignore other processes' leases (`ignore-leases`): credentials are checked
    /// again while another process holds them.
    IgnoreLeases,
    /// A 503 counts as an explicit rejection (`503-is-invalid`): an outage flags users.
    ServiceUnavailableIsInvalid,
}

impl Defect {
    pub fn name(self) -> &'static str {
        match self {
            Defect::IgnoreLeases => "ignore-leases",
            Defect::ServiceUnavailableIsInvalid => "503-is-invalid",
        }
    }
}

/// Whether `defect` is planted in this process.
#[cfg(debug_assertions)]
pub fn planted(defect: Defect) -> bool {
    static PLANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PLANTED.get_or_init(|| std::env::var("CHAOS_PLANTED_DEFECT").ok()).as_deref() == Some(defect.name())
}

/// Release builds have no planted defects.
#[cfg(not(debug_assertions))]
pub fn planted(_defect: Defect) -> bool {
    false
}
