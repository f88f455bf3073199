//! What every worker shares: the settings, the rules in force, the one
//! upstream agent, the cache, and the handles to the acceptor, the tunnel relay and
//! the counters. Built once by `server::start`.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::cache::Cache;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::rules::SharedRules;
use crate::server::cached::{BackgroundFills, Refresher};
use crate::server::conn::ClientConn;
use crate::server::handback::Handback;
use crate::server::in_flight::InFlight;
use crate::server::job::Job;
use crate::server::limits::ConnLimits;
use crate::server::request_id::RequestIds;
use crate::server::tunnel::Relay;
use crate::shutdown::Shutdown;

/// What every worker shares.
pub struct Context {
    pub config: Arc<ServeConfig>,
    /// The access rules in force; a request takes one snapshot of them.
    pub rules: SharedRules,
    pub agents: crate::upstream::Agents,
    /// The HTTP cache (off when `cache_mem` is 0).
    pub cache: Cache,
    /// The cache's own revalidations, made off the request path.
    pub refresher: Refresher,
    /// Large shared fills received by threads of their own.
    pub background: Arc<BackgroundFills>,
    pub shutdown: Arc<Shutdown>,
    pub handback: Handback<ClientConn>,
    pub ids: Arc<RequestIds>,
    pub relay: Relay,
    pub metrics: Arc<Metrics>,
    /// Open-connection counts, for `/metrics`.
    pub limits: Arc<ConnLimits>,
    /// The workers' queue, for its length on `/metrics`.
    pub queue: Receiver<Job>,
    /// The request each worker serves, for the lines of those cut short.
    pub in_flight: Arc<InFlight>,
}
