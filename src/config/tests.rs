use std::path::Path;

use super::*;

const PATH: &str = "fetchproxy.toml";

/// Flags given as `text`, a TOML table of keys (what `ServeArgs::flags`
/// makes of the command line).
fn flags(text: &str) -> Flags {
    let table: toml::Table = toml::from_str(text).expect("test flags are TOML");
    Flags::new(&table, []).expect("flags")
}

fn resolve(file: &str, given: &str) -> Result<ServeConfig, ConfigError> {
    layers::resolve(Some((Path::new(PATH), file)), &flags(given))
}

fn from_file(text: &str) -> Result<ServeConfig, ConfigError> {
    resolve(text, "")
}

fn problems(result: Result<ServeConfig, ConfigError>) -> Vec<Problem> {
    match result {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

/// The one problem `text` has, as the user reads it.
fn message(text: &str) -> String {
    let found = problems(from_file(text));
    assert_eq!(found.len(), 1, "{found:#?}");
    found[0].to_string()
}

/// The example file with its default lines (`# key = ...`, not marked
/// `# example`) uncommented, lists spread over lines included.
fn example_defaults() -> String {
    let example = include_str!("../../config.example.toml");
    let mut uncommented = String::new();
    let mut in_list = false;
    for line in example.lines() {
        let body = line.strip_prefix("# ").unwrap_or("");
        let starts_default = body
            .split_once(" = ")
            .is_some_and(|(key, _)| keys().contains(&key))
            && !body.ends_with("# example");
        if starts_default || in_list {
            uncommented.push_str(body);
            uncommented.push('\n');
            in_list = if starts_default {
                body.ends_with('[')
            } else {
                body.trim() != "]"
            };
        }
    }
    uncommented
}

#[test]
fn example_file_documents_exactly_the_defaults() {
    let defaults = example_defaults();
    let config = from_file(&defaults).unwrap_or_else(|err| panic!("{err}\n{defaults}"));
    assert_eq!(config, ServeConfig::default());
    // Everything but the keys without a fixed default is there, uncommented.
    let table: toml::Table = toml::from_str(&defaults).expect("TOML");
    for key in keys() {
        let unset_by_default = [
            "max_body_bytes",
            "via_name",
            "upstream_ca_file",
            "access_log",
            "cache_dir",
            "users",
        ];
        assert_eq!(
            table.contains_key(*key),
            !unset_by_default.contains(key),
            "{key}"
        );
    }
}

#[test]
fn example_file_documents_every_key_and_sets_none() {
    let example = include_str!("../../config.example.toml");
    for key in keys() {
        if *key != "users" {
            assert!(example.contains(&format!("\n# {key} = ")), "{key}");
        }
    }
    for line in ["# [[users]]", "# name = ", "# password_hash = "] {
        assert!(example.contains(line), "{line}");
    }
    // A copy of the file sets nothing: every default stays a default.
    let table: toml::Table = toml::from_str(example).expect("TOML");
    assert!(table.is_empty(), "{table:?}");
}

#[test]
fn example_values_in_the_example_file_are_valid() {
    let example = include_str!("../../config.example.toml");
    let examples: Vec<&str> = example
        .lines()
        .filter(|line| line.ends_with("# example"))
        .filter_map(|line| line.strip_prefix("# "))
        .collect();
    assert!(examples.len() >= 4, "{examples:?}");
    for line in examples {
        from_file(line).unwrap_or_else(|err| panic!("{line}: {err}"));
    }
}

#[test]
fn defaults_match_the_design() {
    let config = ServeConfig::default();
    assert_eq!(config.workers.get(), 512);
    assert_eq!(config.queue.get(), 8192);
    // One client may use what the pool can take at once.
    assert_eq!(config.max_conns_per_client, 512 + 8192);
    assert_eq!(config.listen, vec!["127.0.0.1:8080".parse().expect("addr")]);
    assert_eq!(config.max_header_bytes, 65536);
    assert_eq!(config.tunnel_idle_timeout, Duration::from_secs(300));
    assert!(text::is_token(&config.via_name), "{}", config.via_name);
    assert_eq!(config.access_log, None);
    assert_eq!(config.access_log_format, AccessLogFormat::Fetchproxy);
    assert_eq!(from_file("").expect("empty file"), config);
}

#[test]
fn flags_override_file_which_overrides_defaults() {
    let file =
        "workers = 8\ngrace = \"1m\"\nlisten = [\"127.0.0.1:9000\"]\nidle_timeout = \"5s\"\n";
    let only_file = from_file(file).expect("valid");
    assert_eq!(only_file.workers.get(), 8);
    assert_eq!(
        only_file.queue.get(),
        16 * 8,
        "queue follows the file's workers"
    );
    assert_eq!(only_file.grace, Duration::from_secs(60));
    assert_eq!(only_file.idle_timeout, Duration::from_secs(5));
    assert_eq!(only_file.connect_timeout, Duration::from_secs(10));

    let given = "workers = 2\nlisten = [\"[::1]:0\"]\nidle_timeout = \"1s\"\n";
    let config = resolve(file, given).expect("valid");
    assert_eq!(config.workers.get(), 2);
    assert_eq!(
        config.queue.get(),
        16 * 2,
        "queue follows the flag's workers"
    );
    assert_eq!(config.listen, vec!["[::1]:0".parse().expect("addr")]);
    assert_eq!(config.idle_timeout, Duration::from_secs(1));
    assert_eq!(config.grace, Duration::from_secs(60), "file still applies");
}

#[test]
fn an_explicit_queue_wins_over_sixteen_per_worker() {
    let config = resolve("workers = 8\n", "queue = 5").expect("valid");
    assert_eq!(config.queue.get(), 5);
    let config = from_file("workers = 8\nqueue = 3\n").expect("valid");
    assert_eq!(config.queue.get(), 3);
}

/// Issue 14: a typo'd key and a bad value are both reported, each with
/// its line, the typo with the key that was meant.
#[test]
fn every_problem_is_reported_at_once_with_its_line() {
    let found = problems(from_file(
        "workrs = 4\n\nqueue = \"lots\"\nlisten = [\n  \"127.0.0.1:80\",\n  \"nonsense\",\n]\n",
    ));
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "fetchproxy.toml:1: unknown key \"workrs\"; did you mean \"workers\"?",
            "fetchproxy.toml:3: queue = \"lots\": expected a whole number from 1 to 1000000",
            "fetchproxy.toml:6: listen = \"nonsense\": expected PORT, IP:PORT, [IPv6]:PORT or HOST:PORT, such as 3128, 0.0.0.0:3128, [::1]:3128 or localhost:3128",
        ]
    );
    let err = ConfigError::Invalid(found);
    assert!(
        err.to_string()
            .starts_with("3 problems in the configuration:\n  fetchproxy.toml:1: "),
        "{err}"
    );
    assert_eq!(err.one_line().lines().count(), 1, "{}", err.one_line());
}

