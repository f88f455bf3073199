//! Which proxy a URL goes to when `--proxy` lists several: rendezvous
//! (highest random weight) hashing of the URL's authority, path and query against
//! each proxy's name, so a URL always lands on the same proxy, and so in
//! the same cache, as a fleet behind a URL-hashing balancer would place it;
//! removing a proxy moves only the URLs it had. Health marks put a proxy
//! that stopped taking connections at the end of every ranking for a while.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use url::Url;

use crate::client::proxy::Proxy;

/// How long a proxy that refused a connection is tried only as a last resort.
const DOWN_FOR: Duration = Duration::from_secs(30);

/// The key a URL is placed by: its normalised authority, path and query,
/// without scheme or fragment (`url` has normalised host case, default
/// ports and percent-encoding already). The query is part of the cache key,
/// and the shipped HAProxy configuration hashes it too (`balance uri
/// whole`): a crawl of `?id=1`, `?id=2`, ... spreads over the fleet.
pub fn affinity_key(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    let mut key = match url.port() {
        Some(port) => format!("{host}:{port}{}", url.path()),
        None => format!("{host}{}", url.path()),
    };
    if let Some(query) = url.query() {
        key.push('?');
        key.push_str(query);
    }
    key
}

/// The indexes of `proxies` in the order `key` tries them: highest weight
/// first, ties broken by name. Depends only on `key` and the names, never
/// on their order in the list.
pub fn rank<S: AsRef<str>>(key: &str, proxies: &[S]) -> Vec<usize> {
    let mut weighted: Vec<(u64, &str, usize)> = proxies
        .iter()
        .enumerate()
        .map(|(i, name)| (weight(key, name.as_ref()), name.as_ref(), i))
        .collect();
    weighted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    weighted.into_iter().map(|(_, _, i)| i).collect()
}

