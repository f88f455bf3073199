//! Proxy header rules (RFC 9110 §7.6): hop-by-hop removal including names
//! listed in `Connection`, `Via` and loop detection, `Max-Forwards`, and
//! request ids. Pure functions over names and values.

/// Names of the headers that must not be forwarded for one message: the
/// fixed hop-by-hop set plus every name listed in its `Connection` headers.
#[derive(Debug, Default)]
pub struct HopByHop {
    listed: Vec<String>,
}

impl HopByHop {
    /// Collects the names listed in the message's `Connection` header values.
    pub fn from_connection<'a>(values: impl Iterator<Item = &'a [u8]>) -> Self {
        let _ = values;
        todo!()
    }

    /// Whether `name` must be dropped when forwarding (case-insensitive).
    pub fn contains(&self, name: &str) -> bool {
        let _ = (name, &self.listed);
        todo!()
    }
}

/// The fixed hop-by-hop headers (RFC 9110 §7.6.1), plus `Proxy-Connection`,
/// `Proxy-Authorization` and `Proxy-Authenticate`, which are meant for this hop.
pub fn is_hop_by_hop(name: &str) -> bool {
    let _ = name;
    todo!()
}

/// Whether any `Via` value names `pseudonym` as a received-by entry: the
/// request has already passed through this proxy.
pub fn is_loop<'a>(via_values: impl Iterator<Item = &'a [u8]>, pseudonym: &str) -> bool {
    let _ = (via_values, pseudonym);
    todo!()
}

/// The `Max-Forwards` value, when present and valid (RFC 9110 §7.6.2).
pub fn max_forwards<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<u32> {
    let _ = values;
    todo!()
}

/// Whether a client-sent `X-Request-Id` is safe to reuse: 1 to 128 bytes of
/// `[A-Za-z0-9._:-]`.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    let _ = value;
    todo!()
}