#[test]
fn an_unknown_key_far_from_any_lists_them_all() {
    let text = message("colour = \"blue\"\n");
    assert!(
        text.starts_with(
            "fetchproxy.toml:1: unknown key \"colour\"; the keys are listen, workers,"
        ),
        "{text}"
    );
    assert!(text.ends_with("purge_clients, users"), "{text}");
}

#[test]
fn a_key_set_twice_is_named_with_the_line_that_set_it_first() {
    assert_eq!(
        message("workers = 8\nqueue = 100\nworkers = 9\n"),
        "fetchproxy.toml:3: workers is set twice, first on line 1; keep one"
    );
    // The first of a [[users]] block's own, not of the block above it.
    let users = format!(
        "[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n\n\
         [[users]]\npassword_hash = \"{HASH}\"\nname = \"b\"\nname = \"c\"\n"
    );
    assert_eq!(
        message(&users),
        "fetchproxy.toml:8: name is set twice, first on line 7; keep one"
    );
}

#[test]
fn a_key_without_a_value_is_named_so() {
    for text in ["workers = \n", "queue = 8\nworkers =   # later\n"] {
        let line = text.lines().count();
        assert_eq!(
            message(text),
            format!(
                "fetchproxy.toml:{line}: no value after `=`: give one, or comment the line out \
                 with `#`"
            ),
            "{text:?}"
        );
    }
}

