//! The layers of a configuration: the defaults, the config file's table,
//! and the flags given (a TOML table too) laid over it key by key. Each key
//! is read on its own first, so that one pass finds every problem, each at
//! its line or flag; then the whole table is read at once, and the rules
//! between keys are checked.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::keys::{keys, nearest};
use super::{
    ConfigError, Origin, Problem, ServeConfig, default_conns_per_client, default_max_tunnels,
    default_max_url_bytes, default_queue,
};

/// Longest value quoted back in a message.
const MAX_SHOWN: usize = 80;

/// Settings given as command-line flags, keyed like the config file.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// A TOML document with one key per flag given.
    toml: String,
    /// The flag that sets each key, such as `--allow-client` for `allow_clients`.
    names: BTreeMap<String, String>,
}

impl Flags {
    /// The flags in `given` (a struct whose fields are named like the keys,
    /// serializing only the flags that were given), with the flag name of
    /// each key.
    ///
    /// # Errors
    /// When a value has no TOML form (the flag parsers rule that out).
    pub fn new(
        given: &impl Serialize,
        names: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Flags, ConfigError> {
        let toml = toml::to_string(given).map_err(|err| {
            invalid(
                Origin::Flag("the command line".to_string()),
                &format!("a value cannot be used as a setting ({err})"),
            )
        })?;
        Ok(Flags {
            toml,
            names: names.into_iter().collect(),
        })
    }

    fn name(&self, key: &str) -> String {
        self.names
            .get(key)
            .cloned()
            .unwrap_or_else(|| format!("--{}", key.replace('_', "-")))
    }
}

/// Where the text of each layer is, to turn positions into lines and values.
struct Sources<'a> {
    path: &'a Path,
    file: &'a str,
    flags: &'a Flags,
    /// Keys set by a flag (the rest of the table came from the file).
    flag_keys: Vec<String>,
}

