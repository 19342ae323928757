//! `migrate`: applies the embedded migrations, then exits.

use super::CliError;
use crate::config::Settings;

pub async fn run(settings: Settings) -> Result<(), CliError> {
    let pool = super::connect(&settings).await?;
    crate::store::migrate(&pool).await?;
    let applied = crate::store::MIGRATOR.iter().count();
    println!("database schema up to date ({applied} migration(s))");
    Ok(())
}
