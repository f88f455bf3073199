//! The proxies a batch goes through: `--proxy` parsed into one or more
//! `Proxy` values (a name, the resolved addresses, the `Proxy-Authorization`
//! to send), `--proxy-user` applied over them, a left-out password asked for
//! on the terminal, and the start-up check that tells which proxies accept
//! connections. The credentials end up only in the header value; every name
//! shown to the user, written to the manifest or logged is `host:port`.
//! Which proxy each URL goes to is `fleet`'s business.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::Duration;

use base64ct::{Base64, Encoding};
use percent_encoding::percent_decode_str;

/// The most proxies one batch may spread over.
pub const MAX_PROXIES: usize = 64;

/// A proxy to send requests through.
pub struct Proxy {
    /// `host:port` as given (host in lowercase), without scheme or
    /// credentials: what messages and the manifest show, and what URLs are
    /// hashed against.
    pub name: String,
    /// Its addresses, tried in order.
    pub addrs: Vec<SocketAddr>,
    credentials: Option<Credentials>,
    /// The `Proxy-Authorization` value, once the password is known.
    authorization: Option<String>,
}

impl Proxy {
    /// The `Proxy-Authorization` header value to send, if any.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("name", &self.name)
            .field("addrs", &self.addrs)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

/// What is wrong with one `--proxy` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadProxy {
    #[error("no proxy address")]
    Empty,
    #[error("unsupported scheme {0:?}; a proxy is reached over http://")]
    Scheme(String),
    #[error("a proxy address has no path, query or fragment")]
    Path,
    #[error("no user name before the ':'")]
    NoUser,
    #[error("a user name cannot contain ':' (RFC 7617 §2)")]
    ColonInUser,
    #[error("the credentials are not UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("no port; give HOST:PORT, such as 127.0.0.1:8080 (fetchproxy serve's default)")]
    NoPort,
    #[error("no host; give HOST:PORT, such as 127.0.0.1:8080")]
    NoHost,
    #[error("cannot resolve the host ({0})")]
    Resolve(String),
    #[error("resolves to no address")]
    NoAddress,
    #[error("listed twice")]
    Repeated,
    #[error("more than {MAX_PROXIES} proxies")]
    TooMany,
}

/// Why the proxies cannot be used; the text never shows a password.
#[derive(Debug, thiserror::Error)]
pub enum ProxyArgError {
    /// `shown` is the entry with any credentials replaced by `***`.
    #[error("--proxy {shown:?}: {reason}")]
    Bad { shown: String, reason: BadProxy },
    #[error("--proxy: a comma in a user name or password splits the list there; write it as %2C")]
    CommaInCredentials,
    #[error("--proxy-user: no user name before the ':'")]
    NoUser,
    #[error(
        "no password given for the proxy, and no terminal to ask for it on ({0}); \
         set FETCHPROXY_PROXY_PASSWORD, or give it as --proxy-user USER:PASSWORD or in \
         --proxy http://USER:PASSWORD@HOST:PORT"
    )]
    NoTerminal(io::Error),
}

/// A user name and maybe a password, before a left-out password is asked for.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// `--proxy-user USER[:PASSWORD]`, split at the first `:` as curl does (the
/// password may contain `:`); no percent-decoding.
///
/// # Errors
/// `ProxyArgError::NoUser` when the user name is empty.
pub fn parse_proxy_user(text: &str) -> Result<Credentials, ProxyArgError> {
    let (user, password) = match text.split_once(':') {
        Some((user, password)) => (user, Some(password.to_string())),
        None => (text, None),
    };
    if user.is_empty() {
        return Err(ProxyArgError::NoUser);
    }
    Ok(Credentials {
        user: user.to_string(),
        password,
    })
}

/// One `--proxy` entry before its name is resolved.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    host_port: String,
    credentials: Option<Credentials>,
}

