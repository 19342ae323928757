//! Durations as operators write them (`90s`, `1h30m`, `7d`), read and written back.

use std::fmt::Write as _;
use std::time::Duration;

use super::reader::shorten;

/// The longest duration accepted anywhere: longer is surely a typo, and it keeps every
/// `now + duration` far from the limits of timestamp arithmetic.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses a duration: whole numbers with units `d`, `h`, `m`, `s`, `ms`, largest first and
/// each at most once: `0s`, `500ms`, `90s`, `15m`, `1h30m`, `7d`, `1d12h`. Rejects empty,
/// negative, fractional, unit-less and unknown-unit input, and anything over 36500 days
/// (a typo, and a risk of overflow in timestamp arithmetic). The error describes the
/// problem without repeating the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "use d, h, m, s or ms, like 1h30m";
    let text = s.trim();
    if text.is_empty() {
        return Err("is empty".to_owned());
    }
    if text.starts_with('-') {
        return Err("must not be negative".to_owned());
    }
    let too_large = || format!("is too large (at most {})", format_duration(MAX_DURATION));
    let mut total: u128 = 0;
    // Units must shrink from left to right; this is the size of the last one seen.
    let mut previous_unit_ms: u128 = u128::MAX;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        if digits.is_empty() {
            let c = after.chars().next().unwrap_or(' ');
            return Err(if c.is_ascii_alphabetic() {
                "needs a number before each unit".to_owned()
            } else {
                format!("contains an unexpected character {c:?}")
            });
        }
        if after.starts_with(['.', ',']) {
            return Err("must use whole numbers (write 1h30m, not 1.5h)".to_owned());
        }
        let unit_end = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_ms: u128 = match unit {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" if after.is_empty() => return Err(format!("needs a unit after the number ({UNITS})")),
            "" => {
                let c = after.chars().next().unwrap_or(' ');
                return Err(format!("contains an unexpected character {c:?}"));
            }
            other => return Err(format!("has an unknown unit {:?} ({UNITS})", shorten(other))),
        };
        if unit_ms >= previous_unit_ms {
            return Err("must give units from largest to smallest, each at most once (like 1d12h or 1h30m)".to_owned());
        }
        previous_unit_ms = unit_ms;
        let amount: u128 = digits.parse().map_err(|_| too_large())?;
        total = amount.checked_mul(unit_ms).and_then(|v| total.checked_add(v)).ok_or_else(too_large)?;
        if total > MAX_DURATION.as_millis() {
            return Err(too_large());
        }
        rest = after;
    }
    let millis = u64::try_from(total).map_err(|_| too_large())?;
    Ok(Duration::from_millis(millis))
}

/// Writes a duration the way [`parse_duration`] reads it (`1h30m`, `500ms`, `0s`), to
/// whole milliseconds.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        let n = ms / size;
        if n > 0 {
            // Writing to a String cannot fail.
            let _ = write!(out, "{n}{unit}");
            ms -= n * size;
        }
    }
    out
}
