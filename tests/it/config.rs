//! Configuration through the real binary: the config file, flags over the
//! file, errors that exit 2 naming the bad key, flag or value, and `--help`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::support::raw::exchange_until_close;
use crate::support::{Origin, ProxyProcess, run_binary, run_binary_within};

const LIMIT: Duration = Duration::from_secs(20);

/// Writes `text` as a config file in a new temporary directory.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fetchproxy.toml");
    std::fs::write(&path, text).expect("write config file");
    (dir, path)
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("temp path is UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `fetchproxy ARGS...`, expecting exit 2 with a message containing every `needle`.
fn expect_usage_error(args: &[&str], needles: &[&str]) -> String {
    let output = run_binary_within(args, LIMIT);
    let text = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "fetchproxy {args:?}\nstderr: {text}"
    );
    for needle in needles {
        assert!(
            text.contains(needle),
            "fetchproxy {args:?}: stderr does not name {needle:?}: {text}"
        );
    }
    assert!(
        !text.contains("listening on"),
        "fetchproxy {args:?} started anyway: {text}"
    );
    text
}

/// Stops a started binary by PID and expects a clean exit.
fn stop(mut served: ProxyProcess) {
    let status = served.terminate(LIMIT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "log:\n{}",
        served.log().join("\n")
    );
}

#[test]
fn config_file_settings_are_used() {
    let (_dir, path) =
        config_file("listen = [\"127.0.0.1:0\"]\nworkers = 3\nallow_dest = [\"127.0.0.0/8\"]\n");
    let served = ProxyProcess::spawn(&["--config", arg(&path)]).unwrap_or_else(|e| panic!("{e}"));
    assert!(served.addr.ip().is_loopback(), "{}", served.startup);
    assert_ne!(served.addr.port(), 0, "{}", served.startup);
    // The queue follows the worker count from the file.
    assert!(
        served.startup.contains("with 3 workers, queue 48"),
        "{}",
        served.startup
    );
    // allow_dest from the file lets a loopback origin through.
    let origin = Origin::fixed("text/plain", b"from the file");
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        origin.url("/")
    );
    let got = exchange_until_close(served.addr, request.as_bytes(), LIMIT);
    let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200], "got {:?}", got.text());
    stop(served);
}

#[test]
fn flags_override_the_config_file() {
    let (_dir, path) =
        config_file("listen = [\"127.0.0.1:0\"]\nworkers = 3\nqueue = 9\nlog_level = \"warn\"\n");
    let served = ProxyProcess::spawn(&[
        "--config",
        arg(&path),
        "--workers",
        "5",
        "--log-level",
        "info",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    // Workers from the flag, queue still from the file; the startup line
    // is at info, so the flag's level won over the file's "warn".
    assert!(
        served.startup.contains("with 5 workers, queue 9"),
        "{}",
        served.startup
    );
    stop(served);
}

#[test]
fn listen_flag_overrides_the_file_listen_address() {
    // The file's address is taken; the flag's is used instead.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (_dir, path) = config_file(&format!(
        "listen = [\"{}\"]\n",
        taken.local_addr().expect("addr")
    ));
    let served = ProxyProcess::spawn(&["--config", arg(&path), "--listen", "127.0.0.1:0"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        served.addr,
        taken.local_addr().expect("addr"),
        "{}",
        served.startup
    );
    stop(served);
}

#[test]
fn unknown_key_exits_2_naming_the_key_and_the_one_meant() {
    let (_dir, path) = config_file("workers = 3\nworkerz = 4\n");
    let text = expect_usage_error(&["serve", "--config", arg(&path)], &["workerz"]);
    assert_eq!(
        text,
        format!(
            "fetchproxy: {}:2: unknown key \"workerz\"; did you mean \"workers\"?\n",
            path.display()
        )
    );
}

/// Issue 14: a typo'd key and a bad value are both reported, each with its
/// line, in words a user knows.
#[test]
fn every_problem_in_a_file_is_reported_with_its_line() {
    let (_dir, path) =
        config_file("workrs = 4\nqueue = \"lots\"\nallow_dest = [\n  \"localhost\",\n]\n");
    let text = expect_usage_error(&["serve", "--config", arg(&path)], &[]);
    let shown = path.display();
    assert_eq!(
        text,
        format!(
            "fetchproxy: 3 problems in the configuration:\n  \
             {shown}:1: unknown key \"workrs\"; did you mean \"workers\"?\n  \
             {shown}:2: queue = \"lots\": expected a whole number from 1 to 1000000\n  \
             {shown}:4: allow_dest = \"localhost\": expected an address or a range such as 127.0.0.1, 10.0.0.0/8, ::1 or fc00::/7; for localhost give 127.0.0.1 and ::1\n"
        )
    );
    assert!(!text.contains("usize"), "{text}");
}

#[test]
fn a_flag_out_of_range_exits_2_naming_the_flag() {
    let text = expect_usage_error(&["serve", "--workers", "0"], &[]);
    assert_eq!(
        text,
        "fetchproxy: --workers 0: expected a whole number from 1 to 4096\n"
    );
}

/// Issue 14: `--listen PORT` means 127.0.0.1:PORT, as Squid users write it.
#[test]
fn a_bare_listen_port_means_loopback() {
    let served = ProxyProcess::spawn(&["--listen", "0"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        served.addr.ip().to_string(),
        "127.0.0.1",
        "{}",
        served.startup
    );
    assert_ne!(served.addr.port(), 0, "{}", served.startup);
    stop(served);
}

/// Issue 14: `--listen localhost:PORT` listens on every address the name
/// resolves to.
#[test]
fn a_listen_host_name_is_resolved_to_every_address() {
    let served =
        ProxyProcess::spawn(&["--listen", "localhost:0"]).unwrap_or_else(|e| panic!("{e}"));
    let listed = served
        .startup
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(" with ").next())
        .unwrap_or_default()
        .to_string();
    let addrs: Vec<std::net::SocketAddr> = listed
        .split(", ")
        .map(|addr| addr.parse().expect("a listening address"))
        .collect();
    let expected: Vec<std::net::IpAddr> = std::net::ToSocketAddrs::to_socket_addrs("localhost:0")
        .expect("localhost resolves")
        .map(|addr| addr.ip())
        .collect();
    assert!(!addrs.is_empty(), "{}", served.startup);
    for addr in &addrs {
        assert!(
            expected.contains(&addr.ip()),
            "{addr} is not localhost: {}",
            served.startup
        );
    }
    for ip in &expected {
        assert!(
            addrs.iter().any(|addr| addr.ip() == *ip),
            "{ip} missing: {}",
            served.startup
        );
    }
    let request = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for addr in &addrs {
        let got = exchange_until_close(*addr, request.as_bytes(), LIMIT);
        let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200], "{addr}: {:?}", got.text());
    }
    stop(served);
}