/// A weight stable across runs, versions and machines: the first 8 bytes
/// of SHA-256(key, NUL, proxy name).
fn weight(key: &str, proxy: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update([0])
        .chain_update(proxy.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The proxies of a batch and what the workers learnt of their health.
pub struct Fleet {
    pub proxies: Vec<Proxy>,
    epoch: Instant,
    /// Per proxy: milliseconds after `epoch` until which it counts as down.
    down_until: Vec<AtomicU64>,
    /// Per proxy: its going down was reported and it has not served since.
    reported: Vec<AtomicBool>,
}

impl Fleet {
    /// All proxies up.
    pub fn new(proxies: Vec<Proxy>) -> Fleet {
        let n = proxies.len();
        Fleet {
            proxies,
            epoch: Instant::now(),
            down_until: (0..n).map(|_| AtomicU64::new(0)).collect(),
            reported: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// The order in which `url` tries the proxies: its ranking, with those
    /// marked down moved to the end (still tried when all else fails).
    pub fn order_for(&self, url: &Url) -> Vec<usize> {
        let names: Vec<&str> = self.proxies.iter().map(|p| p.name.as_str()).collect();
        let ranking = rank(&affinity_key(url), &names);
        let now = self.now_ms();
        let (up, down): (Vec<usize>, Vec<usize>) = ranking
            .into_iter()
            .partition(|&i| self.down_until[i].load(Ordering::Relaxed) <= now);
        up.into_iter().chain(down).collect()
    }

    /// Marks proxy `i` down for a while; true the first time since it last
    /// served (so its failure is reported once, not once per URL).
    pub fn mark_down(&self, i: usize) -> bool {
        let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
        self.down_until[i].store(until, Ordering::Relaxed);
        !self.reported[i].swap(true, Ordering::Relaxed)
    }

    /// Proxy `i` answered a request sent at `sent` (from [`Fleet::now`]):
    /// it is up again, unless it was marked down since that request went
    /// out (a request under way when a proxy stops is still answered, by a
    /// proxy that drains; that says nothing of the connections refused
    /// after it).
    pub fn mark_up(&self, i: usize, sent: u64) {
        let until = self.down_until[i].load(Ordering::Relaxed);
        if until == 0 {
            return;
        }
        let marked_at = until.saturating_sub(DOWN_FOR.as_millis() as u64);
        // A refusal that marks it down meanwhile stands.
        if marked_at < sent
            && self.down_until[i]
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.reported[i].store(false, Ordering::Relaxed);
        }
    }

    /// Whether every proxy is marked down: none has answered since each
    /// last refused a connection.
    pub fn all_down(&self) -> bool {
        let now = self.now_ms();
        self.down_until
            .iter()
            .all(|until| until.load(Ordering::Relaxed) > now)
    }

    /// The fleet's clock, in milliseconds, for [`Fleet::mark_up`].
    pub fn now(&self) -> u64 {
        self.now_ms()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("origin{}.example/page/{i}", i % 7))
            .collect()
    }

    fn owner<'a>(key: &str, proxies: &[&'a str]) -> &'a str {
        proxies[rank(key, proxies)[0]]
    }

    #[test]
    fn the_key_is_authority_path_and_query() {
        let key = |u: &str| affinity_key(&Url::parse(u).expect("url"));
        assert_eq!(
            key("http://Example.COM:80/a/b?q=1#f"),
            "example.com/a/b?q=1"
        );
        assert_eq!(key("http://example.com/a/b?"), "example.com/a/b?");
        assert_eq!(key("https://example.com/a/b"), "example.com/a/b");
        assert_eq!(key("http://example.com:8080/"), "example.com:8080/");
        assert_eq!(key("http://[::1]:81/x"), "[::1]:81/x");
    }

    #[test]
    fn ranking_is_stable_and_ignores_list_order() {
        let proxies = ["a:3128", "b:3128", "c:3128"];
        let reversed = ["c:3128", "b:3128", "a:3128"];
        for key in keys(200) {
            let first: Vec<&str> = rank(&key, &proxies).iter().map(|&i| proxies[i]).collect();
            let again: Vec<&str> = rank(&key, &proxies).iter().map(|&i| proxies[i]).collect();
            let other: Vec<&str> = rank(&key, &reversed).iter().map(|&i| reversed[i]).collect();
            assert_eq!(first, again);
            assert_eq!(first, other);
            let mut sorted = first.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, proxies, "every proxy ranked once");
        }
    }

    #[test]
    fn the_weights_do_not_change_between_versions() {
        // A change of hash would move every URL of a running fleet to
        // another cache: these values (SHA-256 of "example.com/a\0a:3128"
        // and so on, first 8 bytes) pin the function.
        assert_eq!(weight("example.com/a", "a:3128"), 0x56a0_900b_f8e8_bf32);
        assert_eq!(weight("example.com/a", "b:3128"), 0x4624_53ad_9386_b7d5);
        assert_eq!(weight("example.com/a", "c:3128"), 0x82c6_5e66_6dbd_8a46);
        assert_eq!(
            rank("example.com/a", &["a:3128", "b:3128", "c:3128"]),
            [2, 0, 1]
        );
    }

    #[test]
    fn removing_a_proxy_moves_only_its_urls() {
        let all = ["a:3128", "b:3128", "c:3128"];
        let without_b = ["a:3128", "c:3128"];
        let mut moved = 0;
        for key in keys(3000) {
            let before = owner(&key, &all);
            let after = owner(&key, &without_b);
            if before == "b:3128" {
                moved += 1;
                // Its next choice in the full ranking.
                assert_eq!(after, all[rank(&key, &all)[1]], "{key}");
            } else {
                assert_eq!(before, after, "{key} moved from {before}");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn urls_that_differ_only_by_query_spread_too() {
        let all = ["a:3128", "b:3128", "c:3128"];
        let key = |i: usize| {
            affinity_key(&Url::parse(&format!("http://crawl.example/item?id={i}")).expect("url"))
        };
        for proxy in all {
            assert!(
                (0..300).any(|i| owner(&key(i), &all) == proxy),
                "{proxy} got none"
            );
        }
    }

    #[test]
    fn urls_spread_over_every_proxy() {
        let all = ["a:3128", "b:3128", "c:3128"];
        let n = 3000;
        for proxy in all {
            let share = keys(n).iter().filter(|k| owner(k, &all) == proxy).count();
            // A third each, give or take what hashing allows.
            assert!(share > n / 5 && share < n / 2, "{proxy}: {share} of {n}");
        }
    }

    #[test]
    fn a_proxy_marked_down_goes_last_until_it_serves() {
        let entries: Vec<String> = (1..=3).map(|p| format!("127.0.0.1:{p}")).collect();
        let fleet = Fleet::new(crate::client::proxy::build(&entries, None).expect("valid"));
        let url = Url::parse("http://example.com/x").expect("url");
        let first = fleet.order_for(&url);
        let sent_before = fleet.now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(fleet.mark_down(first[0]), "the first failure is reported");
        assert!(!fleet.mark_down(first[0]), "the second is not");
        let order = fleet.order_for(&url);
        assert_eq!(order, [first[1], first[2], first[0]]);
        // An answer to a request sent before it went down says nothing.
        fleet.mark_up(first[0], sent_before);
        assert_eq!(fleet.order_for(&url), order);
        assert!(!fleet.mark_down(first[0]), "still reported once");
        std::thread::sleep(Duration::from_millis(2));
        fleet.mark_up(first[0], fleet.now());
        assert_eq!(fleet.order_for(&url), first);
        assert!(fleet.mark_down(first[0]), "reported again after it served");
    }

    #[test]
    fn the_fleet_is_down_when_every_proxy_is() {
        let entries: Vec<String> = (1..=2).map(|p| format!("127.0.0.1:{p}")).collect();
        let fleet = Fleet::new(crate::client::proxy::build(&entries, None).expect("valid"));
        assert!(!fleet.all_down());
        fleet.mark_down(0);
        assert!(!fleet.all_down());
        fleet.mark_down(1);
        assert!(fleet.all_down());
        std::thread::sleep(Duration::from_millis(2));
        fleet.mark_up(1, fleet.now());
        assert!(!fleet.all_down());
    }
}
