//! The server: wiring of listeners, acceptor, queue, workers, tunnel relay,
//! shared rules and shutdown. `start` returns a `Running` handle; `run` =
//! start + signals (SIGHUP reloads the rules) + wait. Nothing here touches a
//! request; `finished` is where every request's log line and count meet,
//! whichever thread ends it (worker, acceptor or tunnel relay).

mod acceptor;
mod conn;
mod endpoints;
mod forward;
mod handback;
mod pool;
mod request_body;
mod request_id;
mod tunnel;
mod worker;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use mio::{Poll, Waker};

use crate::config::{ConfigError, ServeConfig};
use crate::logging::{self, AccessRecord};
use crate::metrics::{Finished, Metrics};
use crate::rules::{Rules, SharedRules};
use crate::shutdown::Shutdown;
use acceptor::Acceptor;
use conn::{ConnLimits, set_client_options};
use handback::Handback;
use pool::Pool;
use request_id::RequestIds;
use worker::Context;

/// Largest listen backlog asked for (the kernel caps it at `somaxconn`).
const LISTEN_BACKLOG_MAX: usize = 4096;

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
    #[error(
        "open-files limit {limit} is too low for max_connections = {max_connections}; raise it (ulimit -n) or lower max_connections"
    )]
    FileLimit { limit: u64, max_connections: usize },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the configuration again for a reload: the config file re-read,
/// the command-line flags still over it.
pub type LoadConfig = Box<dyn Fn() -> Result<ServeConfig, ConfigError> + Send>;

/// A started server.
pub struct Running {
    addrs: Vec<SocketAddr>,
    config: Arc<ServeConfig>,
    rules: SharedRules,
    shutdown: Arc<Shutdown>,
    grace: std::time::Duration,
    /// Says whether it cut a request head short.
    acceptor: JoinHandle<bool>,
    relay: JoinHandle<()>,
    pool: Pool,
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

    /// The access rules in force, which `reload` replaces.
    pub fn rules(&self) -> &SharedRules {
        &self.rules
    }

    /// Puts the access rules and users of `fresh` in force, or keeps the
    /// current ones (logging why) when it failed to load. Connections stay
    /// open; their next requests follow the new rules. Other settings are
    /// not reloaded.
    pub fn reload(&self, fresh: Result<ServeConfig, ConfigError>) {
        self.rules.reload(&self.config, fresh);
    }

    /// Waits until the server has stopped: the acceptor returns once draining
    /// began, and the workers get until the grace period, counted from the
    /// start of draining, is over.
    pub fn wait(self) -> Stopped {
        // A panicked acceptor may have dropped connections mid-request.
        let heads_cut = self.acceptor.join().unwrap_or(true);
        let drain_started = self.shutdown.draining_since().unwrap_or_else(Instant::now);
        let deadline = drain_started + self.grace;
        let shutdown = self.shutdown.clone();
        let finished = self.pool.join(deadline, || shutdown.is_stopping_now());
        let cut_short = heads_cut || !finished || self.shutdown.is_stopping_now();
        if cut_short {
            // Tunnels still open are cut too.
            self.shutdown.stop_now();
        }
        let _ = self.relay.join();
        if cut_short {
            log::warn!("stopped: requests were cut short");
            Stopped::CutShort
        } else {
            log::info!("stopped");
            Stopped::Clean
        }
    }
}

