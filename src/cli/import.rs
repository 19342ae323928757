//! `credentials import [PATH|-] [--skip-invalid]`: JSON lines in, validated first.
//!
//! The file is streamed: lines are read with a length bound, validated, encrypted and
//! copied into a staging table inside one transaction ([`BulkImport`]), so memory stays
//! flat for ten million lines and a rejected file changes nothing. Every bad line is
//! reported by number and reason, never with its content; lines repeating an earlier
//! user id are found once the whole file is staged, and reported last.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::CliError;
use super::progress::{Progress, Unit};
use crate::config::Settings;
use crate::store::bulk_import::BulkImport;
use crate::token::parse_import_line;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to read; `-` or nothing reads standard input.
    pub path: Option<PathBuf>,
    /// Import the good lines even when some are bad (the bad ones are still listed).
    #[arg(long)]
    pub skip_invalid: bool,
}

/// Longest line accepted, in bytes. A real line is a few hundred.
pub const MAX_LINE: usize = 64 * 1024;

pub async fn run(settings: Settings, args: Args) -> Result<(), CliError> {
    let keys = settings.require_keys()?;
    let pool = super::connect(&settings).await?;
    let clock = crate::clock::system();
    let reader: Box<dyn AsyncBufRead + Unpin + Send> = match &args.path {
        None => Box::new(BufReader::new(tokio::io::stdin())),
        Some(p) if p.as_os_str() == "-" => Box::new(BufReader::new(tokio::io::stdin())),
        Some(p) => {
            let file = tokio::fs::File::open(p)
                .await
                .map_err(|e| CliError::Input(format!("cannot open {}: {e}", p.display())))?;
            Box::new(BufReader::with_capacity(256 * 1024, file))
        }
    };
    let size = match &args.path {
        Some(p) if p.as_os_str() != "-" => tokio::fs::metadata(p).await.ok().map(|m| m.len()),
        _ => None,
    };
    let mut tx = BulkImport::begin(&pool, keys, clock.now()).await?;
    let read = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("import", Unit::Bytes, size, read.clone());
    let outcome = import(reader, &mut tx, &read, |line, problem| {
        // A bad line's report starts on a line of its own, not after the bar.
        if super::progress::interactive() {
            eprint!("\r\x1b[2K");
        }
        eprintln!("line {line}: {problem}")
    })
    .await;
    progress.finish().await;
    let outcome = outcome?;
    if outcome.bom_skipped {
        eprintln!("note: the input starts with a UTF-8 byte-order mark; it was skipped");
    }
    if outcome.bad_lines > 0 && !args.skip_invalid {
        tx.rollback().await?;
        return Err(CliError::Input(format!(
            "import rejected: {} bad line(s) of {}; nothing was imported (use --skip-invalid to import the good lines)",
            outcome.bad_lines, outcome.lines
        )));
    }
    tx.write().await?;
    let stats = tx.commit().await?;
    println!(
        "imported {} line(s): {} new, {} replaced, {} unchanged{}",
        outcome.lines - outcome.bad_lines,
        stats.new,
        stats.replaced,
        stats.unchanged,
        if outcome.bad_lines > 0 { format!("; {} bad line(s) skipped", outcome.bad_lines) } else { String::new() }
    );
    Ok(())
}

/// What reading a file came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Non-blank lines read.
    pub lines: u64,
    pub bad_lines: u64,
    /// The input started with a UTF-8 byte-order mark, which was skipped.
    pub bom_skipped: bool,
}

/// The UTF-8 byte-order mark (U+FEFF), skipped at the very start of the input only.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads every line, reports each bad one through `report(line_number, problem)`, and
/// stages the good ones in `tx`; then takes out the lines that repeat an earlier user id
/// and reports them. `read` counts the bytes consumed (progress). Nothing is written
/// until [`BulkImport::write`].
pub async fn import<R, F>(
    mut reader: R,
    tx: &mut BulkImport<'_>,
    read: &AtomicU64,
    mut report: F,
) -> Result<ReadOutcome, CliError>
where
    R: AsyncBufRead + Unpin,
    F: FnMut(u64, String),
{
    let mut outcome = ReadOutcome::default();
    let mut number = 0u64;
    let mut buf = Vec::with_capacity(1024);
    loop {
        number += 1;
        let line = match read_bounded_line(&mut reader, &mut buf).await {
            Ok(None) => break,
            Ok(Some(line)) => line,
            Err(e) => return Err(CliError::Input(format!("reading line {number}: {e}"))),
        };
        read.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        let text = match line {
            Line::TooLong => {
                outcome.lines += 1;
                outcome.bad_lines += 1;
                report(number, format!("line is longer than {MAX_LINE} bytes"));
                continue;
            }
            // Exports from Windows tools often start with a UTF-8 byte-order mark; it is not
            // part of the first line's JSON.
            Line::Text(bytes) if number == 1 && bytes.starts_with(UTF8_BOM) => {
                outcome.bom_skipped = true;
                &bytes[UTF8_BOM.len()..]
            }
            Line::Text(bytes) => bytes,
        };
        let Ok(text) = std::str::from_utf8(text) else {
            outcome.lines += 1;
            outcome.bad_lines += 1;
            report(number, "line is not valid UTF-8".to_owned());
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        outcome.lines += 1;
        match parse_import_line(text) {
            Ok(cred) => tx.stage(number, cred).await?,
            Err(problems) => {
                outcome.bad_lines += 1;
                let joined: Vec<String> = problems.iter().map(ToString::to_string).collect();
                report(number, joined.join("; "));
            }
        }
    }
    outcome.bad_lines += tx.duplicates(|d| report(d.line, format!("user_id: repeats line {}", d.first_line))).await?;
    Ok(outcome)
}

/// One line as [`read_bounded_line`] gives it.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The line without its `\n` (nor a `\r` before it).
    Text(&'a [u8]),
    /// Longer than [`MAX_LINE`] bytes; read to its end and dropped.
    TooLong,
}

impl Line<'_> {
    /// Bytes of input the line took (a line too long was read up to the bound, then
    /// skipped to its end; the bound is close enough for progress).
    fn len(&self) -> usize {
        match self {
            Line::Text(bytes) => bytes.len(),
            Line::TooLong => MAX_LINE,
        }
    }
}

/// Reads one line without ever holding more than [`MAX_LINE`] bytes of it; `None` at the
/// end of the input. (Public for the parser fuzzing in `tests/it/fuzz.rs`.)
pub async fn read_bounded_line<'b, R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &'b mut Vec<u8>,
) -> std::io::Result<Option<Line<'b>>> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        read_any = true;
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > MAX_LINE {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let consumed = done.unwrap_or(available.len());
        reader.consume(consumed);
        if done.is_some() {
            break;
        }
    }
    if !read_any {
        return Ok(None);
    }
    if too_long {
        return Ok(Some(Line::TooLong));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(Line::Text(buf)))
}
