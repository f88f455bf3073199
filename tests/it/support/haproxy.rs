//! `Haproxy`: the real HAProxy (Debian's `haproxy`, installed by `.ci/run`)
//! started in the foreground with a config the test writes, stopped by its
//! PID on drop; its admin socket for the servers' states. A missing
//! `haproxy` fails the test.
//!
//! Its frontend's socket is bound here and handed over (`bind fd@N`), not
//! a port found free and bound again by HAProxy: the kernel hands a port
//! just released to the next `bind` to port 0 more often than chance, and
//! two HAProxies on one port (`SO_REUSEPORT`, its default) would share
//! that port's connections, one test's clients reaching the other's
//! backends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::client::wait_until;

/// A running HAProxy.
pub struct Haproxy {
    /// The frontend's address.
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy with `config`, in which `{dir}` is replaced by a
    /// directory of its own and the frontend's `bind 127.0.0.1:{port}` by a
    /// loopback socket bound here. The config must have the admin socket
    /// `stats socket {dir}/admin.sock`: HAProxy is up once it answers there.
    pub fn start(config: &str) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        // A copy for the child (close-on-exec until the child clears it).
        let inherited = listener.as_fd().try_clone_to_owned().expect("dup listener");
        let fd = inherited.as_raw_fd();
        for needed in ["bind 127.0.0.1:{port}", "stats socket {dir}/admin.sock"] {
            assert_eq!(
                config.matches(needed).count(),
                1,
                "{needed:?} once in:\n{config}"
            );
        }
        let path = dir.path().join("haproxy.cfg");
        let config = config
            .replace("bind 127.0.0.1:{port}", &format!("bind fd@{fd}"))
            .replace("{dir}", &dir.path().display().to_string());
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let log_file = std::fs::File::create(&log).expect("haproxy log file");
        let mut command = Command::new("haproxy");
        command
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log file"))
            .stderr(log_file);
        // SAFETY: between fork and exec the child only clears the
        // close-on-exec flag of a descriptor it owns (one system call).
        unsafe {
            command.pre_exec(move || {
                rustix::io::fcntl_setfd(&inherited, rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|err| {
            panic!("cannot start haproxy (.ci/run installs it: apt-get install haproxy): {err}")
        });
        // HAProxy has the socket now; the parent's copies go.
        drop((command, listener));
        let mut haproxy = Haproxy {
            addr,
            child,
            dir,
            log,
        };
        let socket = haproxy.dir.path().join("admin.sock");
        let up = wait_until(Duration::from_secs(15), || {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited at start ({status}):\n{}", haproxy.log());
            }
            UnixStream::connect(&socket).is_ok()
        });
        assert!(
            up,
            "haproxy did not answer on {}:\n{}",
            socket.display(),
            haproxy.log()
        );
        haproxy
    }

    /// What HAProxy printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The answer to `command` on the admin socket `{dir}/admin.sock`.
    pub fn admin(&self, command: &str) -> String {
        let socket = self.dir.path().join("admin.sock");
        admin(&socket, command).unwrap_or_else(|err| {
            panic!("admin socket {}: {err}\n{}", socket.display(), self.log())
        })
    }

    /// Whether HAProxy has `backend/server` up (`srv_op_state` 2 in
    /// `show servers state`).
    pub fn is_up(&self, backend: &str, server: &str) -> bool {
        let state = self.admin(&format!("show servers state {backend}"));
        state.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(3) == Some(&server) && fields.get(5) == Some(&"2")
        })
    }
}

/// One command on an admin socket: HAProxy answers and closes.
fn admin(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // By PID: this child only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
