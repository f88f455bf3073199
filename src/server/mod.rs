//! The server: wiring of listeners, acceptor, queue, workers, tunnel relay,
//! shared rules and shutdown. `start` returns a `Running` handle; `run` =
//! signals + start + announce + wait (SIGHUP reloads the rules). Nothing
//! here touches a request: a request's life starts in `worker.rs`, and
//! every request ends in `finish.rs`, whichever thread ends it.

mod acceptor;
mod cached;
mod conn;
mod context;
mod endpoints;
mod finish;
mod forward;
mod handback;
pub(crate) mod hangup;
pub(crate) mod idle;
mod in_flight;
mod job;
mod limits;
mod listen;
mod pace;
mod pool;
mod relay;
mod request_body;
mod request_id;
mod sched;
mod target;
mod tunnel;
mod worker;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::{Poll, Waker};

use crate::config::{ConfigError, ServeConfig};
use crate::metrics::Metrics;
use crate::rules::{Rules, SharedRules};
use crate::shutdown::Shutdown;
use acceptor::Acceptor;
use context::Context;
use handback::Handback;
use idle::IdleWorkers;
use in_flight::{CUT_LINES, InFlight};
use job::JobQueue;
use limits::ConnLimits;
pub use listen::StartError;
use pool::Pool;
use request_id::RequestIds;

/// Large shared fills received by threads of their own at once (see
/// `cached::BackgroundFills`); more stay with their requests.
const BACKGROUND_FILLS: usize = 32;

/// How often the end of the grace period is looked for while tunnels
/// outlive the requests.
const TUNNEL_WAIT_STEP: Duration = Duration::from_millis(20);

/// How the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every request finished within the grace period.
    Clean,
    /// The grace period ran out or a second signal cut requests short.
    CutShort,
}

/// Loads the configuration again for a reload: the config file re-read,
/// the command-line flags still over it.
pub type LoadConfig = Box<dyn Fn() -> Result<ServeConfig, ConfigError> + Send>;

