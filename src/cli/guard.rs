//! `guard list|release|discard`: what the mass-invalidation guard holds, and the operator's
//! two ways of ending it (see docs/runbook.md, "Invalidation guard holding").
//!
//! Needs only `DATABASE_URL` and the verdict rules; no encryption keys (no token is read).
//! Arguments are validated here rather than by clap so that an error message never
//! repeats what was typed (it may have been a token pasted in the wrong place).

use chrono::SecondsFormat;

use super::CliError;
use super::status::table;
use crate::config::Settings;
use crate::model::Supplier;
use crate::store::guard::{self, GuardState, HeldVerdict, Resolved};

#[derive(Debug, clap::Subcommand)]
pub enum GuardCommand {
    /// Each supplier's guard, its held verdicts per practice and, with --supplier, the first N.
    List(ListArgs),
    /// Apply held verdicts whose credential has seen nothing since (two strikes still apply).
    Release(ResolveArgs),
    /// Drop held verdicts: the credentials are checked again on their schedule.
    Discard(ResolveArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this supplier (emis, tpp or vision), with its first held verdicts listed.
    #[arg(long, value_name = "S")]
    pub supplier: Option<String>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// How many held verdicts to list with --supplier.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// The supplier whose held verdicts to resolve (emis, tpp or vision).
    #[arg(long, value_name = "S")]
    pub supplier: String,
    /// Only this practice's held verdicts (its ODS code); the guard stays holding while
    /// other practices' remain.
    #[arg(long, value_name = "X")]
    pub ods_code: Option<String>,
}

/// One supplier in `guard list`.
#[derive(Debug, serde::Serialize)]
pub struct SupplierGuard {
    #[serde(flatten)]
    pub state: GuardState,
    pub holding: bool,
    /// Held verdicts per practice, largest first.
    pub by_practice: Vec<PracticeCount>,
    /// The first held verdicts, oldest first (only when one supplier was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<HeldVerdict>>,
}

#[derive(Debug, serde::Serialize)]
pub struct PracticeCount {
    pub ods_code: String,
    pub count: i64,
}

/// Everything `guard list` shows.
#[derive(Debug, serde::Serialize)]
pub struct Listing {
    pub suppliers: Vec<SupplierGuard>,
}

pub async fn run(settings: Settings, command: GuardCommand) -> Result<(), CliError> {
    match command {
        GuardCommand::List(args) => list(settings, args).await,
        GuardCommand::Release(args) => resolve(settings, args, Action::Release).await,
        GuardCommand::Discard(args) => resolve(settings, args, Action::Discard).await,
    }
}

/// A supplier the guard can hold: Microtest's credentials are never checked.
fn checkable(value: &str) -> Result<Supplier, CliError> {
    match value.parse::<Supplier>() {
        Ok(Supplier::Microtest) => Err(CliError::Input(
            "--supplier: microtest credentials are never checked, so the guard never holds them; \
             choose emis, tpp or vision"
                .into(),
        )),
        Ok(s) => Ok(s),
        Err(_) => Err(CliError::Input("--supplier: must be one of emis, tpp, vision".into())),
    }
}

fn ods_code(value: Option<&str>) -> Result<Option<&str>, CliError> {
    match value {
        Some(v) => match crate::token::validate_ods_code(v) {
            Ok(()) => Ok(Some(v)),
            Err(e) => Err(CliError::Input(format!("--ods-code: {}", e.message))),
        },
        None => Ok(None),
    }
}

async fn list(settings: Settings, args: ListArgs) -> Result<(), CliError> {
    let only = args.supplier.as_deref().map(checkable).transpose()?;
    let pool = super::connect(&settings).await?;
    let mut suppliers = Vec::new();
    for state in guard::states(&pool).await? {
        let Ok(supplier) = state.supplier.parse::<Supplier>() else { continue };
        if only.is_some_and(|o| o != supplier) {
            continue;
        }
        let by_practice = guard::held_by_practice(&pool, supplier)
            .await?
            .into_iter()
            .map(|(ods_code, count)| PracticeCount { ods_code, count })
            .collect();
        let held = match only {
            Some(_) => Some(guard::held(&pool, supplier, None, i64::from(args.limit)).await?),
            None => None,
        };
        suppliers.push(SupplierGuard { holding: state.held_since.is_some(), state, by_practice, held });
    }
    let listing = Listing { suppliers };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing).unwrap_or_default());
    } else {
        print!("{}", render(&listing));
    }
    Ok(())
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Indents every line of a table by two spaces.
fn indented(rows: &[Vec<String>]) -> String {
    table(rows).lines().map(|l| format!("    {l}\n")).collect()
}

