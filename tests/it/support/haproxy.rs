//! `Haproxy`: the real HAProxy (Debian's `haproxy`, installed by `.ci/run`)
//! started in the foreground on a free loopback port with a config the test
//! writes, stopped by its PID on drop. A missing `haproxy` fails the test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::client::wait_until;

/// A running HAProxy.
pub struct Haproxy {
    /// The frontend's address.
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

/// A free loopback port (bound, then released for the program to take).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local address").port()
}

impl Haproxy {
    /// Starts HAProxy with `config`, in which `{port}` is replaced by the
    /// frontend's free loopback port. Waits until that port accepts.
    pub fn start(config: &str) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let port = free_port();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config.replace("{port}", &port.to_string()))
            .expect("write haproxy.cfg");
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
            _dir: dir,
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
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // By PID: this child only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
