//! `console hash-password`: makes the argon2 hash an `IM1_CONSOLE_USERS` entry needs,
//! from a password read on standard input (never an argument, which would sit in the
//! shell's history and the process list).

use std::io::Read;

use super::CliError;

#[derive(Debug, clap::Subcommand)]
pub enum ConsoleCommand {
    /// Read a password on stdin (one line) and print its argon2id hash for IM1_CONSOLE_USERS.
    HashPassword,
}

/// Longest password accepted (argon2 takes any length; this only bounds the read).
const MAX_PASSWORD: u64 = 1024;

pub async fn run(command: ConsoleCommand) -> Result<(), CliError> {
    match command {
        ConsoleCommand::HashPassword => {
            let mut input = String::new();
            std::io::stdin()
                .take(MAX_PASSWORD + 1)
                .read_to_string(&mut input)
                .map_err(|_| CliError::Input("the password on stdin must be UTF-8 text".into()))?;
            // One line: a trailing newline (from echo or a terminal) is not part of it.
            let password = input.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&input);
            if input.len() as u64 > MAX_PASSWORD {
                return Err(CliError::Input(format!("the password must be at most {MAX_PASSWORD} bytes")));
            }
            if password.chars().count() < 12 {
                return Err(CliError::Input("the password must be at least 12 characters".into()));
            }
            if password.contains('\n') {
                return Err(CliError::Input("the password must be one line".into()));
            }
            let hash =
                crate::console::auth::hash_password(password).map_err(|e| CliError::Other(anyhow::anyhow!(e)))?;
            println!("{hash}");
            Ok(())
        }
    }
}
