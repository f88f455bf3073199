//! A fleet of fetchproxy instances behind HAProxy, on loopback, with the
//! files `deploy/` ships (see support/fleet.rs): each URL kept to one
//! instance, an instance killed under load, a rolling restart under load,
//! CONNECT through HAProxy; and the deploy files themselves. The fetch
//! client spreading a batch over several proxies is tested in
//! `client_fleet`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Instant;

use fetchproxy::config::{Flags, ServeConfig};

use crate::support::fleet::{Fleet, LIMIT, NAMES, deploy_file, via_name};
use crate::support::load::{Load, Tally, fetch_once};
use crate::support::raw::connect_through;
use crate::support::{read_response, wait_until};

/// URLs spread over the fleet in the load tests.
const URLS: usize = 60;
/// Clients in the load tests; each has at most one request in flight.
const CLIENTS: usize = 6;

fn urls(fleet: &Fleet, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| fleet.url(&format!("/fleet/{n}")))
        .collect()
}

/// Which instance each URL lands on now: one fetch each through HAProxy.
fn placement(fleet: &Fleet, urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|url| {
            fetch_once(fleet.haproxy.addr, url)
                .unwrap_or_else(|err| panic!("{url}: {err}\n{}", fleet.diagnostics()))
        })
        .collect()
}