#[test]
fn a_bare_text_value_is_shown_quoted() {
    assert_eq!(
        message("workers = 4\nlisten = 127.0.0.1:8092\n"),
        "fetchproxy.toml:2: invalid float, expected nothing; \
         text values are quoted in TOML: listen = \"127.0.0.1:8092\""
    );
    // Where the parser says so itself, it is not said twice; numbers,
    // quoted text and lists get no hint.
    let text = message("via_name = my proxy\n");
    assert_eq!(text.matches("quoted").count(), 1, "{text}");
    // Where quotes alone would not make it valid, no example.
    for odd in ["via_name = my \"proxy\"\n", "allow_dest = 10.0.0.1\\8\n"] {
        let text = message(odd);
        assert!(
            text.ends_with("text values are quoted in TOML"),
            "{odd:?}: {text}"
        );
    }
    for fine in [
        "workers = 4x\n",
        "listen = [127.0.0.1]\n",
        "via_name = \"a\n",
    ] {
        let text = message(fine);
        assert!(!text.contains("quoted in TOML"), "{fine:?}: {text}");
    }
}

#[test]
fn keys_under_a_broken_table_header_are_not_called_unknown() {
    // The header is the mistake: its keys were meant for that table.
    assert_eq!(
        message("workers = 8\n[users\nname = \"a\"\n"),
        "fetchproxy.toml:2: unclosed table, expected `]`"
    );
    // Above the broken header, an unknown key still is one.
    let found = problems(from_file("colour = 1\n[users\nname = \"a\"\n"));
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("fetchproxy.toml:1: unknown key \"colour\""),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("fetchproxy.toml:2: unclosed table"),
        "{lines:#?}"
    );
}

#[test]
fn no_message_speaks_rust() {
    // Every key given a value of a wrong type says what it expected in words.
    for key in keys() {
        for wrong in ["true", "1.5", "\"x y\"", "{ a = 1 }"] {
            let text = format!("{key} = {wrong}\n");
            let Err(err) = from_file(&text) else {
                continue;
            };
            let shown = err.to_string();
            for jargon in [
                "usize",
                "u64",
                "u16",
                "i64",
                "invalid type",
                "variant",
                "NonZero",
                "struct",
            ] {
                assert!(!shown.contains(jargon), "{text}: {shown}");
            }
            assert!(shown.contains("expected"), "{text}: {shown}");
            assert!(
                shown.contains(&format!("{PATH}:1: {key}")),
                "{text}: {shown}"
            );
        }
    }
}

#[test]
fn bad_values_name_the_key_or_the_flag_and_the_value() {
    assert_eq!(
        message("grace = \"30 parsecs\"\n"),
        "fetchproxy.toml:1: grace = \"30 parsecs\": expected a duration such as 30s, 1m 30s or 250ms (unknown unit \"parsecs\")"
    );
    assert_eq!(
        message("connect_timeout = 10\n"),
        "fetchproxy.toml:1: connect_timeout = 10: expected a duration such as 30s, 1m 30s or 250ms (10 has no unit: write 10s for seconds, or 10ms)"
    );
    assert_eq!(
        message("grace = \"30 secs please\"\n"),
        "fetchproxy.toml:1: grace = \"30 secs please\": expected a duration such as 30s, 1m 30s or 250ms (a number was expected at \"please\")"
    );
    assert_eq!(
        message("\nconnect_timeout = \"0s\"\n"),
        "fetchproxy.toml:2: connect_timeout = \"0s\": expected a duration of more than zero, such as 30s, 1m 30s or 250ms"
    );
    let flag = problems(resolve("workers = 4\n", "workers = 0"));
    assert_eq!(
        flag[0].to_string(),
        "--workers 0: expected a whole number from 1 to 4096"
    );
    let flag = problems(resolve("", "header_timeout = \"0s\""));
    assert_eq!(flag[0].origin, Origin::Flag("--header-timeout".into()));
    assert_eq!(
        message("workers = 5000\n"),
        "fetchproxy.toml:1: workers = 5000: expected a whole number from 1 to 4096"
    );
    assert!(message("queue = 0\n").starts_with("fetchproxy.toml:1: queue = 0: "));
    assert_eq!(
        message("log_level = \"loud\"\n"),
        "fetchproxy.toml:1: log_level = \"loud\": expected off, error, warn, info, debug or trace"
    );
    assert_eq!(
        message("access_log_format = \"apache\"\n"),
        "fetchproxy.toml:1: access_log_format = \"apache\": expected fetchproxy, squid or combined"
    );
    assert!(message("via_name = \"two words\"\n").contains("an HTTP token"));
    assert_eq!(
        message("access_log_own_pages = \"none\"\n"),
        "fetchproxy.toml:1: access_log_own_pages = \"none\": expected all or errors"
    );
}

