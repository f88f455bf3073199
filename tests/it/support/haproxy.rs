//! `Haproxy`: the real HAProxy (Debian's `haproxy`, installed by `.ci/run`)
//! started in the foreground on a free loopback port with a config the test
//! writes, stopped by its PID on drop; its admin socket for the servers'
//! states. A missing `haproxy` fails the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
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

/// A free loopback port (bound, then released for the program to take).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local address").port()
}

impl Haproxy {
    /// Starts HAProxy with `config`, in which `{port}` is replaced by the
    /// frontend's free loopback port and `{dir}` by a directory of its own
    /// (for `admin.sock`). Waits until that port accepts.
    pub fn start(config: &str) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let port = free_port();
        let path = dir.path().join("haproxy.cfg");
        let config = config
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let log_file = std::fs::File::create(&log).expect("haproxy log file");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start haproxy (.ci/run installs it: apt-get install haproxy): {err}")
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut haproxy = Haproxy {
            addr,
            child,
            dir,
            log,
        };
        let up = wait_until(Duration::from_secs(15), || {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited at start ({status}):\n{}", haproxy.log());
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(up, "haproxy did not listen on {addr}:\n{}", haproxy.log());
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
