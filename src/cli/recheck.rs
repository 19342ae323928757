//! `recheck [--supplier S] [--user U] [--all]`: make chosen credentials due now.

use super::{CliError, supplier_arg};
use crate::config::Settings;
use crate::model::Supplier;
use crate::store::status::{RecheckFilter, recheck};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, value_parser = supplier_arg)]
    pub supplier: Option<Supplier>,
    #[arg(long)]
    pub user: Option<String>,
    /// Every credential (required when neither --supplier nor --user is given).
    #[arg(long)]
    pub all: bool,
}

pub async fn run(settings: Settings, args: Args) -> Result<(), CliError> {
    if args.supplier.is_none() && args.user.is_none() && !args.all {
        return Err(CliError::Input("choose what to recheck: --supplier S, --user U or --all".into()));
    }
    let pool = super::connect(&settings).await?;
    let filter = RecheckFilter { supplier: args.supplier, user_id: args.user };
    let n = recheck(&pool, &filter, crate::clock::system().now()).await?;
    println!("{n} credential(s) made due now");
    Ok(())
}