#[test]
fn a_listen_name_that_does_not_resolve_exits_2() {
    // `.invalid` never resolves (RFC 6761 §6.4).
    expect_usage_error(
        &["serve", "--listen", "nowhere.invalid:8080"],
        &["--listen nowhere.invalid:8080: cannot resolve the host name"],
    );
}

#[test]
fn bad_duration_in_file_exits_2_naming_key_and_value() {
    let (_dir, path) = config_file("grace = \"30 parsecs\"\n");
    expect_usage_error(&["serve", "--config", arg(&path)], &["grace", "30 parsecs"]);
}

#[test]
fn bad_duration_flag_exits_2_naming_flag_and_value() {
    expect_usage_error(
        &["serve", "--grace", "30 parsecs"],
        &["--grace", "30 parsecs"],
    );
}

#[test]
fn zero_workers_exits_2() {
    let (_dir, path) = config_file("workers = 0\n");
    expect_usage_error(&["serve", "--config", arg(&path)], &["workers", "0"]);
    expect_usage_error(&["serve", "--workers", "0"], &["--workers", "0"]);
}

#[test]
fn bad_cidr_exits_2() {
    expect_usage_error(
        &["serve", "--allow-dest", "127.0.0.0/33"],
        &["--allow-dest", "127.0.0.0/33"],
    );
    expect_usage_error(
        &["serve", "--allow-dest", "localhost"],
        &["--allow-dest", "localhost"],
    );
    let (_dir, path) = config_file("allow_dest = [\"10.0.0.0/8\", \"not-a-range\"]\n");
    expect_usage_error(
        &["serve", "--config", arg(&path)],
        &["allow_dest", "not-a-range"],
    );
}

#[test]
fn wrong_type_in_file_exits_2_naming_the_key() {
    let (_dir, path) = config_file("queue = \"lots\"\n");
    expect_usage_error(&["serve", "--config", arg(&path)], &["queue"]);
}

#[test]
fn missing_config_file_exits_2_naming_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.toml");
    expect_usage_error(&["serve", "--config", arg(&path)], &["absent.toml"]);
}

#[test]
fn listen_port_in_use_exits_2_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    expect_usage_error(&["serve", "--listen", &addr], &[&addr]);
}

#[test]
fn config_example_loads() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let mut proxy = ProxyProcess::start(&["--config", arg(&example)]);
    let line = proxy
        .wait_for_log("listening on", LIMIT)
        .expect("startup line");
    // The example's values are the defaults.
    assert!(line.contains("with 512 workers, queue 8192"), "{line}");
    let request = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let got = exchange_until_close(proxy.addr, request.as_bytes(), LIMIT);
    let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200], "got {:?}", got.text());
    proxy.signal("TERM");
    let status = proxy.wait_exit(LIMIT).and_then(|s| s.code());
    assert_eq!(status, Some(0), "log:\n{}", proxy.log().join("\n"));
}

