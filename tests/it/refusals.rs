//! Issue 14: a refusal tells the user what to do about it. The 403 for a
//! denied destination or port names the flag and the config key that would
//! allow it, and the flag takes the bare address the message suggests.

use std::time::Duration;

use fetchproxy::access::PortRange;

use crate::support::{Origin, Proxy, ProxyProcess, curl};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn a_denied_destination_says_how_to_allow_it() {
    let origin = Origin::fixed("text/plain", b"local");
    let proxy = Proxy::with(|c| c.allow_dest.clear());
    let reply = curl(proxy.addr, &origin.url("/"), &[]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(
        reply.text(),
        "destination 127.0.0.1 is not allowed; allow it with --allow-dest 127.0.0.1 (or allow_dest in the config file)\n",
        "{reply:?}"
    );
    assert!(origin.requests().is_empty());
}

/// The fix the message gives works as written: a bare address.
#[test]
fn the_suggested_allow_dest_flag_lets_the_request_through() {
    let origin = Origin::fixed("text/plain", b"local");
    let mut served = ProxyProcess::start(&["--allow-dest", "127.0.0.1"]);
    let reply = curl(served.addr, &origin.url("/"), &[]);
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\nlog:\n{}",
        served.log().join("\n")
    );
    assert_eq!(reply.text(), "local");
    // Only that address: its neighbour is still denied.
    let neighbour = origin.url("/").replace("127.0.0.1", "127.0.0.2");
    let reply = curl(served.addr, &neighbour, &[]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.text().contains("--allow-dest 127.0.0.2"), "{reply:?}");
    assert_eq!(served.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn a_denied_port_says_how_to_allow_it() {
    let origin = Origin::fixed("text/plain", b"local");
    let port = origin.addr.port();
    let proxy = Proxy::with(|c| c.dest_ports = vec![PortRange::single(80)]);
    let reply = curl(proxy.addr, &origin.url("/"), &[]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(
        reply.text(),
        format!(
            "destination port {port} is not allowed; to allow it, add --dest-port {port} to the ports given (a list given replaces the default 80, 443, 1024-65535), or {port} to dest_ports in the config file\n"
        ),
        "{reply:?}"
    );
}

/// `--dest-port` replaces the default ports, as `dest_ports` does.
#[test]
fn the_dest_port_flag_replaces_the_default_ports() {
    let origin = Origin::fixed("text/plain", b"local");
    let port = origin.addr.port().to_string();
    let mut served = ProxyProcess::start(&["--allow-dest", "127.0.0.1", "--dest-port", "80"]);
    let reply = curl(served.addr, &origin.url("/"), &[]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(
        reply.text().contains(&format!("--dest-port {port} ")),
        "{reply:?}"
    );
    assert!(origin.requests().is_empty());
    assert_eq!(served.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}