#[test]
fn a_bad_list_element_is_reported_at_its_own_line() {
    assert_eq!(
        message("allow_dest = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n"),
        "fetchproxy.toml:3: allow_dest = \"10.0.0.0/33\": expected an address or a range such as 127.0.0.1, 10.0.0.0/8, ::1 or fc00::/7; the prefix length /33 is over 32, the most for this address"
    );
    assert_eq!(
        message("allow_clients = []\n"),
        "fetchproxy.toml:1: allow_clients = []: expected at least one address range"
    );
    assert_eq!(
        message("listen = []\n"),
        "fetchproxy.toml:1: listen = []: expected at least one address to listen on"
    );
    for bad in [
        "dest_ports = [0]",
        "dest_ports = [70000]",
        "dest_ports = [\"200-100\"]",
        "dest_ports = []",
    ] {
        assert!(
            message(bad).starts_with("fetchproxy.toml:1: dest_ports = "),
            "{bad}"
        );
    }
    assert!(message("connect_ports = [0]").contains("expected a port number from 1 to 65535"));
}

/// Each at the line of the key at fault, in its own table.
#[test]
fn every_bad_user_is_reported_at_its_own_table() {
    let file = format!(
        "[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n\n\
         [[users]]\nname = \"b\"\npassword = \"x\"\n\n\
         [[users]]\nname = \"c\"\npassword_hash = \"plain\"\n"
    );
    let found: Vec<String> = problems(from_file(&file))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("fetchproxy.toml:7: users: unknown key \"password\""),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("fetchproxy.toml:11: users: user \"c\": password_hash:"),
        "{found:#?}"
    );
    assert!(!found[1].contains("plain"), "{found:#?}");
}

#[test]
fn a_bad_file_value_is_reported_even_when_a_flag_overrides_it() {
    let found = problems(resolve(
        "workers = 4\nlisten = []\n",
        "listen = [\"127.0.0.1:0\"]",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0].to_string(),
        "fetchproxy.toml:2: listen = []: expected at least one address to listen on"
    );
    assert!(resolve("listen = [\"127.0.0.1:9\"]\n", "listen = [\"127.0.0.1:0\"]").is_ok());
}

#[test]
fn a_broken_line_is_reported_once() {
    let found = problems(from_file("workers = [\nqueue = 3\n"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0].to_string(),
        "fetchproxy.toml:1: this `[` is never closed: a `]` is missing at the end of the list"
    );
    let found = problems(from_file("workers = 4\nqueue = \n\ngrace = \"1x\"\n"));
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(shown[0].starts_with("fetchproxy.toml:2: "), "{shown:?}");
    assert!(
        shown[1].starts_with("fetchproxy.toml:4: grace = \"1x\""),
        "{shown:?}"
    );
}

/// Issue 14: `--allow-dest 127.0.0.1` and the keys take a bare address.
#[test]
fn bare_addresses_are_ranges_of_one() {
    let config = resolve(
        "allow_dest = [\"127.0.0.1\", \"::1\"]\n",
        "allow_clients = [\"10.1.2.3\"]",
    )
    .expect("valid");
    let nets: Vec<String> = config.allow_dest.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["127.0.0.1/32", "::1/128"]);
    assert_eq!(config.allow_clients[0].to_string(), "10.1.2.3/32");
}

/// A name where a range is expected gets advice: the addresses it stands
/// for, or for `localhost` the loopback addresses.
#[test]
fn a_name_given_as_a_range_is_told_what_to_give() {
    use crate::config::text::parse_range;
    let localhost = parse_range("localhost").expect_err("a name");
    assert!(
        localhost.ends_with("for localhost give 127.0.0.1 and ::1"),
        "{localhost}"
    );
    let name = parse_range("db.internal").expect_err("a name");
    assert!(name.ends_with("give the addresses it stands for"), "{name}");
    let garbage = parse_range("10.0.0.0/33").expect_err("no range");
    assert!(!garbage.contains("name"), "{garbage}");
}

