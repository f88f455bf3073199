//! The server: wiring of acceptor, queue, workers and shutdown.

use crate::config::ServeConfig;

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
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Starts the server and waits for it to stop.
///
/// # Errors
/// `StartError` when a listener or thread cannot be set up.
pub fn run(config: ServeConfig) -> Result<Stopped, StartError> {
    let _ = config;
    todo!()
}
