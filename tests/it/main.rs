//! Integration tests: real sockets on loopback, origins the tests start, and
//! real clients. One binary; a module per behaviour.

mod support;

mod access;
mod auth;
mod client;
mod config;
mod connect;
mod forward;
mod framing;
mod limits;
mod reload;
mod scale;
mod shutdown;
