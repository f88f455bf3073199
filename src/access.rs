//! Access rules: which clients may use the proxy and which destination
//! addresses and ports it may reach. Pure: no DNS, no sockets; callers pass
//! the address actually being connected to.

use std::net::IpAddr;

use ipnet::IpNet;

/// An inclusive range of ports, written `80` or `1024-65535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let _ = text;
        todo!()
    }
}

/// Whether `ip` is globally routable: not loopback, private, link-local,
/// shared (100.64/10), documentation, benchmarking, unspecified, broadcast,
/// multicast, reserved, or unique-local / site-local IPv6. IPv4-mapped and
/// IPv4-compatible IPv6 addresses are judged as the IPv4 address they carry.
pub fn is_global(ip: IpAddr) -> bool {
    let _ = ip;
    todo!()
}

/// Whether the proxy may connect to `ip`: globally routable, or covered by `allow_dest`.
pub fn allows_destination(ip: IpAddr, allow_dest: &[IpNet]) -> bool {
    let _ = (ip, allow_dest);
    todo!()
}

/// Whether a client at `ip` may use the proxy.
pub fn allows_client(ip: IpAddr, allow_clients: &[IpNet]) -> bool {
    let _ = (ip, allow_clients);
    todo!()
}

/// Whether `port` is inside one of `ranges`.
pub fn allows_port(port: u16, ranges: &[PortRange]) -> bool {
    let _ = (port, ranges);
    todo!()
}

/// The default client ranges, like Squid's `localnet`: loopback, RFC 1918,
/// link-local, and IPv6 loopback, unique-local and link-local.
pub fn default_allow_clients() -> Vec<IpNet> {
    todo!()
}

/// The default destination ports, like Squid's `Safe_ports`: 80, 443, 1024-65535.
pub fn default_dest_ports() -> Vec<PortRange> {
    todo!()
}
