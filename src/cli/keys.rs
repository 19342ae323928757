//! `keys status|rotate`: tokens per key id, and moving them all under the primary key
//! (the first in `IM1_ENCRYPTION_KEYS`) so that an old key can be dropped.
//!
//! Both need `DATABASE_URL` and `IM1_ENCRYPTION_KEYS`. `status` reports whatever it finds,
//! key ids missing from the configuration included (that is what it is for); `rotate`
//! refuses to start while one is missing, like every command that reads tokens.

use super::CliError;
use super::status::table;
use crate::config::Settings;
use crate::keys::{self, KeyStatus, RotateOptions, Rotation};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Tokens per key id: the primary, the other configured keys, and any in use but not
    /// configured (those tokens cannot be decrypted).
    Status(StatusArgs),
    /// Re-encrypt every token not under the primary key, in batches; safe beside sweeps,
    /// and resumable (run it again to continue).
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Tokens per batch; each batch is one short transaction.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
}

pub async fn run(settings: Settings, command: KeysCommand) -> Result<(), CliError> {
    let keyring = settings.require_keys()?;
    let pool = super::connect(&settings).await?;
    match command {
        KeysCommand::Status(args) => {
            let report = keys::status(&pool, keyring).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", render_status(&report));
            }
            Ok(())
        }
        KeysCommand::Rotate(args) => {
            super::require_keys_in_use(&pool, keyring).await?;
            let options = RotateOptions { batch: args.batch, ..RotateOptions::default() };
            let report = keys::rotate(&pool, keyring, &crate::clock::SystemClock, options).await?;
            print!("{}", render_rotation(&report));
            if report.complete() {
                Ok(())
            } else {
                Err(CliError::Other(anyhow::anyhow!("{}", rotation_failure(&report))))
            }
        }
    }
}

/// The table, then a plain sentence for anything that needs doing.
pub fn render_status(report: &KeyStatus) -> String {
    let mut rows = vec![vec!["key id".to_owned(), "tokens".to_owned(), "".to_owned()]];
    for k in &report.keys {
        let role = match (k.primary, k.configured) {
            (true, _) => "primary",
            (false, true) => "configured (decrypt only)",
            (false, false) => "NOT CONFIGURED",
        };
        rows.push(vec![k.key_id.clone(), k.tokens.to_string(), role.to_owned()]);
    }
    let mut out = table(&rows);
    for k in report.keys.iter().filter(|k| !k.configured) {
        out.push_str(&format!(
            "key id {:?} is not in IM1_ENCRYPTION_KEYS: its {} token(s) cannot be decrypted (checks skip them) \
             until the key is added back\n",
            k.key_id, k.tokens
        ));
    }
    if report.to_rotate > 0 {
        out.push_str(&format!(
            "{} token(s) are not under the primary key {:?}: run `keys rotate`\n",
            report.to_rotate, report.primary
        ));
    } else {
        out.push_str(&format!("every token is under the primary key {:?}\n", report.primary));
    }
    out
}

/// The summary line, then one line per row left alone (user id and why, never content).
pub fn render_rotation(report: &Rotation) -> String {
    let from: Vec<&str> = report.rotated.keys().map(String::as_str).collect();
    let mut out = format!(
        "rotated {} tokens from key ids {:?} to {:?}; {} left\n",
        report.total_rotated(),
        from,
        report.primary,
        report.left
    );
    for u in &report.undecryptable {
        out.push_str(&format!("not rotated: user {:?} (key id {:?}): {}\n", u.user_id, u.key_id, u.why));
    }
    out
}

fn rotation_failure(report: &Rotation) -> String {
    let mut parts = Vec::new();
    if !report.undecryptable.is_empty() {
        parts.push(format!(
            "{} token(s) could not be decrypted and were left as they are (listed above by user id): \
             re-import those users or delete them",
            report.undecryptable.len()
        ));
    }
    if report.locked > 0 {
        parts.push(format!(
            "{} token(s) were held by other transactions (a sweep or an import) through every retry: \
             run `keys rotate` again",
            report.locked
        ));
    }
    if parts.is_empty() {
        parts.push("tokens were written under another key during the rotation: run `keys rotate` again".to_owned());
    }
    format!("{} token(s) are still not under the primary key {:?}: {}", report.left, report.primary, parts.join("; "))
}