impl Sources<'_> {
    fn is_flag(&self, key: &str) -> bool {
        self.flag_keys.iter().any(|flag_key| flag_key == key)
    }

    fn line(&self, at: &Range<usize>) -> usize {
        let before = self.file.get(..at.start.min(self.file.len())).unwrap_or("");
        before.matches('\n').count() + 1
    }

    /// Where `key` was set, `at` being a position in its layer's text.
    fn origin(&self, key: &str, at: &Range<usize>) -> Origin {
        if self.is_flag(key) {
            Origin::Flag(self.flags.name(key))
        } else {
            Origin::File {
                path: self.path.to_path_buf(),
                line: self.line(at),
            }
        }
    }

    /// The line of the last table header (`[...]`) of the file before
    /// line `line`, if any.
    fn header_above(&self, line: usize) -> Option<usize> {
        let before: Vec<&str> = self.file.lines().take(line.saturating_sub(1)).collect();
        before
            .iter()
            .rposition(|text| text.trim_start().starts_with('['))
            .map(|i| i + 1)
    }

    /// The parser's "duplicate key" for the key at `at`, with its name and
    /// the line that set it first; `None` for any other message.
    fn duplicate(&self, message: &str, at: &Range<usize>) -> Option<String> {
        if message.trim() != "duplicate key" {
            return None;
        }
        let name = self.file.get(at.clone())?.trim().trim_matches('"');
        if name.is_empty() || name.contains(char::is_whitespace) {
            return None;
        }
        let before: Vec<&str> = self.file.lines().take(self.line(at) - 1).collect();
        // In the same table: from its header, or from the top.
        let table = before
            .iter()
            .rposition(|text| text.trim_start().starts_with('['))
            .map_or(0, |i| i + 1);
        let first = before[table..]
            .iter()
            .position(|text| {
                text.trim_start()
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map(|i| format!(", first on line {}", table + i + 1))
            .unwrap_or_default();
        Some(format!("{name} is set twice{first}; keep one"))
    }

    /// The line of a `[` that a later line shows was never closed: a line
    /// that sets a key (`workers = 8`) or heads a table (`[[users]]`)
    /// while the list is still open. Comments are no part of it.
    fn unclosed_array(&self) -> Option<usize> {
        let mut balance = 0;
        let mut opened = 0;
        for (i, text) in self.file.lines().enumerate() {
            let code = without_comment(text);
            let trimmed = code.trim();
            if trimmed.is_empty() {
                continue;
            }
            if balance > 0 {
                let sets_key = trimmed.split_once('=').is_some_and(|(key, _)| {
                    !key.trim().is_empty() && key.trim().chars().all(is_bare_key_char)
                });
                let heads_table = trimmed.starts_with('[')
                    && trimmed.ends_with(']')
                    && trimmed
                        .trim_matches(['[', ']'])
                        .chars()
                        .all(|c| is_bare_key_char(c) || c == '.');
                if sets_key || heads_table {
                    return Some(opened);
                }
            }
            let before = balance;
            // Outside a list, only a value opens one: a line that starts
            // with `[` is a table's header.
            let value = if balance > 0 {
                code
            } else {
                code.split_once('=').map_or("", |(_, value)| value)
            };
            balance += bracket_balance(value);
            if before <= 0 && balance > 0 {
                opened = i + 1;
            }
            balance = balance.max(0);
        }
        None
    }

    /// Whether the line of `at` sets a list of ports (where `1024-65535`
    /// unquoted reads as a date to TOML).
    fn sets_ports(&self, at: &Range<usize>) -> bool {
        self.file
            .lines()
            .nth(self.line(at) - 1)
            .and_then(|text| text.split_once('='))
            .is_some_and(|(key, _)| key.trim().ends_with("_ports"))
    }

    /// A hint for a syntax error on a `key = value` line whose value is
    /// bare text (`listen = 127.0.0.1:8080`): TOML wants text quoted.
    fn unquoted(&self, at: &Range<usize>) -> Option<String> {
        let text = self.file.lines().nth(self.line(at) - 1)?;
        let (key, value) = text.split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        let quoted_or_structured = value.starts_with(['"', '\'', '[', '{']);
        if key.is_empty()
            || !key.chars().all(is_bare_key_char)
            || value.is_empty()
            || quoted_or_structured
        {
            return None;
        }
        // Where quotes alone would not make it valid, no example.
        let plain = |c: char| !matches!(c, '"' | '\\' | '\'' | '#');
        if value.len() > MAX_SHOWN || !value.chars().all(plain) {
            return Some("text values are quoted in TOML".to_string());
        }
        Some(format!(
            "text values are quoted in TOML: {key} = \"{value}\""
        ))
    }

    /// Whether the line of `at` is `key =` with no value after it (the
    /// parser then speaks of quotes, which misleads).
    fn value_missing(&self, at: &Range<usize>) -> bool {
        let Some(text) = self.file.lines().nth(self.line(at) - 1) else {
            return false;
        };
        let Some((key, value)) = text.split_once('=') else {
            return false;
        };
        let value = value.split('#').next().unwrap_or_default();
        !key.trim().is_empty() && value.trim().is_empty()
    }

    /// The value at `at` as written, if it fits on a line.
    fn shown(&self, key: &str, at: &Range<usize>) -> Option<String> {
        let (text, is_flag) = if self.is_flag(key) {
            (self.flags.toml.as_str(), true)
        } else {
            (self.file, false)
        };
        let shown = text.get(at.clone())?.trim();
        if shown.is_empty() || shown.len() > MAX_SHOWN || shown.contains('\n') {
            return None;
        }
        // A flag's value is shown as it was typed, without TOML's quotes.
        let unquoted = shown.strip_prefix('"').and_then(|s| s.strip_suffix('"'));
        Some(match (is_flag, unquoted) {
            (true, Some(inner)) => inner.to_string(),
            _ => shown.to_string(),
        })
    }

    /// A problem `err` found in the value of `key`.
    fn value_problem(
        &self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
        err: &toml::de::Error,
    ) -> Problem {
        let name = key.get_ref().as_ref();
        let at = key_named_in(value.get_ref(), err.message())
            .or_else(|| err.span())
            .unwrap_or_else(|| value.span());
        // Tables (`[[users]]`) are not quoted back: they hold password hashes.
        let shown = if holds_table(value.get_ref()) {
            None
        } else {
            self.shown(name, &at)
        };
        Problem {
            origin: self.origin(name, &at),
            key: Some(name.to_string()),
            value: shown,
            reason: one_line(err.message()),
        }
    }
}

/// Where, inside `value`'s tables (`[[users]]`), the key is that `message`
/// is about (one unknown, misplaced or not text), so that the problem is
/// shown at its own line rather than at the table's header.
fn key_named_in(value: &DeValue<'_>, message: &str) -> Option<Range<usize>> {
    let tables: Vec<&DeTable<'_>> = match value {
        DeValue::Table(table) => vec![table],
        DeValue::Array(items) => items
            .iter()
            .filter_map(|item| match item.get_ref() {
                DeValue::Table(table) => Some(table),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    tables
        .into_iter()
        .flat_map(|table| table.iter())
        .map(|(key, _)| key)
        .find(|key| {
            let key = key.get_ref().as_ref();
            // The forms of `value::users`: `unknown key "x" in ...`,
            // `user "a": password_hash: ...`, `name in ...`, `x is set ...`.
            message.contains(&format!("unknown key {key:?}"))
                || message.contains(&format!(": {key}:"))
                || message.starts_with(&format!("{key} "))
        })
        .map(Spanned::span)
}

/// Reads the flags over the file (`path` and its text) over the defaults.
pub(super) fn resolve(
    file: Option<(&Path, &str)>,
    flags: &Flags,
) -> Result<ServeConfig, ConfigError> {
    let (path, text) = file.unwrap_or((Path::new("-"), ""));
    let (file_table, syntax_errors) = DeTable::parse_recoverable(text);
    let flag_table = DeTable::parse(&flags.toml)
        .map_err(|err| invalid(Origin::Flag("the command line".to_string()), err.message()))?;
    let mut table = file_table.into_inner();
    let mut sources = Sources {
        path,
        file: text,
        flags,
        flag_keys: Vec::new(),
    };
    // The file's values that flags override: still checked, so that a
    // file that only works under its flags says so now, not the day it is
    // run without them (as a service unit runs it).
    let mut overridden = DeTable::new();
    for (key, value) in flag_table.into_inner() {
        sources.flag_keys.push(key.get_ref().to_string());
        if let Some(old) = table.insert(key.clone(), value) {
            overridden.insert(key, old);
        }
    }
    let file_only = Sources {
        path,
        file: text,
        flags,
        flag_keys: Vec::new(),
    };

    let mut problems = syntax_problems(&sources, &syntax_errors);
    problems.extend(problems_of_each_key(&sources, &table, &syntax_errors));
    problems.extend(problems_of_each_key(
        &file_only,
        &overridden,
        &syntax_errors,
    ));
    if !problems.is_empty() {
        sort(&mut problems);
        return Err(ConfigError::Invalid(problems));
    }
    let given: Vec<(String, Range<usize>)> = table
        .iter()
        .map(|(key, value)| (key.get_ref().to_string(), value.span()))
        .collect();
    let mut config = read(table).map_err(|err| invalid(Origin::Default, err.message()))?;
    // Unless set, the queue follows the resolved worker count, the
    // per-client limit what the pool can take at once, and the limits
    // bounded by others stay within them.
    let is_given = |name: &str| given.iter().any(|(key, _)| key == name);
    if !is_given("max_tunnels") {
        config.max_tunnels = default_max_tunnels(config.max_connections);
    }
    if !is_given("max_url_bytes") {
        config.max_url_bytes = default_max_url_bytes(config.max_header_bytes);
    }
    if !is_given("queue") {
        config.queue = default_queue(config.workers);
    }
    if !is_given("max_conns_per_client") {
        config.max_conns_per_client =
            default_conns_per_client(config.workers, config.queue, config.max_connections);
    }
    let mut problems = problems_between_keys(&sources, &config, &given);
    if problems.is_empty() {
        Ok(config)
    } else {
        sort(&mut problems);
        Err(ConfigError::Invalid(problems))
    }
}

/// The quotes of a line of TOML: `Some(quote)` while inside one, for each
/// character in turn (a backslash escapes the next inside `"`).
fn quoting(text: &str) -> impl Iterator<Item = (usize, char, bool)> + '_ {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    text.char_indices().map(move |(at, c)| {
        let inside = quote.is_some();
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None => {}
        }
        (at, c, inside || quote.is_some())
    })
}