/// Issue 14: a bare port means 127.0.0.1, a host name every address it
/// resolves to.
#[test]
fn listen_takes_a_port_or_a_host_name() {
    let config =
        from_file("listen = [3128, \"localhost:3129\", \"127.0.0.1:3128\"]\n").expect("valid");
    assert_eq!(config.listen[0], "127.0.0.1:3128".parse().expect("addr"));
    assert!(
        config
            .listen
            .contains(&"127.0.0.1:3129".parse().expect("addr"))
    );
    assert_eq!(
        config.listen.iter().filter(|a| a.port() == 3128).count(),
        1,
        "duplicates dropped: {:?}",
        config.listen
    );
    let single = from_file("listen = \"3130\"\n").expect("a single value is a list of one");
    assert_eq!(single.listen, vec!["127.0.0.1:3130".parse().expect("addr")]);
    let text = message("listen = [\"nowhere.invalid:80\"]\n");
    assert!(
        text.starts_with("fetchproxy.toml:1: listen = \"nowhere.invalid:80\": cannot resolve"),
        "{text}"
    );
}

#[test]
fn a_list_left_open_is_named_at_its_bracket_alone() {
    assert_eq!(
        message("allow_dest = [\"127.0.0.1\"\nworkers = 8\nmax_connections = 100\n"),
        "fetchproxy.toml:1: this `[` is never closed: a `]` is missing at the end of the list"
    );
    assert_eq!(
        message(
            "workers = 8\nallow_clients = [\n  \"10.0.0.0/8\", # [a comment]\n  \"192.168.0.0/16\",\n\n[[users]]\nname = \"a\"\n"
        ),
        "fetchproxy.toml:2: this `[` is never closed: a `]` is missing at the end of the list"
    );
    // The example's commented-out lists are no lists, and a real mistake
    // below them is reported as itself.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .expect("config.example.toml");
    let broken = example.replace(
        "# dest_ports = [80, 443, \"1024-65535\"]",
        "dest_ports = [80, 443, 1024-65535]",
    );
    assert_ne!(broken, example, "the example's dest_ports line moved");
    let said = message(&broken);
    assert!(said.contains("a range of ports is quoted"), "{said}");
    // Brackets and quotes in strings and comments are not counted.
    assert_eq!(
        message("access_log = \"/var/log/a[\\\"b.log\" # [\nworkers = 8x\n"),
        "fetchproxy.toml:2: string values must be quoted, expected literal string"
    );
    // A list closed on a later line is no such mistake.
    assert!(from_file("allow_clients = [\n  \"10.0.0.0/8\", # [\n]\nworkers = 8\n").is_ok());
}

#[test]
fn an_unquoted_port_range_is_told_to_be_quoted() {
    assert_eq!(
        message("dest_ports = [80, 443, 1024-65535]\n"),
        "fetchproxy.toml:1: invalid date, expected `-` (MM-DD); a range of ports is quoted in TOML: \"1024-65535\""
    );
}

#[test]
fn byte_limits_take_sizes() {
    let config = from_file(
        "max_header_bytes = \"32KiB\"\nmax_url_bytes = 4096\nmax_body_bytes = \"10MB\"\n",
    )
    .expect("valid");
    assert_eq!(config.max_header_bytes, 32 * 1024);
    assert_eq!(config.max_url_bytes, 4096);
    assert_eq!(config.max_body_bytes, Some(10_000_000));
    assert_eq!(
        message("max_header_bytes = \"2GiB\"\n"),
        "fetchproxy.toml:1: max_header_bytes = \"2GiB\": expected a size from 1KiB to 1MiB (a number of bytes, or with a unit such as KiB or MiB)"
    );
    assert_eq!(
        message("max_body_bytes = 0\n"),
        "fetchproxy.toml:1: max_body_bytes = 0: expected a size of at least 1 byte (a number of bytes, or with a unit such as KiB or MiB)"
    );
    let flag = problems(resolve("", "max_url_bytes = 8"));
    assert!(
        flag[0]
            .to_string()
            .starts_with("--max-url-bytes 8: expected a size from 16 bytes"),
        "{}",
        flag[0]
    );
}

