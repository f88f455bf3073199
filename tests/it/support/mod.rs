//! The test harness: scripted origins and plain TCP servers, the proxy
//! (in-process or the real binary), and real clients (curl, raw sockets).
//! Everything stops on drop.

#![allow(dead_code, unused_imports)] // each test module uses a different part of the harness

pub mod client;
pub mod fleet;
pub mod haproxy;
pub mod load;
pub mod origin;
pub mod proxy;
pub mod raw;
pub mod servers;
pub mod tls;

pub use client::{
    CurlReply, curl, metric, raw, read_response, read_until_close, scrape_metrics, wait_until,
};
pub use origin::{Gate, Origin, OriginRequest, Reply, gated_origin};
pub use proxy::{Proxy, ProxyProcess, run_binary, run_binary_within, test_config};
