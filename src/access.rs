//! Access rules: which clients may use the proxy and which destination
//! addresses and ports it may reach. Pure: no DNS, no sockets; callers pass
//! the address actually being connected to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An inclusive range of ports, written `80` or `1024-65535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// A range holding the single port `port`.
    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Whether `port` lies inside this range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (parse_port(first)?, parse_port(last)?),
            None => {
                let port = parse_port(text)?;
                (port, port)
            }
        };
        if first > last {
            return Err(format!("reversed port range {first}-{last}"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One port number, 1 to 65535 (port 0 is never a real destination).
fn parse_port(text: &str) -> Result<u16, String> {
    let text = text.trim();
    // u16::from_str accepts a leading `+`; a port is digits only.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a port number"));
    }
    match text.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed".to_string()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("port {text} is over 65535")),
    }
}

/// Whether `ip` is globally routable: not loopback, private, link-local,
/// shared (100.64/10), documentation, benchmarking, unspecified, broadcast,
/// multicast, reserved, or unique-local / site-local IPv6. IPv4-mapped and
/// IPv4-compatible IPv6 addresses are judged as the IPv4 address they carry.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

/// IANA IPv4 Special-Purpose Address Registry (RFC 6890 and successors).
fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0 // "this network"
        || a == 10 // RFC 1918
        || (a == 100 && b & 0xc0 == 64) // shared address space, RFC 6598
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && b & 0xf0 == 16) // RFC 1918
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168) // RFC 1918
        || (a == 198 && b & 0xfe == 18) // benchmarking, RFC 2544
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast
    !special
}

/// IANA IPv6 Special-Purpose Address Registry; forms that carry an IPv4
/// address are judged by that address, so no spelling reaches a private host.
fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_ipv4(ip) {
        return is_global_v4(v4);
    }
    let s = ip.segments();
    let special = (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 local use 64:ff9b:1::/48
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments 2001::/23
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || s[0] & 0xfff0 == 0x3ff0 // documentation 3fff::/20, RFC 9637
        || s[0] & 0xfe00 == 0xfc00 // unique-local fc00::/7
        || s[0] & 0xffc0 == 0xfe80 // link-local fe80::/10
        || s[0] & 0xffc0 == 0xfec0 // site-local fec0::/10
        || s[0] & 0xff00 == 0xff00; // multicast ff00::/8
    // Only 2000::/3 is allocated as global unicast; the rest is reserved.
    !special && s[0] & 0xe000 == 0x2000
}

/// The IPv4 address an IPv6 address stands for, when it stands for one:
/// IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` (so `::` and `::1`
/// become 0.0.0.0 and 0.0.0.1), NAT64 `64:ff9b::/96` and 6to4 `2002::/16`.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let from = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] {
        return Some(from(s[6], s[7]));
    }
    if s[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] {
        return Some(from(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(from(s[1], s[2]));
    }
    None
}

/// Whether the proxy may connect to `ip`: globally routable, or covered by `allow_dest`.
pub fn allows_destination(ip: IpAddr, allow_dest: &[IpNet]) -> bool {
    is_covered(ip, allow_dest) || is_global(ip)
}

/// Whether a client at `ip` may use the proxy.
pub fn allows_client(ip: IpAddr, allow_clients: &[IpNet]) -> bool {
    is_covered(ip, allow_clients)
}

/// Whether a range covers `ip` in either of its spellings: an IPv4-mapped
/// IPv6 address (a dual-stack socket's view of an IPv4 peer) is the same
/// host as the IPv4 address it carries.
fn is_covered(ip: IpAddr, ranges: &[IpNet]) -> bool {
    let other = match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
    };
    ranges
        .iter()
        .any(|net| net.contains(&ip) || net.contains(&other))
}

/// Whether `port` is inside one of `ranges`.
pub fn allows_port(port: u16, ranges: &[PortRange]) -> bool {
    ranges.iter().any(|range| range.contains(port))
}

/// The default client ranges, like Squid's `localnet`: loopback, RFC 1918,
/// link-local, and IPv6 loopback, unique-local and link-local.
pub fn default_allow_clients() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .map(|text| text.parse().expect("built-in client range is a valid CIDR"))
    .collect()
}

/// The clients allowed to PURGE by default: loopback only (Squid's
/// `http_access allow PURGE localhost`).
pub fn default_purge_clients() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|text| text.parse().expect("built-in purge range is a valid CIDR"))
        .collect()
}

/// The default destination ports, like Squid's `Safe_ports`: 80, 443, 1024-65535.
pub fn default_dest_ports() -> Vec<PortRange> {
    vec![
        PortRange::single(80),
        PortRange::single(443),
        PortRange {
            first: 1024,
            last: 65535,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts
            .iter()
            .map(|t| t.parse().expect("test CIDR"))
            .collect()
    }

    #[test]
    fn private_and_special_addresses_are_denied_by_default() {
        for text in [
            "169.254.169.254",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.1.1",
            "127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "::1",
            "::",
            "fe80::1",
            "fec0::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2002:7f00:1::1",
        ] {
            assert!(!allows_destination(ip(text), &[]), "{text} allowed");
        }
    }

    #[test]
    fn global_addresses_are_allowed() {
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(allows_destination(ip(text), &[]), "{text} denied");
        }
    }

    #[test]
    fn allow_dest_covers_both_spellings_of_an_address() {
        let allow = nets(&["127.0.0.0/8"]);
        assert!(allows_destination(ip("127.0.0.1"), &allow));
        assert!(allows_destination(ip("::ffff:127.0.0.1"), &allow));
        assert!(!allows_destination(ip("10.0.0.1"), &allow));
        assert!(!allows_destination(ip("::1"), &allow));
    }

    #[test]
    fn default_clients_are_local_ranges_in_either_spelling() {
        let clients = default_allow_clients();
        assert_eq!(clients.len(), 9);
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.9",
            "::1",
            "fd00::5",
            "::ffff:127.0.0.1",
        ] {
            assert!(allows_client(ip(text), &clients), "{text} refused");
        }
        for text in ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!allows_client(ip(text), &clients), "{text} admitted");
        }
    }

    #[test]
    fn port_ranges_parse_and_reject_junk() {
        assert_eq!("80".parse(), Ok(PortRange::single(80)));
        assert_eq!(
            "1024-65535".parse(),
            Ok(PortRange {
                first: 1024,
                last: 65535
            })
        );
        for bad in [
            "0", "0-80", "200-100", "", "-", "http", "+80", "80-", "65536", "1-2-3",
        ] {
            let err = bad.parse::<PortRange>().expect_err(bad);
            assert_eq!(err, err.to_lowercase(), "{bad}: {err}");
        }
        assert_eq!(PortRange::single(80).to_string(), "80");
        assert_eq!(default_dest_ports()[2].to_string(), "1024-65535");
    }

    #[test]
    fn default_dest_ports_are_safe_ports() {
        let ports = default_dest_ports();
        for port in [80, 443, 1024, 8080, 65535] {
            assert!(allows_port(port, &ports), "{port}");
        }
        for port in [22, 25, 1023] {
            assert!(!allows_port(port, &ports), "{port}");
        }
    }
}