/// Parses `[http://][USER[:PASSWORD]@]HOST:PORT[/]`, or a bare `PORT` for
/// 127.0.0.1. USER and PASSWORD are percent-decoded (RFC 3986 §3.2.1).
fn parse_entry(text: &str) -> Result<Entry, BadProxy> {
    let text = text.trim();
    if text.is_empty() {
        return Err(BadProxy::Empty);
    }
    let rest = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => return Err(BadProxy::Scheme(scheme.to_string())),
        None => text,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, host_port) = match rest.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, rest),
    };
    if host_port.contains(['/', '?', '#']) {
        return Err(BadProxy::Path);
    }
    let credentials = userinfo.map(decode_userinfo).transpose()?;
    let host_port = if !host_port.is_empty() && host_port.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{host_port}")
    } else {
        host_port.to_ascii_lowercase()
    };
    Ok(Entry {
        host_port,
        credentials,
    })
}

fn decode_userinfo(userinfo: &str) -> Result<Credentials, BadProxy> {
    let decode = |part: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| BadProxy::NotUtf8)
    };
    // The first unescaped ':' separates user and password (RFC 3986 §3.2.1).
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (decode(user)?, Some(decode(password)?)),
        None => (decode(userinfo)?, None),
    };
    if user.is_empty() {
        return Err(BadProxy::NoUser);
    }
    if user.contains(':') {
        return Err(BadProxy::ColonInUser);
    }
    Ok(Credentials { user, password })
}

/// The entry as it may be shown: credentials replaced by `***`.
pub fn redact(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}"),
        None => text.to_string(),
    }
}

/// Parses every `--proxy` entry and resolves its name; `user`
/// (`--proxy-user`) wins over credentials in the entries. A password left
/// out is asked for later, by `ask_passwords`, once the proxies are known
/// to answer.
///
/// # Errors
/// A `ProxyArgError` naming the entry (credentials hidden) and what is wrong.
pub fn build(entries: &[String], user: Option<&Credentials>) -> Result<Vec<Proxy>, ProxyArgError> {
    let bad = |text: &str, reason| ProxyArgError::Bad {
        shown: redact(text),
        reason,
    };
    // The list is split at every comma, one inside a password written
    // without %2C too: `http://u:pa,ss@h:1` comes as `http://u:pa` and
    // `ss@h:1`, and an error about the first would show part of it.
    if entries
        .windows(2)
        .any(|pair| is_split_credential(&pair[0], &pair[1]))
    {
        return Err(ProxyArgError::CommaInCredentials);
    }
    if entries.len() > MAX_PROXIES {
        return Err(bad(&entries[MAX_PROXIES], BadProxy::TooMany));
    }
    let mut proxies: Vec<Proxy> = Vec::with_capacity(entries.len());
    for text in entries {
        let entry = parse_entry(text).map_err(|reason| bad(text, reason))?;
        if proxies.iter().any(|p| p.name == entry.host_port) {
            return Err(bad(text, BadProxy::Repeated));
        }
        match entry.host_port.rsplit_once(':') {
            _ if entry.host_port.is_empty() => return Err(bad(text, BadProxy::NoHost)),
            Some(("", port)) if port.parse::<u16>().is_ok() => {
                return Err(bad(text, BadProxy::NoHost));
            }
            Some((_, port)) if port.parse::<u16>().is_ok() => {}
            _ => return Err(bad(text, BadProxy::NoPort)),
        }
        let addrs: Vec<SocketAddr> = entry
            .host_port
            .to_socket_addrs()
            .map_err(|err| bad(text, BadProxy::Resolve(err.to_string())))?
            .collect();
        if addrs.is_empty() {
            return Err(bad(text, BadProxy::NoAddress));
        }
        let credentials = user.cloned().or(entry.credentials);
        let authorization = credentials.as_ref().and_then(|c| {
            let password = c.password.as_deref()?;
            Some(basic(&c.user, password))
        });
        proxies.push(Proxy {
            name: entry.host_port,
            addrs,
            credentials,
            authorization,
        });
    }
    Ok(proxies)
}

