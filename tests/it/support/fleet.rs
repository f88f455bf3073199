//! A fleet on loopback, as `deploy/` describes it: three `fetchproxy serve`
//! processes (the real binary, with `deploy/instance.example.toml`), the
//! real HAProxy in front with `deploy/haproxy.cfg`, and an origin that
//! answers every path with the path as its body (cacheable for ten
//! minutes). The shipped files are used as they are, with only addresses,
//! paths and this machine's limits substituted, so the tests check what an
//! operator installs. Instances are stopped, killed and restarted by PID.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::haproxy::Haproxy;
use super::{Origin, ProxyProcess, Reply, wait_until};

/// The backend and its servers' names in `deploy/haproxy.cfg`.
pub const BACKEND: &str = "fetchproxy";
pub const NAMES: [&str; 3] = ["a", "b", "c"];
/// Long enough for HAProxy's checks (2 s x 2) on a busy machine.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A file shipped in `deploy/`.
pub fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

/// `deploy/haproxy.cfg` for this machine: the frontend on `{port}`, the
/// admin socket in `{dir}`, the servers at `instances`, logs on stdout, no
/// chroot, user switch or daemon mode (HAProxy stays our child, stopped by
/// PID), and a `maxconn` within this machine's open-files limit. Panics if
/// a line to substitute is not there, so that the file cannot drift away
/// from what the tests run.
pub fn haproxy_config(instances: &[SocketAddr]) -> String {
    let path = deploy_file("haproxy.cfg");
    let mut config = std::fs::read_to_string(&path).expect("read deploy/haproxy.cfg");
    let mut swap = |from: &str, to: &str| {
        assert_eq!(
            config.matches(from).count(),
            1,
            "{from:?} once in {}",
            path.display()
        );
        config = config.replace(from, to);
    };
    swap(
        "    log /dev/log local0\n",
        "    log stdout format raw local0\n",
    );
    swap("    log /dev/log local1 notice\n", "");
    swap("    chroot /var/lib/haproxy\n", "");
    swap("    user haproxy\n", "");
    swap("    group haproxy\n", "");
    swap("    daemon\n", "");
    swap(
        "stats socket /run/haproxy/admin.sock mode 660",
        "stats socket {dir}/admin.sock mode 600",
    );
    // HAProxy wants two descriptors per connection; the test machine's
    // hard limit may be lower than a production one.
    swap("    maxconn 20000\n", "    maxconn 2000\n");
    swap("    bind :3128\n", "    bind 127.0.0.1:{port}\n");
    for (n, addr) in instances.iter().enumerate() {
        swap(&format!(" 127.0.0.1:{} ", 3129 + n), &format!(" {addr} "));
    }
    config
}

/// A loopback port below the range the kernel hands out for outgoing
/// connections, so that no client socket takes it while an instance
/// restarts on it.
fn instance_port() -> u16 {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id();
    for n in 0..1000u32 {
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7919)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000-31999");
}

/// One instance: its address and name stay across restarts.
pub struct Instance {
    pub name: &'static str,
    pub addr: SocketAddr,
    args: Vec<String>,
    access_log: PathBuf,
    process: Option<ProxyProcess>,
}

impl Instance {
    fn start(name: &'static str, dir: &Path, origin: SocketAddr) -> Instance {
        let addr = SocketAddr::from(([127, 0, 0, 1], instance_port()));
        let access_log = dir.join(format!("{name}.log"));
        let example = deploy_file("instance.example.toml");
        let args = [
            "--config",
            example.to_str().expect("utf-8 path"),
            "--listen",
            &addr.to_string(),
            "--via-name",
            &via_name(name),
            "--access-log",
            access_log.to_str().expect("utf-8 path"),
            // Local origins, CONNECT to the origin's port, and a pool sized
            // for a test (the example keeps the defaults).
            "--allow-dest",
            "127.0.0.0/8",
            "--connect-port",
            &origin.port().to_string(),
            "--workers",
            "16",
        ]
        .map(String::from)
        .to_vec();
        let mut instance = Instance {
            name,
            addr,
            args,
            access_log,
            process: None,
        };
        instance.restart();
        instance
    }