/// The human-readable listing.
pub fn render(listing: &Listing) -> String {
    let mut out = String::new();
    for s in &listing.suppliers {
        let st = &s.state;
        match st.held_since {
            Some(since) => out.push_str(&format!(
                "{}: HOLDING since {}, {} held verdict(s)\n",
                st.supplier,
                time(since),
                st.held_verdicts
            )),
            None => out.push_str(&format!("{}: clear, {} held verdict(s)\n", st.supplier, st.held_verdicts)),
        }
        if let Some(evidence) = &st.evidence {
            out.push_str(&format!("  tripped by: {evidence}\n"));
        }
        if let Some(from) = st.window_from {
            out.push_str(&format!("  window counted from: {}\n", time(from)))
        }
        if !s.by_practice.is_empty() {
            out.push_str("  held verdicts by practice:\n");
            let mut rows = vec![vec!["ods code".to_owned(), "held".to_owned()]];
            rows.extend(s.by_practice.iter().map(|p| vec![p.ods_code.clone(), p.count.to_string()]));
            out.push_str(&indented(&rows));
        }
        if let Some(held) = s.held.as_ref().filter(|h| !h.is_empty()) {
            out.push_str(&format!("  first {} held verdict(s), oldest first:\n", held.len()));
            let mut rows = vec![["user", "ods code", "reason", "held at"].map(str::to_owned).to_vec()];
            rows.extend(
                held.iter().map(|h| vec![h.user_id.clone(), h.ods_code.clone(), h.reason.clone(), time(h.held_at)]),
            );
            out.push_str(&indented(&rows));
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Release,
    Discard,
}

async fn resolve(settings: Settings, args: ResolveArgs, action: Action) -> Result<(), CliError> {
    let supplier = checkable(&args.supplier)?;
    let ods = ods_code(args.ods_code.as_deref())?;
    let pool = super::connect(&settings).await?;
    let now = crate::clock::system().now();
    let resolved = match action {
        Action::Release => guard::release(&pool, supplier, ods, now, &crate::sweep::rules(&settings)).await?,
        Action::Discard => guard::discard(&pool, supplier, ods, now).await?,
    };
    let verb = match action {
        Action::Release => "released",
        Action::Discard => "discarded",
    };
    resolved.log(supplier, ods, verb, "an operator");
    print!("{}", summary(supplier, ods, action, &resolved));
    Ok(())
}

fn summary(supplier: Supplier, ods: Option<&str>, action: Action, r: &Resolved) -> String {
    let scope = match ods {
        Some(ods) => format!("{supplier} practice {ods}"),
        None => supplier.to_string(),
    };
    let mut out = match action {
        Action::Release => format!(
            "{scope}: {} held verdict(s) applied, {} newly flagged for refresh, {} stale (the credential \
             changed since; not applied, it is checked again normally)\n",
            r.applied, r.newly_flagged, r.stale
        ),
        Action::Discard => format!(
            "{scope}: {} held verdict(s) discarded (standings unchanged; checked again on schedule)\n",
            r.discarded
        ),
    };
    out.push_str(&format!("{supplier}: {} held verdict(s) remaining\n", r.remaining));
    if r.guard_cleared {
        out.push_str(&format!("{supplier}: guard clear\n"));
    } else {
        out.push_str(&format!("{supplier}: guard still holding\n"));
    }
    out
}