/// A line of TOML without its comment.
fn without_comment(text: &str) -> &str {
    let cut = quoting(text)
        .find(|&(_, c, quoted)| c == '#' && !quoted)
        .map_or(text.len(), |(at, _, _)| at);
    &text[..cut]
}

/// Whether `c` may be in a bare TOML key (`max_url_bytes`).
fn is_bare_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// `[` less `]` on a line of TOML, outside quotes and comments.
fn bracket_balance(text: &str) -> i32 {
    quoting(without_comment(text))
        .filter(|&(_, _, quoted)| !quoted)
        .map(|(_, c, _)| match c {
            '[' => 1,
            ']' => -1,
            _ => 0,
        })
        .sum()
}

/// The file's syntax errors, the first of each line only: the parser's
/// recovery from one mistake often reports a few more on the same line.
/// An array left open is reported once, at its `[`, not on each line the
/// parser then read into it.
fn syntax_problems(sources: &Sources<'_>, errors: &[toml::de::Error]) -> Vec<Problem> {
    let mut problems: Vec<Problem> = Vec::new();
    // Claimed only when the parser's first complaint is in or after it.
    let first_error = errors
        .iter()
        .map(|err| sources.line(&err.span().unwrap_or(0..0)))
        .min();
    let unclosed = sources
        .unclosed_array()
        .filter(|line| first_error.is_some_and(|first| first >= *line));
    if let Some(line) = unclosed {
        problems.push(Problem {
            origin: Origin::File {
                path: sources.path.to_path_buf(),
                line,
            },
            key: None,
            value: None,
            reason: "this `[` is never closed: a `]` is missing at the end of the list".to_string(),
        });
    }
    for err in errors {
        let at = err.span().unwrap_or(0..0);
        if let Some(line) = unclosed {
            // What the parser found from there on may all come of it.
            if sources.line(&at) >= line {
                continue;
            }
        }
        let origin = sources.origin("", &at);
        if !problems.iter().any(|p| p.origin == origin) {
            let reason = match sources.duplicate(err.message(), &at) {
                Some(said) => said,
                None if sources.value_missing(&at) => {
                    "no value after `=`: give one, or comment the line out with `#`".to_string()
                }
                None if err.message().contains("invalid date") && sources.sets_ports(&at) => {
                    format!(
                        "{}; a range of ports is quoted in TOML: \"1024-65535\"",
                        one_line(err.message())
                    )
                }
                None => match sources.unquoted(&at) {
                    // The parser says so itself for some values, not all.
                    Some(hint) if !err.message().contains("quoted") => {
                        format!("{}; {hint}", one_line(err.message()))
                    }
                    _ => one_line(err.message()),
                },
            };
            problems.push(Problem {
                origin,
                key: None,
                value: None,
                reason,
            });
        }
    }
    problems
}

