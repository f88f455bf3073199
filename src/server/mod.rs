//! The server: wiring of listeners, acceptor, queue, workers and shutdown.
//! `start` returns a `Running` handle; `run` = start + signals + wait.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::ServeConfig;
use crate::shutdown::Shutdown;

/// How the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every request finished within the grace period.
    Clean,
    /// The grace period ran out or a second signal cut requests short.
    CutShort,
}

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// A started server.
pub struct Running {
    addrs: Vec<SocketAddr>,
    shutdown: Arc<Shutdown>,
}

impl Running {
    /// The bound listening addresses (ports resolved when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The shutdown control of this server.
    pub fn shutdown(&self) -> &Arc<Shutdown> {
        &self.shutdown
    }

    /// Waits until the server has stopped (after `shutdown().begin_drain()`).
    pub fn wait(self) -> Stopped {
        todo!()
    }
}

/// Binds the listeners and starts the acceptor and workers.
///
/// # Errors
/// `StartError` when a listener or thread cannot be set up.
pub fn start(config: ServeConfig) -> Result<Running, StartError> {
    let _ = config;
    todo!()
}

/// Starts the server, installs signal handlers, and waits for it to stop.
///
/// # Errors
/// `StartError` when a listener or thread cannot be set up.
pub fn run(config: ServeConfig) -> Result<Stopped, StartError> {
    let running = start(config)?;
    crate::shutdown::install_signals(running.shutdown().clone())?;
    Ok(running.wait())
}
