//! The optional `KEY=VALUE` config file (`--config`): parsed into the same map as the
//! environment, with line numbers (never line text) in its messages.

use std::collections::HashMap;

use super::KNOWN_VARIABLES;
use super::reader::is_ours;

/// Parses a config file's text into variables. `source` names the file in messages.
/// Lines are `KEY=VALUE` (an `export ` prefix is allowed, and one pair of matching quotes
/// around the value is removed); blank lines and lines starting with `#` are skipped.
/// There are no trailing comments: `#` may be part of a value. Messages give line numbers,
/// never line text, because a line may hold a secret.
pub fn parse_config_file(text: &str, source: &str) -> Result<HashMap<String, String>, Vec<String>> {
    let mut vars = HashMap::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((name, value)) = line.split_once('=') else {
            problems.push(format!("{source} line {number}: expected KEY=VALUE"));
            continue;
        };
        let name = name.trim();
        if !is_variable_name(name) {
            problems.push(format!("{source} line {number}: the name before '=' is not a variable name"));
            continue;
        }
        if name == "IM1_CONFIG" {
            problems.push(format!("{source} line {number}: IM1_CONFIG cannot be set inside a config file"));
            continue;
        }
        // IM1_* names are judged (with suggestions) with the merged variables; anything else
        // in a file written for us is a typo, since the file feeds nothing but us.
        if !is_ours(name) && !KNOWN_VARIABLES.contains(&name) {
            problems.push(format!("{source} line {number}: {name} is not a known setting"));
            continue;
        }
        if let Some(first) = first_line.get(name) {
            problems.push(format!("{source} line {number}: {name} is already set on line {first}"));
            continue;
        }
        first_line.insert(name.to_owned(), number);
        vars.insert(name.to_owned(), unquote(value.trim()).to_owned());
    }
    if problems.is_empty() { Ok(vars) } else { Err(problems) }
}

pub(super) fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote).and_then(|v| v.strip_suffix(quote)) {
            return inner;
        }
    }
    value
}

pub(super) fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}
