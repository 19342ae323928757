//! Progress for long commands (`sweep`, `credentials import`): a bar redrawn in place on a
//! terminal, plain log lines every ten seconds otherwise (CronJobs, systemd, pipes), so
//! nothing meant for a person ends up in a log file as control characters.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What is being counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Checks,
    Bytes,
}

impl Unit {
    fn show(self, n: u64) -> String {
        match self {
            Unit::Checks => n.to_string(),
            Unit::Bytes => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
        }
    }
}

/// A running progress display; [`Progress::finish`] stops it and clears the bar.
pub struct Progress {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Whether a bar may be drawn: stderr is a terminal that understands it.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

const REDRAW: Duration = Duration::from_millis(150);
const LOG_EVERY: Duration = Duration::from_secs(10);
const WIDTH: usize = 30;

impl Progress {
    /// Shows `done` (of `total`, when known) until finished.
    pub fn start(label: &'static str, unit: Unit, total: Option<u64>, done: Arc<AtomicU64>) -> Progress {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let tty = interactive();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let every = if tty { REDRAW } else { LOG_EVERY };
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let n = done.load(Ordering::Relaxed);
                if tty {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{}", line(label, unit, n, total, started.elapsed()));
                    let _ = err.flush();
                } else {
                    tracing::info!(
                        done = n,
                        total,
                        per_second = rate(n, started.elapsed()),
                        "{label}: {} so far",
                        unit.show(n)
                    );
                }
            }
            if tty {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K");
                let _ = err.flush();
            }
        });
        Progress { stop, task }
    }

    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn rate(n: u64, elapsed: Duration) -> u64 {
    (n as f64 / elapsed.as_secs_f64().max(1e-3)) as u64
}

/// One redraw of the bar: `label [#####·····] done/total (pct) rate/s ETA`.
pub fn line(label: &str, unit: Unit, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let per_second = rate(done, elapsed);
    let speed = match unit {
        Unit::Checks => format!("{per_second}/s"),
        Unit::Bytes => format!("{}/s", unit.show(per_second)),
    };
    match total {
        Some(total) if total > 0 => {
            let fraction = (done as f64 / total as f64).clamp(0.0, 1.0);
            let filled = (fraction * WIDTH as f64).round() as usize;
            let eta = if per_second > 0 && done < total {
                format!(" ETA {}s", (total - done.min(total)) / per_second.max(1))
            } else {
                String::new()
            };
            format!(
                "{label} [{}{}] {} of {} ({:.0}%) {speed}{eta}",
                "#".repeat(filled),
                "·".repeat(WIDTH - filled),
                unit.show(done),
                unit.show(total),
                fraction * 100.0
            )
        }
        _ => format!("{label} {} {speed}", unit.show(done)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_share_rate_and_time_left() {
        let l = line("sweep", Unit::Checks, 250, Some(1000), Duration::from_secs(5));
        assert!(l.starts_with("sweep [########"), "{l}");
        assert!(l.contains("250 of 1000 (25%) 50/s ETA 15s"), "{l}");
        let l = line("import", Unit::Bytes, 3 * 1024 * 1024, None, Duration::from_secs(1));
        assert_eq!(l, "import 3.0 MiB 3.0 MiB/s");
        let done = line("sweep", Unit::Checks, 1000, Some(1000), Duration::from_secs(5));
        assert!(done.contains("(100%)") && !done.contains("ETA"), "{done}");
        assert!(line("sweep", Unit::Checks, 0, Some(0), Duration::ZERO).contains("sweep 0"));
    }
}