/// Each key read on its own: unknown keys, and values that are not valid.
/// A value whose syntax is broken has been reported already.
fn problems_of_each_key(
    sources: &Sources<'_>,
    table: &DeTable<'_>,
    syntax_errors: &[toml::de::Error],
) -> Vec<Problem> {
    let broken: Vec<Range<usize>> = syntax_errors
        .iter()
        .map(|err| err.span().unwrap_or(0..0))
        .collect();
    let broken_lines: Vec<usize> = broken.iter().map(|at| sources.line(at)).collect();
    let mut problems = Vec::new();
    for (key, value) in table {
        let name = key.get_ref().as_ref();
        if !keys().contains(&name) {
            // Under a table header that is itself broken, the key was
            // meant for that table: the header is the problem to fix.
            let under_broken_header = !sources.is_flag(name)
                && sources
                    .header_above(sources.line(&key.span()))
                    .is_some_and(|header| broken_lines.contains(&header));
            if !under_broken_header {
                problems.push(unknown_key(name, sources.origin(name, &key.span())));
            }
            continue;
        }
        let span = value.span();
        let in_file = !sources.is_flag(name);
        if in_file
            && broken
                .iter()
                .any(|at| span.start <= at.start && at.start <= span.end)
        {
            continue;
        }
        let not_broken = |at: &Range<usize>| !(in_file && broken_lines.contains(&sources.line(at)));
        // Each element of a list on its own, so that every bad one (each
        // `[[users]]` table) is reported, at its own line.
        if let DeValue::Array(items) = value.get_ref()
            && items.len() > 1
        {
            let each: Vec<Problem> = items
                .iter()
                .filter_map(|item| {
                    let mut list = DeArray::new();
                    list.push(item.clone());
                    let mut one = DeTable::new();
                    one.insert(key.clone(), Spanned::new(item.span(), DeValue::Array(list)));
                    let err = read(one).err()?;
                    not_broken(&err.span().unwrap_or(item.span()))
                        .then(|| sources.value_problem(key, item, &err))
                })
                .collect();
            if !each.is_empty() {
                problems.extend(each);
                continue;
            }
        }
        let mut one = DeTable::new();
        one.insert(key.clone(), value.clone());
        if let Err(err) = read(one)
            && not_broken(&err.span().unwrap_or(span))
        {
            problems.push(sources.value_problem(key, value, &err));
        }
    }
    problems
}

