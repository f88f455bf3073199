//! `Job`: what the acceptor queues for a worker, a connection with a
//! complete (or failed) request head.

use std::time::Instant;

use crate::error::ProxyError;
use crate::http::request::RequestHead;
use crate::server::conn::ClientConn;

/// A connection with a complete (or failed) request head, for a worker.
#[derive(Debug)]
pub struct Job {
    pub conn: ClientConn,
    /// The parsed head (already consumed from `conn`), or why it failed.
    pub head: Result<RequestHead, ProxyError>,
    /// When the head was complete.
    pub queued_at: Instant,
}
