//! The access rules that SIGHUP reloads: `allow_dest`, `allow_clients`,
//! `dest_ports`, `connect_ports`, `purge_clients` and the users. `SharedRules` holds the
//! current set in an `ArcSwap`: every request takes its own `Arc` of it
//! once, without a lock, and uses that snapshot throughout, so a reload
//! never waits for a request and a request never sees half of a reload.
//! Other settings (listen, workers, timeouts, limits) are fixed at start.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use ipnet::IpNet;

use crate::access::PortRange;
use crate::auth::Users;
use crate::config::{self, ConfigError, ServeConfig};

/// One consistent set of access rules.
#[derive(Debug)]
pub struct Rules {
    /// Non-global destination ranges allowed anyway.
    pub allow_dest: Vec<IpNet>,
    /// Client ranges allowed.
    pub allow_clients: Vec<IpNet>,
    /// Destination ports for forwarded requests.
    pub dest_ports: Vec<PortRange>,
    /// Ports CONNECT may reach.
    pub connect_ports: Vec<u16>,
    /// Clients allowed to send PURGE.
    pub purge_clients: Vec<IpNet>,
    /// Users who may use the proxy (none: no credentials asked for).
    pub users: Users,
}

impl Rules {
    /// The config keys a reload puts in force; every other key takes a restart.
    pub const KEYS: [&str; 6] = [
        "allow_dest",
        "allow_clients",
        "dest_ports",
        "connect_ports",
        "purge_clients",
        "users",
    ];

    /// The rules of a resolved configuration.
    pub fn from_config(config: &ServeConfig) -> Rules {
        Rules {
            allow_dest: config.allow_dest.clone(),
            allow_clients: config.allow_clients.clone(),
            dest_ports: config.dest_ports.clone(),
            connect_ports: config.connect_ports.clone(),
            purge_clients: config.purge_clients.clone(),
            users: Users::new(&config.users),
        }
    }
}

/// The current rules, replaced whole on reload.
#[derive(Clone)]
pub struct SharedRules(Arc<ArcSwap<Rules>>);

impl fmt::Debug for SharedRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedRules").field(&self.current()).finish()
    }
}

impl SharedRules {
    /// Starts with `rules`.
    pub fn new(rules: Rules) -> SharedRules {
        SharedRules(Arc::new(ArcSwap::from_pointee(rules)))
    }

    /// The rules in force now, read without a lock; keep the result for
    /// one request.
    pub fn current(&self) -> Arc<Rules> {
        self.0.load_full()
    }

    /// Puts `rules` in force for every request that starts from now on; the
    /// old set is dropped by the last request that holds it.
    pub fn replace(&self, rules: Rules) {
        self.0.store(Arc::new(rules));
    }

    /// Applies a freshly loaded configuration's rules, or keeps the current
    /// ones when it failed to load. Says in the log which it was, naming
    /// the bad key, and which changed settings need a restart instead.
    pub fn reload(&self, running: &ServeConfig, fresh: Result<ServeConfig, ConfigError>) {
        match fresh {
            Ok(config) => {
                self.replace(Rules::from_config(&config));
                let reloaded = format!(
                    "reloaded rules: allow_dest, allow_clients, dest_ports, connect_ports, purge_clients, {}",
                    count_users(config.users.len())
                );
                let ignored = needing_restart(running, &config);
                if ignored.is_empty() {
                    log::info!("{reloaded} (other settings take a restart)");
                } else {
                    let (changed, takes) = match ignored.as_slice() {
                        [one] => (format!("{one} changed"), "it takes"),
                        _ => (format!("{} changed", ignored.join(", ")), "they take"),
                    };
                    log::warn!("{reloaded}; {changed} but not applied: {takes} a restart");
                }
            }
            Err(err) => log::error!("reload failed, keeping the old rules: {}", err.one_line()),
        }
    }
}

/// The settings that differ in `fresh` and that a reload cannot apply.
pub fn needing_restart(running: &ServeConfig, fresh: &ServeConfig) -> Vec<&'static str> {
    config::changed_keys(running, fresh)
        .into_iter()
        .filter(|key| !Rules::KEYS.contains(key))
        .collect()
}

/// "no users", "1 user", "2 users".
fn count_users(n: usize) -> String {
    match n {
        0 => "no users".to_string(),
        1 => "1 user".to_string(),
        n => format!("{n} users"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_keeps_the_rules_it_started_with() {
        let shared = SharedRules::new(Rules::from_config(&ServeConfig::default()));
        let before = shared.current();
        let config = ServeConfig {
            allow_dest: vec!["127.0.0.0/8".parse().expect("cidr")],
            ..ServeConfig::default()
        };
        shared.replace(Rules::from_config(&config));
        assert!(before.allow_dest.is_empty());
        assert_eq!(shared.current().allow_dest, config.allow_dest);
    }

    #[test]
    fn a_failed_reload_keeps_the_old_rules() {
        let running = ServeConfig::default();
        let shared = SharedRules::new(Rules::from_config(&running));
        shared.reload(
            &running,
            Err(ConfigError::Invalid(vec![config::Problem {
                origin: config::Origin::Flag("--allow-dest".into()),
                key: Some("allow_dest".into()),
                value: Some("nonsense".into()),
                reason: "bad".into(),
            }])),
        );
        assert_eq!(shared.current().connect_ports, vec![443]);
        let mut fresh = running.clone();
        fresh.connect_ports = vec![8443];
        fresh.workers = 2.try_into().expect("not zero");
        shared.reload(&running, Ok(fresh));
        assert_eq!(shared.current().connect_ports, vec![8443]);
    }

    #[test]
    fn only_settings_outside_the_rules_need_a_restart() {
        let running = ServeConfig::default();
        let mut fresh = running.clone();
        fresh.allow_dest = vec!["127.0.0.0/8".parse().expect("cidr")];
        fresh.connect_ports = vec![8443];
        fresh.dest_ports = vec![crate::access::PortRange::single(80)];
        assert!(needing_restart(&running, &fresh).is_empty());
        fresh.workers = 3.try_into().expect("not zero");
        fresh.idle_timeout = std::time::Duration::from_secs(1);
        fresh.access_log = Some("/var/log/fetchproxy/access.log".into());
        assert_eq!(
            needing_restart(&running, &fresh),
            ["workers", "idle_timeout", "access_log"]
        );
    }

    #[test]
    fn users_are_counted_in_words() {
        assert_eq!(count_users(0), "no users");
        assert_eq!(count_users(1), "1 user");
        assert_eq!(count_users(2), "2 users");
    }
}