#[test]
fn limits_are_checked_against_each_other() {
    assert_eq!(
        message("max_header_bytes = 2048\nmax_url_bytes = 4096\n"),
        "fetchproxy.toml:2: max_url_bytes = 4096: must be at most max_header_bytes (2048)"
    );
    // Defaults bounded by another key stay within it when it is lowered.
    let lowered = from_file("max_connections = 100\nmax_header_bytes = 2048\n").expect("valid");
    assert_eq!(
        (
            lowered.max_tunnels,
            lowered.max_conns_per_client,
            lowered.max_url_bytes
        ),
        (100, 100, 2048)
    );
    let flagged = resolve("", "max_connections = 100").expect("valid");
    assert_eq!(flagged.max_tunnels, 100);
    let found = problems(from_file("max_connections = 100\nmax_tunnels = 1000\n"));
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["fetchproxy.toml:2: max_tunnels = 1000: must be at most max_connections (100)"]
    );
    assert_eq!(
        from_file(
            "max_connections = 100
max_tunnels = 10
"
        )
        .expect("valid")
        .max_conns_per_client,
        100
    );
    let flag = problems(resolve(
        "max_connections = 100\nmax_conns_per_client = 10\n",
        "max_tunnels = 200",
    ));
    assert_eq!(
        flag[0].to_string(),
        "--max-tunnels 200: must be at most max_connections (100)"
    );
    assert!(
        from_file("max_connections = 100\nmax_conns_per_client = 10\nmax_tunnels = 0\n").is_ok()
    );
}

#[test]
fn via_name_log_level_and_access_log_are_read() {
    let config = from_file(
        "via_name = \"proxy-1.example\"\nlog_level = \"DEBUG\"\naccess_log = \"/var/log/fp.log\"\naccess_log_format = \"squid\"\n",
    )
    .expect("valid");
    assert_eq!(config.via_name, "proxy-1.example");
    assert_eq!(config.log_level, log::LevelFilter::Debug);
    assert_eq!(
        config.access_log.as_deref(),
        Some(Path::new("/var/log/fp.log"))
    );
    assert_eq!(config.access_log_format, AccessLogFormat::Squid);
    let config =
        resolve("", "via_name = \"edge\"\naccess_log_format = \"combined\"").expect("valid");
    assert_eq!(config.via_name, "edge");
    assert_eq!(config.access_log_format, AccessLogFormat::Combined);
    assert_eq!(config.access_log_own_pages, OwnPages::All, "the default");
    let config = from_file("access_log_own_pages = \"Errors\"\n").expect("valid");
    assert_eq!(config.access_log_own_pages, OwnPages::Errors);
}

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$1Lj8XbtjgKpPhZe9BbR3v0p+ROxh6hV3kdEc4S1bfqc";

#[test]
fn users_are_read_from_users_tables() {
    let text = format!(
        "[[users]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n\n[[users]]\nname = \"bob\"\npassword_hash = \"{HASH}\"\n"
    );
    let config = from_file(&text).expect("valid");
    let names: Vec<&str> = config.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(
        !format!("{config:?}").contains("c2FsdH"),
        "hashes stay out of Debug"
    );
}

