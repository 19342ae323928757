//! `im1-revalidator`: parse the command line, set up logging, run the command, map its
//! failure to an exit code (0 success, 2 bad input or configuration, 1 anything else).

use std::process::ExitCode;

use clap::Parser;
use im1_revalidator::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; its per-credential log lines would drown that out.
    let default_level = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info" };
    // One TLS provider for the process (ring; no aws-lc build needed), before anything
    // builds a client (the trace exporter does).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Exports queued spans when dropped, at the end of main.
    let _telemetry = match im1_revalidator::telemetry::init(default_level) {
        Ok(guard) => guard,
        Err(problems) => {
            for problem in problems {
                eprintln!("im1-revalidator: {problem}");
            }
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("im1-revalidator: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("im1-revalidator: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
