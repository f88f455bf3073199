//! Integration tests: real sockets on loopback, origins the tests start, and
//! real clients. One binary; a module per behaviour.

mod support;

mod access;
mod access_log;
mod auth;
mod cache;
mod client;
mod client_fleet;
mod client_options;
mod client_terminal;
mod config;
mod connect;
mod drain;
mod fleet;
mod forward;
mod framing;
mod hangup;
mod limits;
mod manual;
mod refusals;
mod reload;
mod scale;
mod shutdown;
mod upstream;