/// A started server.
pub struct Running {
    addrs: Vec<SocketAddr>,
    config: Arc<ServeConfig>,
    /// The settings as given, before the start fitted the connection
    /// limits to the open-files limit: what a reload is judged against.
    given: Arc<ServeConfig>,
    rules: SharedRules,
    shutdown: Arc<Shutdown>,
    grace: std::time::Duration,
    /// Says whether it cut a request head short.
    acceptor: JoinHandle<bool>,
    /// Says how many tunnels the stop cut.
    relay: JoinHandle<usize>,
    pool: Pool,
    /// What each worker serves, for the lines of requests cut short.
    in_flight: Arc<InFlight>,
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
        self.rules.reload(&self.given, fresh);
    }

    /// Logs the startup lines: where it listens, which destinations it
    /// allows, whether it asks for credentials. Called once the signal
    /// handlers are in place, since whoever waits for these lines (a
    /// person, a supervisor, a test) may send a signal as soon as it sees
    /// them.
    pub fn announce(&self) {
        let config = &self.config;
        let shown: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        log::info!(
            "listening on {} with {} workers, queue {}",
            shown.join(", "),
            config.workers,
            config.queue
        );
        if config.allow_dest.is_empty() {
            log::info!(
                "destinations: globally routable addresses only; allow others (a local origin, say) with --allow-dest ADDR or CIDR"
            );
        } else {
            let allowed: Vec<String> = config.allow_dest.iter().map(ToString::to_string).collect();
            log::info!(
                "destinations: globally routable addresses, and {}",
                allowed.join(", ")
            );
        }
        // A list given replaces its default whole: say so where it did.
        let defaults = ServeConfig::default();
        if config.dest_ports != defaults.dest_ports {
            log::info!(
                "destination ports: {} only (the list given replaces the default {})",
                joined(&config.dest_ports),
                joined(&defaults.dest_ports)
            );
        }
        if config.connect_ports.is_empty() {
            log::info!("CONNECT: off (the list of CONNECT ports given is empty)");
        } else if config.connect_ports != defaults.connect_ports {
            log::info!(
                "CONNECT ports: {} only (the list given replaces the default {})",
                joined(&config.connect_ports),
                joined(&defaults.connect_ports)
            );
        }
        if config.allow_clients != defaults.allow_clients {
            log::info!(
                "clients: {} only (the list given replaces the default: loopback, private, link-local and shared ranges)",
                joined(&config.allow_clients)
            );
        }
        if config.purge_clients != defaults.purge_clients {
            log::info!(
                "PURGE: from {} only (the list given replaces the default: loopback)",
                joined(&config.purge_clients)
            );
        }
        match config.users.len() {
            0 => {}
            1 => log::info!("proxy authentication on for 1 user"),
            n => log::info!("proxy authentication on for {n} users"),
        }
        crate::logging::flush();
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
        let stopping = heads_cut || !finished || self.shutdown.is_stopping_now();
        let mut cut = 0;
        if stopping {
            // Tunnels still open are cut too.
            self.shutdown.stop_now();
            // The requests still running end with the process: their lines
            // are written now.
            cut = self.in_flight.cut_all();
        }
        // Open tunnels have the same grace as requests: past it, they are
        // cut too.
        while !self.relay.is_finished() && !self.shutdown.is_stopping_now() {
            if Instant::now() >= deadline {
                self.shutdown.stop_now();
                break;
            }
            std::thread::sleep(TUNNEL_WAIT_STEP);
        }
        // Tunnels cut by the stop, whenever it came (a second signal while
        // the relay waited for the last tunnels to end, too).
        let tunnels = self.relay.join().unwrap_or(0);
        // Only what was cut makes the stop unclean: a second signal to an
        // idle proxy (as `timeout` sends) cuts nothing.
        if heads_cut || cut > 0 || tunnels > 0 {
            match (cut, tunnels) {
                (0, 0) => log::warn!("stopped: requests still arriving were cut short"),
                (0, 1) => log::warn!("stopped: 1 open tunnel was closed"),
                (0, n) => log::warn!("stopped: {n} open tunnels were closed"),
                (1, _) => log::warn!("stopped: 1 request was cut short ({CUT_LINES})"),
                (n, _) => log::warn!("stopped: {n} requests were cut short ({CUT_LINES})"),
            }
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
pub fn start(mut config: ServeConfig) -> Result<Running, StartError> {
    let given = Arc::new(config.clone());
    let tls = crate::upstream::tls_config(&config)?;
    let file_limit = listen::raise_file_limit(&mut config, cached::PAGE_FILES_MAX)?;
    let listeners = listen::bind(&config)?;
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
    let agents = crate::upstream::Agents::new(&config, &tls, &rules, &metrics);
    let cache = cached::open(&config, cached::page_files(file_limit, &config))?;
    let refresher = cached::Refresher::spawn(&cache, agents.current(), &config)?;
    let ids = Arc::new(RequestIds::new());
    let limits = ConnLimits::new(config.max_connections, config.max_conns_per_client);
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(config.queue.get());
    let ctx = Arc::new(Context {
        config: config.clone(),
        agents,
        cache,
        refresher,
        background: cached::BackgroundFills::new(BACKGROUND_FILLS),
        rules: rules.clone(),
        shutdown: shutdown.clone(),
        handback,
        ids: ids.clone(),
        relay,
        metrics: metrics.clone(),
        limits: limits.clone(),
        queue: jobs_rx.clone(),
        in_flight: Arc::new(InFlight::new(config.workers.get())),
    });
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let idle = IdleWorkers::new(config.workers.get(), cpus);
    let pool = Pool::spawn(config.workers.get(), &jobs_rx, &idle, &ctx)?;
    let in_flight = ctx.in_flight.clone();
    drop(jobs_rx);
    let acceptor = Acceptor::new(
        poll,
        listeners,
        JobQueue::new(jobs_tx, idle),
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
        .spawn(move || {
            sched::batch_this_thread();
            acceptor.run()
        })?;
    Ok(Running {
        addrs,
        config: config.clone(),
        given,
        rules,
        shutdown,
        grace: config.grace,
        acceptor,
        relay: relay_thread,
        pool,
        in_flight,
    })
}

/// Starts the server, installs signal handlers, and waits for it to stop.
/// On SIGHUP, `load` is called and the access rules and users it gives are
/// put in force (see `Running::reload`); without it (no config file), the
/// rules stay as the flags set them, and the log says so.
///
/// # Errors
/// `StartError` when a listener or thread cannot be set up.
pub fn run(config: ServeConfig, load: Option<LoadConfig>) -> Result<Stopped, StartError> {
    // Handlers first: a SIGTERM or SIGHUP sent while the server starts, or
    // as soon as its startup lines show, drains or reloads it; it does not
    // kill the process.
    let signals = crate::shutdown::Signals::register()?;
    let running = start(config)?;
    let (rules, base) = (running.rules.clone(), running.given.clone());
    signals.serve(running.shutdown().clone(), move || match &load {
        Some(load) => rules.reload(&base, load()),
        None => log::info!(
            "no config file to reload (no --config): the rules stay as the flags set them"
        ),
    })?;
    running.announce();
    Ok(running.wait())
}

/// `items` shown one after the other: `80, 443, 1024-65535`.
fn joined<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
