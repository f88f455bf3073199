//! fetchproxy: a multithreaded URL-fetching HTTP/1.1 forward proxy, and a
//! batch client that saves URLs through it.
//!
//! ```text
//!  clients --> acceptor (mio readiness loop: accept, read heads, park idle
//!              keep-alive connections, enforce header/idle timeouts)
//!                 | bounded crossbeam channel (--queue); full => 503 at once
//!                 v
//!              N workers (blocking): look in the cache, read body, fetch
//!              upstream through their group's ureq Agent, stream the reply,
//!              wait a moment for the next request, else hand the
//!              keep-alive connection back to the acceptor
//! ```
//!
//! Start reading at `server/worker.rs`: one connection's life, top to bottom.

#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod http;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod pump;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod transport;
pub mod upstream;
