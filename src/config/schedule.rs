//! `IM1_SCHEDULE`: `off`, or a 5- or 6-field cron expression read in `IM1_TIMEZONE`.

use std::fmt;

use chrono::{DateTime, NaiveDate, Timelike as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Year};

/// When `run` sweeps.
#[derive(Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per process, read in place; boxing would only complicate matching on it"
)]
pub enum Schedule {
    /// `run` serves the API and metrics without sweeping (sweeps come from elsewhere).
    Off,
    /// A 5-field (minute first) or 6-field (second first) cron expression.
    Cron { expression: String, cron: Cron },
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The parsed pattern's own Debug is a wall of bit sets; the text says it all.
        match self {
            Schedule::Off => f.write_str("Off"),
            Schedule::Cron { expression, .. } => write!(f, "Cron({expression:?})"),
        }
    }
}

impl Schedule {
    /// `off` (any case), or a cron expression of exactly 5 or 6 fields that fires at
    /// least once. Errors say what is wrong without the variable's name.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Schedule::Off);
        }
        // Counted here because croner also takes 7 fields (a year) and `@daily`-style
        // nicknames, which the contract does not offer.
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "must be off or a cron expression of 5 fields (minute hour day month weekday) \
                 or 6 (second first); found {fields} field{}",
                if fields == 1 { "" } else { "s" }
            ));
        }
        let cron = CronParser::builder()
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| format!("is not a valid cron expression ({e})"))?;
        // A day that never comes (`0 0 30 2 *`) parses but would stop sweeps for good.
        // croner searches thousands of years ahead before giving up, so a pattern with no
        // fire after a fixed start (chosen to keep this step pure) has none at all.
        let fires = NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .is_some_and(|start| cron.find_next_occurrence(&start, false).is_ok());
        if !fires {
            return Err("never fires (it names a date that does not exist)".to_owned());
        }
        Ok(Schedule::Cron { expression: text.split_whitespace().collect::<Vec<_>>().join(" "), cron })
    }

    /// The next fire time strictly after `after`, with the expression read as wall-clock
    /// time in `tz`. `None` when the schedule is off.
    ///
    /// Daylight saving follows croner (the Open Cron Pattern Specification): a fixed-time
    /// job whose time is skipped in spring runs once at the first instant after the gap,
    /// and one whose time is repeated in autumn runs once, at the earlier instant; an
    /// interval job (`*/5 * * * *`) runs on real instants only, both halves of a repeat.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let Schedule::Cron { cron, .. } = self else {
            return None;
        };
        // Fire times are whole seconds. Searching strictly after the whole second at or
        // before `after` finds the first fire strictly after `after` itself, however
        // croner treats fractions.
        let whole = after.with_nanosecond(0)?;
        let next = cron.find_next_occurrence(&whole.with_timezone(&tz), false).ok()?;
        let next = next.with_timezone(&Utc);
        // Guards the caller's `sleep_until(next)` loop against ever spinning.
        (next > after).then_some(next)
    }
}