#[test]
fn bad_users_name_the_user_but_never_echo_the_hash() {
    let user = |name: &str, hash: &str| {
        message(&format!(
            "\n[[users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\n"
        ))
    };
    let text = user("alice", "plain-password");
    assert!(
        text.starts_with(
            "fetchproxy.toml:4: users: user \"alice\": password_hash: not a PHC string"
        ),
        "{text}"
    );
    assert!(!text.contains("plain-password"), "{text}");
    let text = user("alice", &HASH.replace("argon2id", "argon2i"));
    assert!(text.contains("argon2id"), "{text}");
    assert!(!text.contains("c2FsdH"), "{text}");
    assert!(user("a:b", HASH).contains("user name \"a:b\""));
    assert!(user("", HASH).contains("user name \"\""));
    let twice = format!(
        "[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n"
    );
    assert!(message(&twice).contains("user \"a\" is listed twice"));
    let text = message("[[users]]\nname = \"a\"\npassword = \"x\"\n");
    assert_eq!(
        text,
        "fetchproxy.toml:3: users: unknown key \"password\" in [[users]]; expected a [[users]] table with name and password_hash"
    );
    let after = format!("[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\nworkers = 3\n");
    assert_eq!(
        message(&after),
        "fetchproxy.toml:4: users: workers is set inside a [[users]] table, where it means nothing: move it above the first [[users]] line"
    );
    // A user called like a key: the fault is still at its own line.
    let named = "[[users]]\nname = \"name\"\npassword_hash = \"plain\"\n";
    assert!(
        message(named).starts_with("fetchproxy.toml:3: users: user \"name\": password_hash:"),
        "{}",
        message(named)
    );
    // A value that is no text is shown at its own line, in the second table.
    let second = format!(
        "[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n[[users]]\nname = 7\npassword_hash = \"{HASH}\"\n"
    );
    assert_eq!(
        message(&second),
        "fetchproxy.toml:5: users: name in [[users]] is not a string in quotes"
    );
    let inline = format!(
        "users = [{{ name = \"a\", password_hash = \"{}\" }}]\n",
        &HASH[..40]
    );
    assert!(!message(&inline).contains("c2FsdH"));
}

#[test]
fn changed_keys_names_each_setting_that_differs() {
    let running = ServeConfig::default();
    assert!(changed_keys(&running, &running.clone()).is_empty());
    let mut fresh = running.clone();
    fresh.workers = NonZeroUsize::new(3).expect("not zero");
    fresh.allow_dest = vec!["127.0.0.0/8".parse().expect("cidr")];
    fresh.max_body_bytes = Some(1);
    fresh.users = from_file(&format!(
        "[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n"
    ))
    .expect("valid")
    .users;
    assert_eq!(
        changed_keys(&running, &fresh),
        ["workers", "allow_dest", "max_body_bytes", "users"]
    );
}

#[test]
fn keys_that_follow_a_changed_one_are_not_named_with_it() {
    let running = ServeConfig::default();
    let fresh = from_file("workers = 3\n").expect("valid");
    assert_eq!(changed_keys(&running, &fresh), ["workers"]);
    let fresh = from_file("workers = 3\nqueue = 100\n").expect("valid");
    assert_eq!(changed_keys(&running, &fresh), ["workers", "queue"]);
    let fresh = from_file("max_conns_per_client = 7\n").expect("valid");
    assert_eq!(changed_keys(&running, &fresh), ["max_conns_per_client"]);
}

#[test]
fn help_shows_each_default_from_the_code() {
    assert_eq!(shown_default("workers").as_deref(), Some("512"));
    assert_eq!(
        shown_default("queue").as_deref(),
        Some("16 x workers: 8192")
    );
    assert_eq!(
        shown_default("max_conns_per_client").as_deref(),
        Some("workers + queue, at most max_connections: 8704")
    );
    assert_eq!(shown_default("listen").as_deref(), Some("127.0.0.1:8080"));
    assert_eq!(shown_default("allow_dest").as_deref(), Some("none"));
    assert_eq!(
        shown_default("dest_ports").as_deref(),
        Some("80, 443, 1024-65535")
    );
    assert_eq!(shown_default("upstream_timeout").as_deref(), Some("1m"));
    assert_eq!(shown_default("log_level").as_deref(), Some("info"));
    assert_eq!(
        shown_default("access_log_format").as_deref(),
        Some("fetchproxy")
    );
    assert_eq!(shown_default("max_body_bytes"), None, "unset by default");
    assert_eq!(shown_default("config"), None, "not a setting");
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fetchproxy.toml");
    std::fs::write(&path, "workers = 3\n").expect("write config");
    let none = Flags::default();
    assert_eq!(
        ServeConfig::load(Some(&path), &none)
            .expect("valid")
            .workers
            .get(),
        3
    );

    std::fs::write(&path, "workers = [\n").expect("write config");
    let err = ServeConfig::load(Some(&path), &none).expect_err("broken toml");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:1: ", path.display())),
        "{err}"
    );

    let missing = dir.path().join("absent.toml");
    let err = ServeConfig::load(Some(&missing), &none).expect_err("no file");
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("absent.toml"), "{err}");
    assert_eq!(
        ServeConfig::load(None, &none).expect("defaults"),
        ServeConfig::default()
    );
}
