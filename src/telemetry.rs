//! Logging: tracing to stderr, JSON for machines, a human format on a terminal.
//! Nothing that holds a token implements `Display` in a way that reveals it, and no code
//! path logs a token; the redaction tests check the captured output.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{default_level},sqlx=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if std::io::stderr().is_terminal() {
        builder.compact().try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    };
}