/// Whether `first` and `next` look like one entry cut at a comma inside its
/// credentials: `first` names no valid `HOST:PORT` and has no `@`, and
/// `next` carries the `@` but no scheme.
fn is_split_credential(first: &str, next: &str) -> bool {
    let names_a_port = parse_entry(first).is_ok_and(|entry| {
        entry
            .host_port
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    });
    !names_a_port && !first.contains('@') && next.contains('@') && !next.contains("://")
}

/// Asks for the password of a proxy user; the terminal does not echo it.
pub type AskPassword<'a> = dyn FnMut(&str) -> io::Result<String> + 'a;

/// Asks with `ask` for each password left out, once per user name.
///
/// # Errors
/// `ProxyArgError::NoTerminal` when it cannot be asked.
pub fn ask_passwords(
    proxies: &mut [Proxy],
    ask: &mut AskPassword<'_>,
) -> Result<(), ProxyArgError> {
    let mut asked: HashMap<String, String> = HashMap::new();
    for proxy in proxies {
        let Some(credentials) = &proxy.credentials else {
            continue;
        };
        if proxy.authorization.is_some() {
            continue;
        }
        let user = &credentials.user;
        let password = match asked.get(user) {
            Some(password) => password.clone(),
            None => {
                let password = ask(user).map_err(ProxyArgError::NoTerminal)?;
                asked.insert(user.clone(), password.clone());
                password
            }
        };
        proxy.authorization = Some(basic(user, &password));
    }
    Ok(())
}

/// `Basic base64(user ":" password)`, UTF-8 (RFC 7617 §2, §2.1).
fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        Base64::encode_string(format!("{user}:{password}").as_bytes())
    )
}

/// The environment variable a left-out proxy password is read from
/// before the terminal is asked (for CI, where a secret in the command
/// line shows in `ps` and in logs).
pub const PASSWORD_VARIABLE: &str = "FETCHPROXY_PROXY_PASSWORD";

/// Takes the password from `FETCHPROXY_PROXY_PASSWORD` when set and not
/// empty (a CI secret that is missing comes as an empty variable), else
/// asks on the terminal, as curl does, with echo off.
///
/// # Errors
/// The OS error when there is no terminal to ask on.
pub fn password_from_environment_or_terminal(user: &str) -> io::Result<String> {
    if let Some(password) = std::env::var_os(PASSWORD_VARIABLE).filter(|p| !p.is_empty()) {
        return password.into_string().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{PASSWORD_VARIABLE} is not valid UTF-8"),
            )
        });
    }
    rpassword::prompt_password(format!("Enter proxy password for user '{user}': "))
}

/// Why a proxy did not take a connection at the start.
#[derive(Debug)]
pub struct Unreachable {
    pub name: String,
    pub reason: String,
}

/// Opens (and closes) one TCP connection to each proxy at once, each within
/// `timeout`; returns the index and reason of those that did not accept one.
pub fn probe(proxies: &[Proxy], timeout: Duration) -> Vec<(usize, Unreachable)> {
    thread::scope(|scope| {
        let checks: Vec<_> = proxies
            .iter()
            .map(|proxy| {
                let check = move || reach(&proxy.addrs, timeout);
                thread::Builder::new()
                    .name("probe".into())
                    .spawn_scoped(scope, check)
            })
            .collect();
        checks
            .into_iter()
            .enumerate()
            .filter_map(|(i, spawned)| {
                let result = match spawned {
                    Ok(handle) => handle
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("probe panicked"))),
                    // No thread to spare: check in this one.
                    Err(_) => reach(&proxies[i].addrs, timeout),
                };
                let err = result.err()?;
                Some((
                    i,
                    Unreachable {
                        name: proxies[i].name.clone(),
                        reason: describe(&err, timeout),
                    },
                ))
            })
            .collect()
    })
}

