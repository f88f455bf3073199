//! The config file as written, before any value is checked.

use serde::Deserialize;

/// The config file as written: every key optional, values that need more
/// than TOML's types kept as strings so a bad one is reported with its key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<Vec<String>>,
    pub(super) workers: Option<usize>,
    pub(super) queue: Option<usize>,
    pub(super) allow_dest: Option<Vec<String>>,
    pub(super) allow_clients: Option<Vec<String>>,
    pub(super) dest_ports: Option<Vec<PortSpec>>,
    pub(super) connect_ports: Option<Vec<i64>>,
    pub(super) grace: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) upstream_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) header_timeout: Option<String>,
    pub(super) tunnel_idle_timeout: Option<String>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_url_bytes: Option<usize>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_conns_per_client: Option<usize>,
    pub(super) max_tunnels: Option<usize>,
    pub(super) via_name: Option<String>,
    pub(super) log_level: Option<String>,
    pub(super) users: Option<Vec<FileUser>>,
}

/// A `[[users]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUser {
    pub(super) name: String,
    pub(super) password_hash: String,
}

/// A `dest_ports` entry: `80`, `"80"` or `"1024-65535"`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a port number or a range such as \"1024-65535\""
)]
pub(super) enum PortSpec {
    Number(i64),
    Text(String),
}

/// Parses the file's text; the message is one line naming the line number
/// and the key (toml's own message only shows it in a multi-line snippet).
pub(super) fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|err| {
        let message = err.message().trim().replace('\n', " ");
        let Some(span) = err.span() else {
            return message;
        };
        let start = span.start.min(text.len());
        let line_no = text.as_bytes()[..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        let line_end = text
            .get(start..)
            .and_then(|rest| rest.find('\n'))
            .map_or(text.len(), |i| start + i);
        // The key is on the error's line or, inside a multi-line array, above it.
        let through_line = text.get(..line_end).unwrap_or(text);
        match through_line.lines().rev().find_map(key_of_line) {
            Some(key) => format!("line {line_no}, key {key}: {message}"),
            None => format!("line {line_no}: {message}"),
        }
    })
}

/// The key a `key = value` line sets, if the line starts one.
pub(super) fn key_of_line(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let is_bare_key = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    is_bare_key.then_some(key)
}
