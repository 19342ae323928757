//! The house's one-way rule (docs/architecture.md): every top-level module of `src/` has a
//! floor, and a module may name (`crate::…`) only modules on floors below its own. The
//! test reads the source as text, so a new upward arrow or an import circle fails here,
//! naming the file and the line, before anyone has to find it in a review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and its floor; the lowest floor first. Two modules on one floor
/// may not name each other. A new module must be added here, on purpose.
const FLOORS: &[(&str, u8)] = &[
    // The vocabulary and leaf tools: they name no other module.
    ("model", 0),
    ("clock", 0),
    ("telemetry", 0),
    ("tls", 0),
    // Values built on the vocabulary.
    ("token", 1),
    ("crypto", 1),
    ("policy", 1),
    // Settings, read and validated once.
    ("config", 2),
    // PostgreSQL: every query.
    ("store", 3),
    // Built on the store: metrics, signing keys, and the fault suite's seam.
    ("metrics", 4),
    ("keys", 4),
    ("defects", 4),
    // GP system adapters, and the shutdown signal.
    ("suppliers", 5),
    ("shutdown", 5),
    // Verdict safety around supplier calls; the simulator that plays the suppliers.
    ("safety", 6),
    ("simulator", 6),
    // The sweep runner.
    ("sweep", 7),
    // The two HTTP faces of `run`.
    ("admin", 8),
    ("console", 8),
    // The commands.
    ("cli", 9),
];

fn floor(module: &str) -> Option<u8> {
    FLOORS.iter().find(|(name, _)| *name == module).map(|(_, floor)| *floor)
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Every top-level module a line names, outside `//` comments: as `crate::<module>`, or
/// as `super::…::<module>` with enough `super`s to climb from a file `depth` modules deep
/// (`src/sweep/writer.rs` is 2) to the crate root. The climb counts files only: a `super`
/// inside an inline `mod tests { … }` is read as one level short, which can only miss an
/// arrow from test code, never invent one.
fn named_modules(line: &str, depth: usize) -> Vec<&str> {
    let code = line.split("//").next().unwrap_or("");
    let starts_path =
        |at: usize| !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$' || c == ':');
    let segment = |rest: &'_ str| {
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        rest[..end].to_owned()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::").filter(|(at, _)| starts_path(*at)) {
        found.push((at + "crate::".len(), 0));
    }
    for (at, _) in code.match_indices("super::").filter(|(at, _)| starts_path(*at)) {
        let mut rest = at;
        let mut climbs = 0;
        while code[rest..].starts_with("super::") {
            rest += "super::".len();
            climbs += 1;
        }
        if climbs == depth {
            found.push((rest, climbs));
        }
    }
    found.sort();
    found
        .into_iter()
        .map(|(at, _)| &code[at..at + segment(&code[at..]).len()])
        .filter(|name| !name.is_empty())
        .collect()
}

/// How many modules deep a file is: `src/sweep.rs` and `src/sweep/mod.rs` are 1,
/// `src/sweep/writer.rs` is 2.
fn depth(src: &Path, file: &Path) -> usize {
    let relative = file.strip_prefix(src).unwrap_or(file);
    let parts = relative.components().count();
    if relative.file_name().is_some_and(|n| n == "mod.rs") { parts - 1 } else { parts }
}

/// The top-level module a file belongs to (`src/sweep/writer.rs` → `sweep`); `None` for
/// the crate roots.
fn owner(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

#[test]
fn every_module_names_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();

    let mut problems = Vec::new();
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in &files {
        let Some(from) = owner(&src, file) else { continue };
        let Some(from_floor) = floor(&from) else {
            problems.push(format!("{}: module `{from}` has no floor in FLOORS", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read a source file");
        let depth = depth(&src, file);
        for (number, line) in text.lines().enumerate() {
            for to in named_modules(line, depth) {
                if to == from {
                    continue;
                }
                let Some(to_floor) = floor(to) else {
                    problems.push(format!(
                        "{}:{}: names `crate::{to}`, which has no floor",
                        file.display(),
                        number + 1
                    ));
                    continue;
                };
                edges
                    .entry((from.clone(), to.to_owned()))
                    .or_insert_with(|| format!("{}:{}", file.display(), number + 1));
                if to_floor >= from_floor {
                    problems.push(format!(
                        "{}:{}: `{from}` (floor {from_floor}) names `crate::{to}` (floor {to_floor}): arrows point down only",
                        file.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "the one-way rule is broken:\n{}", problems.join("\n"));
    // The rule has teeth only if the scan sees the arrows that exist.
    for (from, to) in [("cli", "sweep"), ("sweep", "safety"), ("safety", "suppliers"), ("suppliers", "model")] {
        assert!(edges.contains_key(&(from.to_owned(), to.to_owned())), "expected `{from}` to name `{to}`");
    }
}

#[test]
fn every_module_in_the_tree_has_a_floor_and_every_floor_a_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules: Vec<String> = files.iter().filter_map(|f| owner(&src, f)).collect();
    modules.sort();
    modules.dedup();
    let mut listed: Vec<String> = FLOORS.iter().map(|(name, _)| (*name).to_owned()).collect();
    listed.sort();
    assert_eq!(modules, listed, "FLOORS must list exactly the top-level modules of src/");
}

#[test]
fn the_scan_reads_paths_not_lookalikes() {
    let none = Vec::<&str>::new();
    assert_eq!(named_modules("use crate::store::claims::{self, Verdict};", 2), ["store"]);
    assert_eq!(named_modules("let x = crate::clock::delta(d); crate::model::Supplier::Emis", 1), ["clock", "model"]);
    assert_eq!(named_modules("pub(crate) fn f() {} // crate::sweep in a comment", 1), none);
    assert_eq!(named_modules("use other_crate::thing;", 1), none);
    // `super` reaches the crate root only with as many climbs as the file is deep.
    assert_eq!(named_modules("use super::super::sweep::Engine;", 2), ["sweep"]);
    assert_eq!(named_modules("use super::sweep::Engine;", 1), ["sweep"]);
    assert_eq!(named_modules("use super::writer::Change;", 2), none);
    assert_eq!(named_modules("use super::*;", 1), none);
    assert_eq!(named_modules("use crate::a::super::b;", 3), ["a"]);
    let src = Path::new("/x/src");
    assert_eq!(
        [
            depth(src, &src.join("sweep.rs")),
            depth(src, &src.join("sweep/mod.rs")),
            depth(src, &src.join("sweep/writer.rs"))
        ],
        [1, 1, 2]
    );
}