/// Binds the listeners and starts the acceptor, the workers and the relay.
///
/// # Errors
/// `StartError` when a listener or thread cannot be set up.
pub fn start(config: ServeConfig) -> Result<Running, StartError> {
    raise_file_limit(config.max_connections)?;
    let mut listeners = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        let listener = TcpListener::bind(addr).map_err(|source| StartError::Bind {
            addr: *addr,
            source,
        })?;
        // std listens with a backlog of 128; a burst of new connections
        // (a crawler starting up, many clients reconnecting) needs more, or
        // SYNs are dropped and clients wait a second for a retransmit.
        let backlog = config.max_connections.clamp(128, LISTEN_BACKLOG_MAX) as i32;
        rustix::net::listen(&listener, backlog).map_err(|errno| StartError::Bind {
            addr: *addr,
            source: errno.into(),
        })?;
        // Every accepted socket inherits these (see `set_client_options`).
        set_client_options(&listener, config.idle_timeout, config.upstream_timeout)?;
        listeners.push(listener);
    }
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()?;
    let rules = SharedRules::new(Rules::from_config(&config));
    let config = Arc::new(config);
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), acceptor::WAKER)?);
    let shutdown = Arc::new(Shutdown::new(waker.clone()));
    let (handback, returns) = Handback::new(waker);
    let acceptor_handback = (handback.clone(), returns);
    let metrics = Arc::new(Metrics::new());
    let (relay, relay_thread) =
        tunnel::spawn_relay(config.clone(), shutdown.clone(), metrics.clone())?;
    let ids = Arc::new(RequestIds::new());
    let limits = ConnLimits::new(config.max_connections, config.max_conns_per_client);
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(config.queue.get());
    let ctx = Arc::new(Context {
        config: config.clone(),
        agent: crate::upstream::agent(&config, rules.clone(), metrics.clone()),
        rules: rules.clone(),
        shutdown: shutdown.clone(),
        handback,
        ids: ids.clone(),
        relay,
        metrics: metrics.clone(),
        limits: limits.clone(),
        queue: jobs_rx.clone(),
    });
    let pool = Pool::spawn(config.workers.get(), &jobs_rx, &ctx)?;
    drop(jobs_rx);
    let acceptor = Acceptor::new(
        poll,
        listeners,
        jobs_tx,
        acceptor_handback,
        shutdown.clone(),
        config.clone(),
        rules.clone(),
        limits,
        ids,
        metrics,
    )?;
    let acceptor = thread::Builder::new()
        .name("acceptor".into())
        .spawn(move || acceptor.run())?;
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    log::info!(
        "listening on {} with {} workers, queue {}",
        shown.join(", "),
        config.workers,
        config.queue
    );
    if !config.users.is_empty() {
        log::info!("proxy authentication on for {} users", config.users.len());
    }
    // Whoever waits for the startup lines (a person, a supervisor) sees them now.
    crate::logging::flush();
    Ok(Running {
        addrs,
        config: config.clone(),
        rules,
        shutdown,
        grace: config.grace,
        acceptor,
        relay: relay_thread,
        pool,
    })
}

/// Writes the access-log line of a finished request and counts it for
/// `/metrics`: every request gets exactly one of each, wherever it ends.
fn finished(metrics: &Metrics, record: &AccessRecord<'_>) {
    // A CONNECT answered 200 is a tunnel: its duration is the tunnel's
    // life, which would swamp the request-latency histogram.
    let tunnel = record.method == "CONNECT" && record.status == 200;
    metrics.request(&Finished {
        status: record.status,
        bytes: record.bytes,
        duration: (!tunnel).then_some(record.duration),
        error: record.error,
    });
    logging::access(record);
}

/// Starts the server, installs signal handlers, and waits for it to stop.
/// On SIGHUP, `load` is called and the access rules and users it gives are
/// put in force (see `Running::reload`).
///
/// # Errors
/// `StartError` when a listener or thread cannot be set up.
pub fn run(config: ServeConfig, load: LoadConfig) -> Result<Stopped, StartError> {
    let running = start(config)?;
    let (rules, base) = (running.rules.clone(), running.config.clone());
    crate::shutdown::install_signals(running.shutdown().clone(), move || {
        rules.reload(&base, load());
    })?;
    Ok(running.wait())
}

/// Raises the open-files limit to fit every client connection plus its
/// upstream connection, as far as the hard limit allows.
fn raise_file_limit(max_connections: usize) -> Result<(), StartError> {
    let spare = 64;
    let wanted = (max_connections as u64) * 2 + spare;
    let limit = rlimit::increase_nofile_limit(wanted)?;
    if limit < max_connections as u64 + spare {
        return Err(StartError::FileLimit {
            limit,
            max_connections,
        });
    }
    if limit < (max_connections as u64) * 2 {
        log::warn!(
            "open-files limit {limit} covers fewer than {max_connections} proxied connections"
        );
    }
    Ok(())
}
