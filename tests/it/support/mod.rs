//! The test harness: scripted origins, the proxy (in-process or the real
//! binary), and real clients (curl, raw sockets). Everything stops on drop.

#![allow(dead_code, unused_imports)] // each test module uses a different part of the harness

pub mod client;
pub mod extra_forward;
pub mod extra_limits;
pub mod origin;
pub mod proxy;

pub use client::{CurlReply, curl, raw, read_response, read_until_close, wait_until};
pub use origin::{Origin, OriginRequest, Reply};
pub use proxy::{Proxy, ProxyProcess, run_binary, test_config};
