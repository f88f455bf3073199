//! Shutdown state and signals: the first SIGTERM/SIGINT starts draining and
//! wakes the acceptor, a second one asks to stop now; SIGHUP reopens the
//! access-log file and calls the server's reload, SIGUSR1 only reopens the
//! file (logrotate sends either). Knows nothing of HTTP or rules; only this
//! module knows how the acceptor is woken.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Instant;

use mio::Waker;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const NOW: u8 = 2;

/// Shared shutdown state of one server.
#[derive(Debug)]
pub struct Shutdown {
    state: AtomicU8,
    /// When draining began: the grace period counts from here.
    drain_started: OnceLock<Instant>,
    waker: Arc<Waker>,
}

impl Shutdown {
    /// State for a server whose acceptor is woken through `waker`.
    pub fn new(waker: Arc<Waker>) -> Shutdown {
        Shutdown {
            state: AtomicU8::new(RUNNING),
            drain_started: OnceLock::new(),
            waker,
        }
    }

    /// Stop accepting, finish what is queued and in flight.
    pub fn begin_drain(&self) {
        self.drain_started.get_or_init(Instant::now);
        let _ = self
            .state
            .compare_exchange(RUNNING, DRAINING, Ordering::SeqCst, Ordering::SeqCst);
        self.wake();
    }

    /// Stop at once, cutting requests short.
    pub fn stop_now(&self) {
        self.drain_started.get_or_init(Instant::now);
        self.state.store(NOW, Ordering::SeqCst);
        self.wake();
    }

    /// Whether draining (or stopping now) has begun.
    pub fn is_draining(&self) -> bool {
        self.state.load(Ordering::SeqCst) != RUNNING
    }

    /// When draining (or stopping now) began, if it has.
    pub fn draining_since(&self) -> Option<Instant> {
        self.drain_started.get().copied()
    }

    /// Whether a stop-now was asked for.
    pub fn is_stopping_now(&self) -> bool {
        self.state.load(Ordering::SeqCst) == NOW
    }

    /// Wakes the acceptor's readiness loop.
    pub fn wake(&self) {
        if let Err(err) = self.waker.wake() {
            log::error!("cannot wake the acceptor: {err}");
        }
    }
}

/// The process's signal handlers, registered: from then on SIGTERM,
/// SIGINT, SIGHUP and SIGUSR1 are caught and kept until `serve` acts on
/// them, so a signal sent while the server is still starting is not lost
/// (nor fatal, as SIGTERM and SIGHUP are by default).
pub struct Signals(signal_hook::iterator::Signals);

impl Signals {
    /// Registers the handlers.
    ///
    /// # Errors
    /// When the handlers cannot be registered.
    pub fn register() -> io::Result<Signals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]).map(Signals)
    }

    /// Starts the `signals` thread, which also acts on the signals caught
    /// before it: the first SIGTERM/SIGINT begins draining, the second
    /// stops now; each SIGHUP reopens the access-log file and runs `reload`
    /// on that thread, each SIGUSR1 reopens the access-log file.
    ///
    /// # Errors
    /// When the thread cannot start.
    pub fn serve(
        self,
        shutdown: Arc<Shutdown>,
        reload: impl Fn() + Send + 'static,
    ) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGUSR1};
        let Signals(mut signals) = self;
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if signal == SIGUSR1 {
                        log::info!("signal {signal}: reopening the access log");
                        crate::logging::reopen();
                        continue;
                    }
                    if signal == SIGHUP {
                        log::info!(
                            "signal {signal}: reopening the access log, reloading the access rules and users"
                        );
                        crate::logging::reopen();
                        reload();
                        continue;
                    }
                    if shutdown.is_draining() {
                        log::warn!("second signal ({signal}): stopping now");
                        shutdown.stop_now();
                        break;
                    }
                    log::info!("signal {signal}: draining; a second signal stops at once");
                    shutdown.begin_drain();
                }
            })?;
        Ok(())
    }
}