fn reach(addrs: &[SocketAddr], timeout: Duration) -> io::Result<()> {
    let mut last = io::Error::other("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => return Ok(()),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// A connection failure in a few words.
pub fn describe(err: &io::Error, timeout: Duration) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            format!("no answer within {}", humantime::format_duration(timeout))
        }
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn entry(text: &str) -> Result<Entry, BadProxy> {
        parse_entry(text)
    }

    fn creds(user: &str, password: Option<&str>) -> Option<Credentials> {
        Some(Credentials {
            user: user.to_string(),
            password: password.map(str::to_string),
        })
    }

    #[test]
    fn entries_take_an_optional_scheme_credentials_and_slash() {
        for text in [
            "127.0.0.1:3128",
            "http://127.0.0.1:3128",
            "HTTP://127.0.0.1:3128/",
        ] {
            assert_eq!(
                entry(text),
                Ok(Entry {
                    host_port: "127.0.0.1:3128".into(),
                    credentials: None
                }),
                "{text}"
            );
        }
        assert_eq!(
            entry("http://alice:s%40cret%3Ax@Proxy.Example:8080").expect("valid"),
            Entry {
                host_port: "proxy.example:8080".into(),
                credentials: creds("alice", Some("s@cret:x")),
            }
        );
        assert_eq!(
            entry("bob@[::1]:3128").expect("valid").credentials,
            creds("bob", None)
        );
        assert_eq!(
            entry("http://carol:@h:1").expect("valid").credentials,
            creds("carol", Some(""))
        );
        assert_eq!(entry("3128").expect("a port").host_port, "127.0.0.1:3128");
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        assert_eq!(entry("https://h:1"), Err(BadProxy::Scheme("https".into())));
        assert_eq!(
            entry("socks5://h:1"),
            Err(BadProxy::Scheme("socks5".into()))
        );
        assert_eq!(entry("http://h:1/path"), Err(BadProxy::Path));
        assert_eq!(entry("h:1?q"), Err(BadProxy::Path));
        assert_eq!(entry(" "), Err(BadProxy::Empty));
        assert_eq!(entry("http://:pw@h:1"), Err(BadProxy::NoUser));
        assert_eq!(entry("http://a%3Ab:pw@h:1"), Err(BadProxy::ColonInUser));
        assert_eq!(entry("http://%FF:pw@h:1"), Err(BadProxy::NotUtf8));
    }

    #[test]
    fn errors_never_show_the_password() {
        let entries = ["http://alice:hunter2@127.0.0.1:3128/x".to_string()];
        let err = build(&entries, None).expect_err("a path");
        let text = err.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("alice"),
            "{text}"
        );
        assert!(text.contains("***@127.0.0.1:3128/x"), "{text}");
        assert_eq!(redact("127.0.0.1:3128"), "127.0.0.1:3128");
    }

    #[test]
    fn credentials_become_a_basic_header_and_stay_out_of_debug() {
        let entries = ["http://alice:open%20sesame@127.0.0.1:3128".to_string()];
        let proxies = build(&entries, None).expect("valid");
        // base64("alice:open sesame")
        assert_eq!(
            proxies[0].authorization(),
            Some("Basic YWxpY2U6b3BlbiBzZXNhbWU=")
        );
        assert_eq!(proxies[0].name, "127.0.0.1:3128");
        let debug = format!("{:?}", proxies[0]);
        assert!(
            !debug.contains("YWxp") && debug.contains("<hidden>"),
            "{debug}"
        );
    }

    #[test]
    fn proxy_user_wins_and_a_missing_password_is_asked_once_per_user() {
        let user = parse_proxy_user("bob").expect("valid");
        assert_eq!(Some(user.clone()), creds("bob", None));
        let mut asked = Vec::new();
        let mut ask = |name: &str| {
            asked.push(name.to_string());
            Ok("pw:with:colons".to_string())
        };
        let entries = [
            "http://alice:x@127.0.0.1:1".to_string(),
            "127.0.0.1:2".to_string(),
        ];
        let mut proxies = build(&entries, Some(&user)).expect("valid");
        assert!(proxies.iter().all(|p| p.authorization().is_none()));
        ask_passwords(&mut proxies, &mut ask).expect("asked");
        assert_eq!(asked, ["bob"]);
        // base64("bob:pw:with:colons")
        for proxy in &proxies {
            assert_eq!(
                proxy.authorization(),
                Some("Basic Ym9iOnB3OndpdGg6Y29sb25z")
            );
        }
        assert_eq!(
            parse_proxy_user("bob:a:b").expect("valid"),
            creds("bob", Some("a:b")).expect("some")
        );
        assert!(matches!(
            parse_proxy_user(":pw"),
            Err(ProxyArgError::NoUser)
        ));
    }

    #[test]
    fn no_terminal_for_the_password_is_a_clear_error() {
        let mut ask = |_: &str| Err(io::Error::other("no tty"));
        let entries = ["http://alice@127.0.0.1:1".to_string()];
        let mut proxies = build(&entries, None).expect("valid");
        let err = ask_passwords(&mut proxies, &mut ask).expect_err("cannot ask");
        assert!(
            err.to_string().contains("--proxy-user USER:PASSWORD"),
            "{err}"
        );
    }

    #[test]
    fn an_address_without_a_port_is_refused() {
        for text in ["proxy.example", "http://proxy.example/", "h:port", ":"] {
            let err = build(&[text.to_string()], None).expect_err(text);
            assert!(
                matches!(
                    &err,
                    ProxyArgError::Bad {
                        reason: BadProxy::NoPort,
                        ..
                    }
                ),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn a_port_without_a_host_is_refused_as_such() {
        for text in [
            ":3128",
            "http://u:p@:80",
            "http://alice:pw@",
            "http://alice:pw@/",
        ] {
            let err = build(&[text.to_string()], None).expect_err(text);
            assert!(
                matches!(
                    &err,
                    ProxyArgError::Bad {
                        reason: BadProxy::NoHost,
                        ..
                    }
                ),
                "{text}: {err}"
            );
            assert!(err.to_string().contains("no host"), "{err}");
        }
    }

    #[test]
    fn a_comma_in_a_password_is_named_without_showing_any_of_it() {
        // As clap hands over `http://alice:se,cret@127.0.0.1:1`.
        for entries in [
            ["http://alice:se", "cret@127.0.0.1:1"],
            ["alice:se", "cret@127.0.0.1:1"],
        ] {
            let entries = entries.map(str::to_string);
            let err = build(&entries, None).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains("%2C"), "{text}");
            assert!(!text.contains("alice") && !text.contains("cret"), "{text}");
        }
        // Two proxies, the second with credentials, are no such thing.
        let entries = ["127.0.0.1:1".to_string(), "u:p@127.0.0.1:2".to_string()];
        assert_eq!(build(&entries, None).expect("two proxies").len(), 2);
    }

    #[test]
    fn a_proxy_listed_twice_is_refused() {
        let entries = ["127.0.0.1:1".to_string(), "http://127.0.0.1:1/".to_string()];
        let err = build(&entries, None).expect_err("twice");
        assert!(matches!(
            err,
            ProxyArgError::Bad {
                reason: BadProxy::Repeated,
                ..
            }
        ));
    }

    #[test]
    fn probe_names_the_proxies_that_refuse() {
        let open = TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = closed.local_addr().expect("addr");
        drop(closed);
        let entries = [
            open.local_addr().expect("addr").to_string(),
            dead.to_string(),
        ];
        let proxies = build(&entries, None).expect("valid");
        let down = probe(&proxies, Duration::from_secs(3));
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(down[0].0, 1);
        assert_eq!(down[0].1.name, dead.to_string());
        assert_eq!(down[0].1.reason, "connection refused");
    }
}
