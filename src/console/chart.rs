//! The overview's small chart: one supplier's outcomes per minute over the last hour,
//! drawn here as inline SVG (no script, no image request; presentation attributes only,
//! so the strict Content-Security-Policy needs no `style-src` exception).

use chrono::{DateTime, TimeDelta, Utc};
use maud::{Markup, html};

use crate::store::console::MinuteCounts;

pub const VALID: &str = "#2e7d32";
pub const INVALID: &str = "#c62828";
pub const TRANSIENT: &str = "#f9a825";

const MINUTES: i64 = 60;
const BAR: i64 = 6;
const HEIGHT: i64 = 64;

/// One minute's bar: valid answers, invalid answers, transient calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bar {
    pub valid: i64,
    pub invalid: i64,
    pub transient: i64,
}

impl Bar {
    fn total(&self) -> i64 {
        self.valid + self.invalid + self.transient
    }
}

/// The last hour's bars for one supplier, oldest first, one per minute ending with the
/// minute `now` is in; minutes without counts are empty bars.
pub fn bars(rows: &[MinuteCounts], supplier: &str, now: DateTime<Utc>) -> Vec<Bar> {
    let current = DateTime::from_timestamp(now.timestamp().div_euclid(60) * 60, 0).unwrap_or(now);
    let first = current - TimeDelta::minutes(MINUTES - 1);
    let mut out = vec![Bar::default(); MINUTES as usize];
    for r in rows.iter().filter(|r| r.supplier == supplier) {
        let index = (r.minute - first).num_minutes();
        if (0..MINUTES).contains(&index) {
            out[index as usize] =
                Bar { valid: (r.answers - r.invalid).max(0), invalid: r.invalid, transient: r.transient };
        }
    }
    out
}

/// The stacked bar chart, with a text summary for screen readers.
pub fn svg(bars: &[Bar]) -> Markup {
    let max = bars.iter().map(Bar::total).max().unwrap_or(0).max(1);
    let width = BAR * bars.len() as i64;
    let sum = bars.iter().fold(Bar::default(), |a, b| Bar {
        valid: a.valid + b.valid,
        invalid: a.invalid + b.invalid,
        transient: a.transient + b.transient,
    });
    let label = format!(
        "last hour: {} valid, {} invalid, {} transient; busiest minute {}",
        sum.valid, sum.invalid, sum.transient, max
    );
    let mut rects = Vec::new();
    for (i, bar) in bars.iter().enumerate() {
        let x = i as i64 * BAR;
        let mut y = HEIGHT;
        for (value, colour) in [(bar.valid, VALID), (bar.invalid, INVALID), (bar.transient, TRANSIENT)] {
            if value > 0 {
                let h = ((value * HEIGHT) as f64 / max as f64).ceil().max(1.0) as i64;
                let top = (y - h).max(0);
                rects.push((x, top, y - top, colour));
                y = top;
            }
        }
    }
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (width) " " (HEIGHT + 12)}
            width=(width) height=(HEIGHT + 12) role="img" aria-label=(label) {
            title { (label) }
            line x1="0" y1=(HEIGHT) x2=(width) y2=(HEIGHT) stroke="#999" stroke-width="1" {}
            @for (x, y, h, colour) in rects {
                rect x=(x) y=(y) width=(BAR - 1) height=(h) fill=(colour) {}
            }
            text x="0" y=(HEIGHT + 11) font-size="9" fill="#555" { "−60 min" }
            text x=(width) y=(HEIGHT + 11) font-size="9" fill="#555" text-anchor="end" { "now" }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn minutes_land_in_their_bar_and_others_are_empty() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 9, 30, 20).unwrap();
        let row = |supplier: &str, minute: DateTime<Utc>| MinuteCounts {
            supplier: supplier.into(),
            minute,
            calls: 12,
            transient: 2,
            answers: 10,
            invalid: 3,
            checks: 11,
        };
        let rows = vec![
            row("emis", Utc.with_ymd_and_hms(2026, 11, 26, 9, 30, 0).unwrap()),
            row("emis", Utc.with_ymd_and_hms(2026, 11, 26, 8, 31, 0).unwrap()),
            row("emis", Utc.with_ymd_and_hms(2026, 11, 26, 8, 30, 0).unwrap()), // too old
            row("tpp", Utc.with_ymd_and_hms(2026, 11, 26, 9, 29, 0).unwrap()),
        ];
        let bars = bars(&rows, "emis", now);
        assert_eq!(bars.len(), 60);
        assert_eq!(bars[59], Bar { valid: 7, invalid: 3, transient: 2 });
        assert_eq!(bars[0], Bar { valid: 7, invalid: 3, transient: 2 });
        assert_eq!(bars[1..59].iter().filter(|b| **b != Bar::default()).count(), 0);
        let drawn = svg(&bars).into_string();
        assert_eq!(drawn.matches("<rect").count(), 6, "{drawn}");
        assert!(drawn.contains("14 valid, 6 invalid, 4 transient"), "{drawn}");
    }
}
