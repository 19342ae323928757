//! `check-config`: validates configuration; with a database, also that every key id in
//! use is configured (dropping a key still in use would make its tokens unreadable).

use super::CliError;
use crate::config::Settings;
use crate::model::Supplier;

pub async fn run(settings: Settings) -> Result<(), CliError> {
    // TLS files are read and checked here, as every command that checks tokens does.
    super::adapters(&settings)?;
    // So are the console's certificate and key.
    if let Some(console) = &settings.console {
        crate::console::check_tls(console)
            .map_err(|problem| CliError::Config(crate::config::ConfigError { problems: vec![problem] }))?;
    }
    let configured: Vec<&str> =
        Supplier::CHECKABLE.iter().filter(|s| settings.supplier(**s).is_some()).map(|s| s.as_str()).collect();
    println!(
        "configuration is valid; suppliers configured: {}",
        if configured.is_empty() { "none".to_owned() } else { configured.join(", ") }
    );
    if let Some(console) = &settings.console {
        println!(
            "operator console on {} ({}; {} password user(s){})",
            console.addr,
            if console.tls.is_some() { "HTTPS" } else { "plain HTTP" },
            console.users.len(),
            if console.trusted_header.is_some() { ", trusted header" } else { "" }
        );
    }
    if settings.database_url.is_none() {
        println!("DATABASE_URL not set: key ids in use were not checked");
        return Ok(());
    }
    let pool = super::connect(&settings).await?;
    let keys = settings.require_keys()?;
    let in_use = super::require_keys_in_use(&pool, keys).await?;
    println!("every key id in use is configured ({} in use)", in_use.len());
    Ok(())
}