/// The rules between keys, blamed on the key at fault where it was given
/// (or on its default).
fn problems_between_keys(
    sources: &Sources<'_>,
    config: &ServeConfig,
    given: &[(String, Range<usize>)],
) -> Vec<Problem> {
    let resolved = config.to_table().unwrap_or_default();
    config
        .rules_between_keys()
        .into_iter()
        .map(|(key, reason)| {
            let (origin, value) = match given.iter().find(|(given, _)| given == key) {
                Some((_, at)) => (sources.origin(key, at), sources.shown(key, at)),
                None => (Origin::Default, resolved.get(key).map(ToString::to_string)),
            };
            Problem {
                origin,
                key: Some(key.to_string()),
                value,
                reason,
            }
        })
        .collect()
}

fn invalid(origin: Origin, message: &str) -> ConfigError {
    ConfigError::Invalid(vec![Problem {
        origin,
        key: None,
        value: None,
        reason: one_line(message),
    }])
}

/// In the order a user reads them: the file's by line, then the flags',
/// then contradicted defaults.
fn sort(problems: &mut [Problem]) {
    problems.sort_by_key(|problem| match &problem.origin {
        Origin::File { line, .. } => (0, *line),
        Origin::Flag(_) => (1, 0),
        Origin::Default => (2, 0),
    });
}

/// Reads a `ServeConfig` from `table`, the missing keys at their defaults.
fn read(table: DeTable<'_>) -> Result<ServeConfig, toml::de::Error> {
    ServeConfig::deserialize(toml::de::Deserializer::from(Spanned::new(0..0, table)))
}

fn unknown_key(name: &str, origin: Origin) -> Problem {
    let reason = match nearest(name) {
        Some(key) => format!("unknown key {name:?}; did you mean {key:?}?"),
        None => format!("unknown key {name:?}; the keys are {}", keys().join(", ")),
    };
    Problem {
        origin,
        key: None,
        value: None,
        reason,
    }
}

/// Whether `value` is a table or a list holding one.
fn holds_table(value: &DeValue<'_>) -> bool {
    match value {
        DeValue::Table(_) => true,
        DeValue::Array(items) => items.iter().any(|item| holds_table(item.get_ref())),
        _ => false,
    }
}

/// A parser's message on one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
