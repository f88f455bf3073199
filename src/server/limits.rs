//! Connection limits: open connections in all (`max_connections`) and per
//! client address (`max_conns_per_client`), counted by the acceptor when it
//! admits a connection and released by whoever drops it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::ProxyError;

/// Open-connection counts, total and per client address, shared by the
/// acceptor (which admits) and whoever drops a connection (which releases).
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_client: usize,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimits {
    /// Limits of `max_total` connections, `max_per_client` from one address.
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total,
            max_per_client,
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a new connection from `ip`, or says which limit it is over.
    ///
    /// # Errors
    /// `TooManyConnections` naming the limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, ProxyError> {
        if self.total.fetch_add(1, Ordering::SeqCst) >= self.max_total {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err(ProxyError::TooManyConnections {
                what: "max_connections",
                limit: self.max_total,
            });
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_client.entry(ip).or_insert(0);
        if *count >= self.max_per_client {
            drop(per_client);
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err(ProxyError::TooManyConnections {
                what: "max_conns_per_client",
                limit: self.max_per_client,
            });
        }
        *count += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut per_client = self
            .limits
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_client.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.ip);
            }
        }
        drop(per_client);
        self.limits.total.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_per_client_and_release_on_drop() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = limits.admit(a).expect("first");
        let _second = limits.admit(a).expect("second");
        let err = limits.admit(a).expect_err("third from the same client");
        assert_eq!(err.status(), 503);
        let _third = limits.admit(b).expect("another client");
        assert!(limits.admit(b).is_err(), "total limit");
        drop(first);
        let _again = limits.admit(a).expect("place given back");
        assert_eq!(limits.total.load(Ordering::SeqCst), 3);
    }
}