#[test]
fn log_level_debug_is_accepted_and_logs_debug_lines() {
    let mut proxy = ProxyProcess::start(&["--log-level", "debug"]);
    // A malformed request is logged at debug.
    let got = exchange_until_close(proxy.addr, b"NONSENSE\r\n\r\n", LIMIT);
    assert_eq!(
        got.responses().first().map(|r| r.status),
        Some(400),
        "got {:?}",
        got.text()
    );
    assert!(
        proxy.wait_for_log("[DEBUG]", LIMIT).is_some(),
        "no debug line; log:\n{}",
        proxy.log().join("\n")
    );
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn bad_log_level_exits_2_listing_the_levels() {
    expect_usage_error(
        &["serve", "--log-level", "loud"],
        &[
            "--log-level",
            "loud",
            "off, error, warn, info, debug, trace",
        ],
    );
    let (_dir, path) = config_file("log_level = \"loud\"\n");
    expect_usage_error(
        &["serve", "--config", arg(&path)],
        &["log_level = \"loud\": expected off, error, warn, info, debug or trace"],
    );
}

/// Issue 14: `serve --help` lists every flag with its default.
#[test]
fn serve_help_lists_the_flags_with_their_defaults() {
    let output = run_binary(&["serve", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--config",
        "--listen",
        "--workers",
        "--queue",
        "--allow-dest",
        "--allow-client",
        "--dest-port",
        "--connect-port",
        "--grace",
        "--connect-timeout",
        "--upstream-timeout",
        "--idle-timeout",
        "--header-timeout",
        "--tunnel-idle-timeout",
        "--max-header-bytes",
        "--max-url-bytes",
        "--max-body-bytes",
        "--max-connections",
        "--max-conns-per-client",
        "--max-tunnels",
        "--via-name",
        "--log-level",
        "--access-log",
        "--access-log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    for default in [
        "[default: 512]",
        "[default: 16 x workers: 8192]",
        "[default: workers + queue, at most max_connections: 8704]",
        "[default: 10s]",
        "[default: 1m]",
        "[default: 64KiB]",
        "[default: 10000]",
        "[default: info]",
    ] {
        assert!(help.contains(default), "{default} missing from:\n{help}");
    }
    assert!(
        help.contains("off, error, warn, info, debug, trace"),
        "{help}"
    );
}

/// Issue 14: `dest_ports` and `via_name` have flags.
#[test]
fn via_name_and_dest_port_flags_are_used() {
    let origin = Origin::fixed("text/plain", b"named");
    let served = ProxyProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--allow-dest",
        "127.0.0.1",
        "--via-name",
        "edge-7",
        "--dest-port",
        &origin.addr.port().to_string(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        origin.url("/")
    );
    let got = exchange_until_close(served.addr, request.as_bytes(), LIMIT);
    let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200], "got {:?}", got.text());
    let via = origin.requests()[0].header("via").map(str::to_string);
    assert_eq!(
        via.as_deref(),
        Some("1.1 edge-7"),
        "{:?}",
        origin.requests()
    );
    stop(served);
}

#[test]
fn a_list_given_in_place_of_its_default_is_said_at_startup() {
    let narrowed = ProxyProcess::start(&[
        "--dest-port",
        "8081",
        "--connect-port",
        "8443",
        "--allow-client",
        "127.0.0.0/8",
        "--purge-client",
        "10.0.0.0/8",
    ]);
    for (starts, says) in [
        (
            "destination ports:",
            "destination ports: 8081 only (the list given replaces the default 80, 443, 1024-65535)",
        ),
        (
            "CONNECT ports:",
            "CONNECT ports: 8443 only (the list given replaces the default 443)",
        ),
        (
            "clients:",
            "clients: 127.0.0.0/8 only (the list given replaces",
        ),
        (
            "PURGE:",
            "PURGE: from 10.0.0.0/8 only (the list given replaces the default: loopback)",
        ),
    ] {
        let line = narrowed.wait_for_log(starts, LIMIT);
        assert!(
            line.as_deref().is_some_and(|l| l.contains(says)),
            "{line:?}"
        );
    }
    stop(narrowed);
}

#[test]
fn the_destinations_allowed_are_said_at_startup() {
    let allowed = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8", "--allow-dest", "::1"]);
    let line = allowed.wait_for_log("destinations:", LIMIT);
    assert!(
        line.as_deref()
            .is_some_and(|l| l
                .ends_with("destinations: globally routable addresses, and 127.0.0.0/8, ::1/128")),
        "{line:?}"
    );
    stop(allowed);
    let plain = ProxyProcess::start(&[]);
    let line = plain.wait_for_log("destinations:", LIMIT);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("destinations: globally routable addresses only;")),
        "{line:?}"
    );
    stop(plain);
}
