//! `credentials canary add|remove|list`: mark known-good credentials whose probes gate a
//! supplier's verdicts. Only the marks are read and written here, never a token, so only
//! `DATABASE_URL` is needed (no encryption keys).

use chrono::{DateTime, SecondsFormat, Utc};

use super::{CliError, supplier_arg};
use crate::config::Settings;
use crate::model::Supplier;
use crate::store::canaries::{self, AddError, CanaryRow};

#[derive(Debug, clap::Subcommand)]
pub enum CanaryCommand {
    /// Mark a stored credential as a canary (again: update its note).
    Add(AddArgs),
    /// Unmark a canary; the credential itself is kept.
    Remove(RemoveArgs),
    /// The canaries and what their last probes came to.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The user id of a stored EMIS, TPP or Vision credential.
    pub user: String,
    /// Why this credential is trusted (whose account it is); an empty note clears it.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The canary's user id.
    pub user: String,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this supplier's canaries.
    #[arg(long, value_parser = supplier_arg)]
    pub supplier: Option<Supplier>,
    /// A JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs one `credentials canary` subcommand.
pub async fn run(settings: Settings, command: CanaryCommand) -> Result<(), CliError> {
    let pool = super::connect(&settings).await?;
    match command {
        CanaryCommand::Add(args) => add(&pool, args).await,
        CanaryCommand::Remove(args) => {
            if canaries::remove(&pool, &args.user).await? {
                println!("user {:?} is no longer a canary", args.user);
            } else {
                println!("user {:?} was not a canary; nothing to remove", args.user);
            }
            Ok(())
        }
        CanaryCommand::List(args) => {
            let rows = canaries::list(&pool, args.supplier).await?;
            if args.json {
                let json = serde_json::to_string_pretty(&rows)
                    .map_err(|e| CliError::Other(anyhow::Error::new(e).context("rendering JSON")))?;
                println!("{json}");
            } else {
                print!("{}", render(&rows));
            }
            Ok(())
        }
    }
}

async fn add(pool: &sqlx::PgPool, args: AddArgs) -> Result<(), CliError> {
    let user = &args.user;
    match canaries::add(pool, user, args.note.as_deref(), crate::clock::system().now()).await {
        Ok(true) => {
            println!("user {user:?} is now a canary");
            Ok(())
        }
        Ok(false) => {
            let what = if args.note.is_some() { "; its note was updated" } else { "" };
            println!("user {user:?} was already a canary{what}");
            Ok(())
        }
        Err(AddError::UnknownUser) => {
            Err(CliError::Input(format!("no credential is stored for user {user:?}; import it before marking it")))
        }
        Err(AddError::Unsupported) => Err(CliError::Input(format!(
            "user {user:?} has a Microtest credential, which is never checked, so it cannot be a canary"
        ))),
        Err(AddError::InvalidNote(why)) => Err(CliError::Input(format!("--note {why}"))),
        Err(AddError::Database(e)) => Err(e.into()),
    }
}

/// The aligned table of `credentials canary list`.
pub fn render(rows: &[CanaryRow]) -> String {
    if rows.is_empty() {
        return "no canaries\n".to_owned();
    }
    let headers = ["user_id", "supplier", "ods_code", "added", "last probe", "last outcome", "note"];
    let mut table: Vec<Vec<String>> = vec![headers.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        table.push(vec![
            r.user_id.clone(),
            r.supplier.to_string(),
            r.ods_code.clone(),
            time(r.added_at),
            r.last_probed_at.map_or_else(|| "never".to_owned(), time),
            r.last_outcome.clone().unwrap_or_else(|| "-".to_owned()),
            r.note.clone().unwrap_or_default(),
        ]);
    }
    super::status::table(&table)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_table_is_aligned_and_shows_never_probed() {
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap();
        let rows = vec![
            CanaryRow {
                user_id: "canary-emis-1".into(),
                supplier: Supplier::Emis,
                ods_code: "A81001".into(),
                note: Some("practice test patient".into()),
                added_at: at,
                last_probed_at: Some(at),
                last_outcome: Some("valid".into()),
                last_evidence: None,
            },
            CanaryRow {
                user_id: "c2".into(),
                supplier: Supplier::Tpp,
                ods_code: "B81001".into(),
                note: None,
                added_at: at,
                last_probed_at: None,
                last_outcome: None,
                last_evidence: None,
            },
        ];
        let out = render(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("user_id      "), "{out}");
        assert!(lines[1].contains("2026-11-26T09:00:00Z") && lines[1].ends_with("practice test patient"), "{out}");
        assert!(lines[2].contains("never") && lines[2].contains(" -"), "{out}");
        assert_eq!(render(&[]), "no canaries\n");
    }
}