    /// Starts the process again on the same address (again and again while
    /// the port is still held, up to `LIMIT`).
    pub fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let deadline = Instant::now() + LIMIT;
        loop {
            match ProxyProcess::spawn(&args) {
                Ok(process) => {
                    self.process = Some(process);
                    return;
                }
                Err(err) if Instant::now() > deadline => panic!("{err}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn process(&mut self) -> &mut ProxyProcess {
        self.process.as_mut().expect("instance running")
    }

    /// SIGTERM, then the exit code once it has drained.
    pub fn terminate(&mut self) -> Option<i32> {
        let process = self.process();
        process.signal("TERM");
        // The instance example's grace, and some.
        process
            .wait_exit(Duration::from_secs(40))
            .and_then(|status| status.code())
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        let process = self.process();
        process.signal("KILL");
        assert!(
            process.wait_exit(LIMIT).is_some(),
            "instance {} survived SIGKILL",
            self.name
        );
    }

    /// The access log's lines so far (across restarts).
    pub fn access_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The process's own log (startup, draining, errors).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.log().join("\n"))
            .unwrap_or_default()
    }
}

/// The `Via` name of instance `name`: what a response says served it.
pub fn via_name(name: &str) -> String {
    format!("fetchproxy-{name}")
}

/// Three instances, HAProxy and the origin.
pub struct Fleet {
    pub origin: Origin,
    pub instances: Vec<Instance>,
    pub haproxy: Haproxy,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts everything and waits until HAProxy has every instance up.
    pub fn start() -> Fleet {
        let origin = Origin::start(|request| {
            Reply::ok("text/plain", request.target.clone())
                .with_header("Cache-Control", "max-age=600")
        });
        let dir = tempfile::tempdir().expect("temp dir for the fleet");
        let instances: Vec<Instance> = NAMES
            .iter()
            .map(|name| Instance::start(name, dir.path(), origin.addr))
            .collect();
        let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
        let haproxy = Haproxy::start(&haproxy_config(&addrs));
        let fleet = Fleet {
            origin,
            instances,
            haproxy,
            _dir: dir,
        };
        for name in NAMES {
            fleet.wait_for(name, true);
        }
        fleet
    }

    /// `http://ORIGIN{path}`.
    pub fn url(&self, path: &str) -> String {
        self.origin.url(path)
    }

    /// The instance named `name`.
    pub fn instance(&mut self, name: &str) -> &mut Instance {
        self.instances
            .iter_mut()
            .find(|i| i.name == name)
            .expect("an instance of the fleet")
    }

    /// Waits until HAProxy has `name` up (`up`) or down; panics after `LIMIT`.
    pub fn wait_for(&self, name: &str, up: bool) {
        let seen = wait_until(LIMIT, || self.haproxy.is_up(BACKEND, name) == up);
        assert!(
            seen,
            "HAProxy never had {name} {}\n{}",
            if up { "up" } else { "down" },
            self.diagnostics()
        );
    }

    /// Waits until a restarted instance has answered HAProxy's checks
    /// (`rise 2`) and HAProxy has it up, so that it is the new process
    /// that HAProxy sends to.
    pub fn wait_for_restarted(&self, name: &str) {
        let instance = self
            .instances
            .iter()
            .find(|i| i.name == name)
            .expect("an instance of the fleet");
        let before = checks_answered(instance);
        let checked = wait_until(LIMIT, || checks_answered(instance) >= before + 2);
        assert!(checked, "no checks reached {name}\n{}", self.diagnostics());
        self.wait_for(name, true);
    }

    /// HAProxy's log and every instance's own log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut text = format!("--- haproxy\n{}", self.haproxy.log());
        for instance in &self.instances {
            text.push_str(&format!("--- {}\n{}\n", instance.name, instance.log()));
        }
        text
    }
}

/// `/healthz` requests the instance has answered 200 (the access log spans
/// its restarts).
fn checks_answered(instance: &Instance) -> usize {
    instance
        .access_lines()
        .iter()
        .filter(|line| line.contains(" GET /healthz 200 "))
        .count()
}