/// The failures of a load, one a line, for assertion messages.
fn failures_text(tally: &Tally, start: Instant) -> String {
    tally
        .failures()
        .iter()
        .map(|(url, why, at)| format!("{:>6} ms  {url}: {why}", (*at - start).as_millis()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn each_url_is_served_by_one_instance() {
    let fleet = Fleet::start();
    let list = urls(&fleet, URLS);
    let load = Load::start(fleet.haproxy.addr, list.clone(), 4);
    assert!(
        load.wait_for_more(URLS * 3, LIMIT),
        "{}",
        fleet.diagnostics()
    );
    let started = Instant::now();
    let tally = load.stop();
    assert_eq!(
        tally.failures().len(),
        0,
        "{}\n{}",
        failures_text(&tally, started),
        fleet.diagnostics()
    );

    let mut served: HashMap<usize, HashSet<String>> = HashMap::new();
    for outcome in &tally.outcomes {
        if let Ok(via) = &outcome.result {
            served.entry(outcome.url).or_default().insert(via.clone());
        }
    }
    let mut owner = Vec::new();
    for (n, url) in list.iter().enumerate() {
        let vias = served.get(&n).cloned().unwrap_or_default();
        assert_eq!(vias.len(), 1, "{url} served by {vias:?}");
        owner.extend(vias);
    }
    let used: HashSet<&String> = owner.iter().collect();
    assert_eq!(used.len(), 3, "URLs on {used:?} only");

    // The instances' access logs say the same: each URL in its owner's only.
    let logged = |name: &str, url: &str| {
        let needle = format!(" GET {url} 200 ");
        fleet
            .instances
            .iter()
            .find(|i| i.name == name)
            .is_some_and(|i| i.access_lines().iter().any(|l| l.contains(&needle)))
    };
    let in_owners_log = wait_until(LIMIT, || {
        list.iter().zip(&owner).all(|(url, via)| {
            NAMES
                .iter()
                .any(|name| via_name(name) == *via && logged(name, url))
        })
    });
    assert!(in_owners_log, "{}", fleet.diagnostics());
    for (url, via) in list.iter().zip(&owner) {
        for name in NAMES.iter().filter(|name| via_name(name) != *via) {
            assert!(!logged(name, url), "{url} also in {name}'s access log");
        }
    }
}

/// Issue 13's affinity test: with the cache in the request path, the
/// fleet fetches each URL from the origin once, on the one instance that
/// owns it.
#[test]
fn thirty_fetches_of_twenty_urls_reach_the_origin_twenty_times() {
    let fleet = Fleet::start();
    let list = urls(&fleet, 20);
    let rounds = 30;
    let vias: Vec<Vec<String>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (list, fleet) = (&list, &fleet);
                scope.spawn(move || {
                    let mut got = Vec::new();
                    for _ in (t..rounds).step_by(4) {
                        for url in list {
                            got.push(fetch_once(fleet.haproxy.addr, url).unwrap_or_else(|err| {
                                panic!("{url}: {err}\n{}", fleet.diagnostics())
                            }));
                        }
                    }
                    got
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("fetching thread"))
            .collect()
    });
    // Each thread fetched the list in order, round after round.
    for (n, url) in list.iter().enumerate() {
        let answered: HashSet<&String> = vias
            .iter()
            .flat_map(|got| got.iter().skip(n).step_by(list.len()))
            .collect();
        assert_eq!(answered.len(), 1, "{url} served by {answered:?}");
    }
    let targets: Vec<String> = fleet
        .origin
        .requests()
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(targets.len(), 20, "origin requests: {targets:?}");
    let unique: HashSet<&String> = targets.iter().collect();
    assert_eq!(unique.len(), 20, "origin requests: {targets:?}");
    // Every fetch of a URL is in its owner's access log (written just after
    // the answer), none elsewhere.
    let counts = |url: &str| -> Vec<usize> {
        let needle = format!(" GET {url} ");
        let mut counts: Vec<usize> = fleet
            .instances
            .iter()
            .map(|i| {
                i.access_lines()
                    .iter()
                    .filter(|l| l.contains(&needle))
                    .count()
            })
            .collect();
        counts.sort_unstable();
        counts
    };
    let all_logged = wait_until(LIMIT, || {
        list.iter()
            .all(|url| counts(url).iter().sum::<usize>() >= rounds)
    });
    assert!(all_logged, "{}", fleet.diagnostics());
    for url in &list {
        assert_eq!(counts(url), [0, 0, rounds], "{url}: access lines");
    }
}

#[test]
fn kill_9_of_one_instance_under_load_moves_only_its_urls() {
    let mut fleet = Fleet::start();
    let list = urls(&fleet, URLS);
    let before = placement(&fleet, &list);
    let victim = "b";
    let lost: Vec<usize> = (0..URLS)
        .filter(|&n| before[n] == via_name(victim))
        .collect();
    assert!(!lost.is_empty() && lost.len() < URLS, "{before:?}");

    let load = Load::start(fleet.haproxy.addr, list.clone(), CLIENTS);
    let started = Instant::now();
    assert!(load.wait_for_more(200, LIMIT), "{}", fleet.diagnostics());
    let killed = Instant::now();
    fleet.instance(victim).kill();
    fleet.wait_for(victim, false);
    assert!(load.wait_for_more(200, LIMIT), "{}", fleet.diagnostics());
    let tally = load.stop();
    let failures = tally.failures();
    // Only requests in flight on the killed instance may fail (HAProxy
    // retries those it may): one per client at most, none before the kill.
    assert!(
        failures.len() <= CLIENTS && failures.iter().all(|(_, _, at)| *at >= killed),
        "killed at {} ms:\n{}\n{}",
        (killed - started).as_millis(),
        failures_text(&tally, started),
        fleet.diagnostics()
    );

    let after = placement(&fleet, &list);
    for n in 0..URLS {
        if lost.contains(&n) {
            assert_ne!(after[n], via_name(victim), "{} stayed", list[n]);
        } else {
            assert_eq!(after[n], before[n], "{} moved off a live instance", list[n]);
        }
    }
    let moved = (0..URLS).filter(|&n| after[n] != before[n]).count();
    println!(
        "kill -9 of 1 of 3 instances: {moved} of {URLS} URLs moved ({:.0}%); \
         {} of {} requests failed",
        100.0 * moved as f64 / URLS as f64,
        failures.len(),
        tally.outcomes.len()
    );

    // Back again, it wins its URLs back, and only those.
    fleet.instance(victim).restart();
    fleet.wait_for_restarted(victim);
    assert_eq!(placement(&fleet, &list), before);
}

#[test]
fn rolling_sigterm_restart_under_load_fails_no_request() {
    let mut fleet = Fleet::start();
    let list = urls(&fleet, URLS);
    let load = Load::start(fleet.haproxy.addr, list, CLIENTS);
    let started = Instant::now();
    assert!(load.wait_for_more(100, LIMIT), "{}", fleet.diagnostics());
    let mut back = Vec::new();
    for name in NAMES {
        let code = fleet.instance(name).terminate();
        assert_eq!(
            code,
            Some(0),
            "{name} cut requests\n{}",
            fleet.diagnostics()
        );
        fleet.instance(name).restart();
        fleet.wait_for_restarted(name);
        back.push((name, Instant::now()));
        assert!(
            load.wait_for_more(100, LIMIT),
            "load stalled after {name}\n{}",
            fleet.diagnostics()
        );
    }
    let tally = load.stop();
    assert_eq!(
        tally.failures().len(),
        0,
        "{}\n{}",
        failures_text(&tally, started),
        fleet.diagnostics()
    );
    // The restarted processes took their share again.
    for (name, at) in back {
        let served = tally
            .outcomes
            .iter()
            .any(|o| o.at > at && o.result.as_ref().is_ok_and(|v| *v == via_name(name)));
        assert!(served, "{name} served nothing after its restart");
    }
    println!(
        "rolling SIGTERM restart of 3 instances under load: {} requests, 0 failed",
        tally.successes()
    );
}

#[test]
fn connect_tunnels_pass_and_origin_form_is_refused_through_haproxy() {
    let fleet = Fleet::start();
    let target = fleet.origin.addr.to_string();
    let (mut tunnel, answer, _) = connect_through(fleet.haproxy.addr, &target, b"");
    assert_eq!(
        answer.status,
        200,
        "{}\n{}",
        answer.head,
        fleet.diagnostics()
    );
    tunnel
        .write_all(format!("GET /tunnelled HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .expect("send through the tunnel");
    let (status, head, body) = read_response(&mut tunnel, LIMIT).expect("answer in the tunnel");
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"/tunnelled"[..]),
        "{head}"
    );
    // A tunnel's access line is written when it ends.
    drop(tunnel);
    let needle = format!(" CONNECT {target} 200 ");
    let logged = wait_until(LIMIT, || {
        fleet
            .instances
            .iter()
            .any(|i| i.access_lines().iter().any(|l| l.contains(&needle)))
    });
    assert!(logged, "{}", fleet.diagnostics());

    // The instances' own endpoints are not for clients.
    let mut client = TcpStream::connect(fleet.haproxy.addr).expect("connect");
    client
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: fleet\r\n\r\n")
        .expect("send");
    let (status, head, _) = read_response(&mut client, LIMIT).expect("an answer");
    assert_eq!(status, 403, "{head}");
}

/// One id per request in HAProxy's log and in the instance's: a client's
/// own id is kept when the instance would keep it, else HAProxy's goes to
/// both (an instance would otherwise have replaced it with one of its own).
#[test]
fn a_request_has_one_id_through_haproxy_and_the_instance() {
    let fleet = Fleet::start();
    for (sent, kept) in [("build-42.step-7", true), ("build 42/step 7", false)] {
        let url = fleet.url(&format!("/id/{kept}"));
        let host = fleet.origin.addr;
        let mut stream = TcpStream::connect(fleet.haproxy.addr).expect("connect");
        write!(
            stream,
            "GET {url} HTTP/1.1\r\nHost: {host}\r\nX-Request-Id: {sent}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let (status, head, _) = read_response(&mut stream, LIMIT).expect("an answer");
        assert_eq!(status, 200, "{head}");
        let id = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("x-request-id")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        if kept {
            assert_eq!(id, sent);
        } else {
            assert!(!id.is_empty() && id != sent, "{head}");
        }
        let needle = format!("id={id} ");
        let logged = wait_until(LIMIT, || {
            fleet
                .instances
                .iter()
                .any(|i| i.access_lines().iter().any(|l| l.contains(&needle)))
                && fleet.haproxy.log().contains(&format!("{{{id}}}"))
        });
        assert!(logged, "{id} not in both logs\n{}", fleet.diagnostics());
    }
}

#[test]
fn deploy_haproxy_cfg_passes_haproxys_own_check() {
    let output = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(deploy_file("haproxy.cfg"))
        .output()
        .expect("run haproxy -c (.ci/run installs haproxy)");
    assert!(output.status.success(), "{output:?}");
}

/// `Key=Value` lines of one section of a systemd unit, comments left out.
fn unit_section(unit: &str, section: &str) -> HashMap<String, String> {
    let header = format!("[{section}]");
    unit.lines()
        .skip_while(|line| line.trim() != header)
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn instance_example() -> ServeConfig {
    let path = deploy_file("instance.example.toml");
    ServeConfig::load(Some(&path), &Flags::default())
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn deploy_unit_drains_reloads_and_fits_the_instance_limits() {
    let unit = std::fs::read_to_string(deploy_file("fetchproxy@.service")).expect("read the unit");
    let service = unit_section(&unit, "Service");
    let key = |name: &str| {
        service
            .get(name)
            .unwrap_or_else(|| panic!("no {name}= in [Service]"))
            .as_str()
    };
    let example = instance_example();
    assert_eq!(
        key("ExecStart"),
        "/usr/local/bin/fetchproxy serve --config /etc/fetchproxy/%i.toml"
    );
    assert_eq!(key("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(key("KillSignal"), "SIGTERM");
    // A larger per-thread cache of freed blocks, for a large pool.
    assert_eq!(
        key("Environment"),
        "GLIBC_TUNABLES=glibc.malloc.tcache_count=32"
    );
    // A client socket and an upstream one per connection, and spare.
    let files: usize = key("LimitNOFILE").parse().expect("LimitNOFILE a number");
    assert!(files >= 2 * example.max_connections + 64, "{files}");
    // Just past the grace: the drain finishes before systemd's SIGKILL.
    let stop = humantime::parse_duration(key("TimeoutStopSec")).expect("a duration");
    assert!(
        stop > example.grace && stop <= example.grace + std::time::Duration::from_secs(10),
        "TimeoutStopSec {stop:?} against grace {:?}",
        example.grace
    );
}

#[test]
fn deploy_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(deploy_file("fetchproxy@.service")).expect("read the unit");
    // verify wants the program to exist: this build stands in for the installed one.
    let unit = unit.replace(
        "/usr/local/bin/fetchproxy",
        env!("CARGO_BIN_EXE_fetchproxy"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fetchproxy@a.service");
    std::fs::write(&path, unit).expect("write the unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze (.ci/run installs systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "", "systemd-analyze verify warned");
}

#[test]
fn deploy_files_agree_with_each_other() {
    let haproxy = std::fs::read_to_string(deploy_file("haproxy.cfg")).expect("read haproxy.cfg");
    let example = instance_example();
    let line = |start: &str| {
        haproxy
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} line in haproxy.cfg"))
    };
    // The example is instance a.
    let server_a = line("server a ");
    assert_eq!(
        server_a.split_whitespace().nth(2),
        Some(example.listen[0].to_string().as_str()),
        "{server_a}"
    );
    assert_eq!(example.via_name, via_name("a"));
    // HAProxy's connections to one instance fit what it allows one client.
    let defaults = line("default-server ");
    let words: Vec<&str> = defaults.split_whitespace().collect();
    let maxconn: usize = words
        .iter()
        .position(|w| *w == "maxconn")
        .and_then(|i| words.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no maxconn in {defaults}"));
    assert!(maxconn < example.max_conns_per_client, "{defaults}");
    // HAProxy notices a draining instance well before its idle connections
    // reach their deadline.
    let seconds = |word: &str| -> u64 {
        let at = words.iter().position(|w| *w == word).expect(word);
        humantime::parse_duration(words[at + 1])
            .map(|d| d.as_secs())
            .or_else(|_| words[at + 1].parse())
            .expect("a number or a duration")
    };
    assert!(
        seconds("inter") * seconds("fall") < example.idle_timeout.as_secs(),
        "{defaults}"
    );
}
