//! An https origin on loopback whose certificate is signed by a private
//! CA made for the test with the `openssl` command (`.ci/run` installs
//! it; without it the tests that use this fail). The origin answers every
//! request with `hello` over rustls, ureq's own TLS library.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What the origin answers.
pub const BODY: &str = "hello";

/// A private CA, and an origin with a certificate it signed for 127.0.0.1.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    /// The CA's certificate, in PEM.
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsOrigin {
    pub fn start() -> TlsOrigin {
        TlsOrigin::presenting("leaf")
    }

    /// An origin that presents the CA's own certificate as its own: what
    /// `openssl req -x509` alone makes of a "self-signed" server.
    pub fn start_self_signed() -> TlsOrigin {
        TlsOrigin::presenting("ca")
    }

    /// An origin presenting `name`.pem with `name`.key.
    fn presenting(name: &str) -> TlsOrigin {
        let dir = tempfile::tempdir().expect("temp dir");
        make_certificates(dir.path());
        let read = |file: String| std::fs::read(dir.path().join(file)).expect("generated file");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(format!("{name}.pem")))
                .collect::<Result<_, _>>()
                .expect("certificate");
        let key = PrivateKeyDer::from_pem_slice(&read(format!("{name}.key"))).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let config = config.clone();
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    answer(rustls::StreamOwned::new(conn, stream));
                });
            }
        });
        TlsOrigin {
            addr,
            ca_file: dir.path().join("ca.pem"),
            _dir: dir,
        }
    }

    /// An https URL of this origin.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

/// Reads one request head and answers it, closing the connection.
fn answer(mut tls: rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>) {
    let mut reader = BufReader::new(&mut tls);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tls.write_all(response.as_bytes());
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Writes `ca.pem` (a CA) and `leaf.pem`/`leaf.key` (signed by it, for
/// 127.0.0.1 and localhost) into `dir`.
fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    let curve = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &curve[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=fetchproxy test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ],
    );
    openssl(
        dir,
        &[
            &["req"],
            &curve[..],
            &[
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=localhost",
            ],
        ],
    );
    openssl(
        dir,
        &[&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]],
    );
}

/// Runs `openssl` with these arguments in `dir`; panics when it fails or
/// is not installed.
fn openssl(dir: &Path, args: &[&[&str]]) {
    let args: Vec<&str> = args.concat();
    let output = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("openssl must be installed (.ci/run installs it): {err}"));
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
