//! What the client sends for one URL: the request head (absolute-form GET,
//! also for https URLs; Host, User-Agent, Accept, Proxy-Authorization and
//! the user's `-H` headers), and the checks on `-H` values. Pure: no sockets.

use std::str::FromStr;

use url::Url;

use crate::http::headers::is_hop_by_hop;

/// The User-Agent sent unless `-A` or `-H` says otherwise.
fn default_user_agent() -> String {
    format!("fetchproxy/{}", env!("CARGO_PKG_VERSION"))
}

/// A request header given with `-H 'Name: value'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraHeader {
    pub name: String,
    /// Empty means: do not send this header, not even fetch's own default.
    pub value: String,
}

/// Why a `-H` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("expected 'Name: value'")]
    NoColon,
    #[error("{0:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)")]
    BadName(String),
    #[error("the value of {0} holds a control character")]
    BadValue(String),
    #[error("{0} is a hop-by-hop header; fetch manages its own connection to the proxy")]
    HopByHop(String),
    #[error("Proxy-Authorization comes from --proxy-user or --proxy http://USER:PASS@HOST:PORT")]
    ProxyAuthorization,
    #[error("Host comes from the URL")]
    Host,
    #[error("{0} describes a request body, and fetch sends none")]
    Body(String),
}

/// Whether `value` holds a control character a header value cannot
/// carry (RFC 9110 §5.5: visible characters, spaces and tabs): CR or LF
/// would end the header, or the request, early.
fn has_control(value: &str) -> bool {
    value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// `-A TEXT`: a User-Agent value, trimmed; empty sends none.
///
/// # Errors
/// When it holds a control character.
pub fn parse_user_agent(text: &str) -> Result<String, String> {
    let value = text.trim_matches([' ', '\t']);
    if has_control(value) {
        return Err("the User-Agent holds a control character".to_string());
    }
    Ok(value.to_string())
}

impl FromStr for ExtraHeader {
    type Err = HeaderError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, value) = text.split_once(':').ok_or(HeaderError::NoColon)?;
        // RFC 9112 §5.1: no whitespace between the name and the colon.
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HeaderError::BadName(name.to_string()));
        }
        // RFC 9110 §5.5: the value is visible characters, spaces and tabs;
        // leading and trailing whitespace is not part of it.
        let value = value.trim_matches([' ', '\t']);
        if has_control(value) {
            return Err(HeaderError::BadValue(name.to_string()));
        }
        if name.eq_ignore_ascii_case("proxy-authorization") {
            return Err(HeaderError::ProxyAuthorization);
        }
        if is_hop_by_hop(name) {
            return Err(HeaderError::HopByHop(name.to_string()));
        }
        if name.eq_ignore_ascii_case("host") {
            return Err(HeaderError::Host);
        }
        if name.eq_ignore_ascii_case("content-length") {
            return Err(HeaderError::Body(name.to_string()));
        }
        Ok(ExtraHeader {
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Headers that carry the user's own identity to an origin: sent only to
/// the origin of the URL given, never after a redirect to another one.
fn is_origin_credential(name: &str) -> bool {
    ["authorization", "cookie"]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
}

/// What every request of a batch carries.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// Empty: no User-Agent.
    pub user_agent: String,
    pub headers: Vec<ExtraHeader>,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            user_agent: default_user_agent(),
            headers: Vec::new(),
        }
    }
}

/// The request head for `url`, in one buffer for one write. `first` is the
/// URL given, before redirects: `Authorization` and `Cookie` headers go
/// only to its origin.
pub fn request_head(
    url: &Url,
    first: &Url,
    options: &RequestOptions,
    authorization: Option<&str>,
) -> Vec<u8> {
    let host = url.host_str().unwrap_or("");
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    // RFC 9112 §3.2.2: a request to a proxy uses absolute-form.
    let mut head = format!("GET {} HTTP/1.1\r\nHost: {host}\r\n", url.as_str());
    let given = |name: &str| {
        options
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    let mut add = |name: &str, value: &str| {
        if !value.is_empty() {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
    };
    if !given("user-agent") {
        add("User-Agent", &options.user_agent);
    }
    if !given("accept") {
        add("Accept", "*/*");
    }
    if let Some(value) = authorization {
        add("Proxy-Authorization", value);
    }
    let same_origin = url.origin() == first.origin();
    for header in &options.headers {
        if same_origin || !is_origin_credential(&header.name) {
            add(&header.name, &header.value);
        }
    }
    add("Connection", "keep-alive");
    head.push_str("\r\n");
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    fn text(head: Vec<u8>) -> String {
        String::from_utf8(head).expect("ascii")
    }

    #[test]
    fn request_is_absolute_form_for_https_too() {
        let u = url("https://example.com:8443/a?b");
        let head = text(request_head(&u, &u, &RequestOptions::default(), None));
        assert!(head.starts_with("GET https://example.com:8443/a?b HTTP/1.1\r\n"));
        assert!(head.contains("\r\nHost: example.com:8443\r\n"));
        assert!(head.contains("\r\nUser-Agent: fetchproxy/"));
        assert!(head.contains("\r\nAccept: */*\r\n"));
        assert!(head.contains("\r\nConnection: keep-alive\r\n"));
        assert!(!head.contains("Proxy-Authorization"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn user_headers_replace_defaults_and_empty_ones_remove_them() {
        let u = url("http://example.com/");
        let options = RequestOptions {
            user_agent: "agent/1".into(),
            headers: vec![
                "Accept: text/html".parse().expect("valid"),
                "X-Trace:  abc  ".parse().expect("valid"),
                "User-Agent:".parse().expect("valid"),
            ],
        };
        let head = text(request_head(&u, &u, &options, Some("Basic eDp5")));
        assert!(head.contains("\r\nAccept: text/html\r\n"), "{head}");
        assert!(!head.contains("*/*"), "{head}");
        assert!(head.contains("\r\nX-Trace: abc\r\n"), "{head}");
        assert!(!head.contains("User-Agent"), "{head}");
        assert!(head.contains("\r\nProxy-Authorization: Basic eDp5\r\n"));
    }

    #[test]
    fn origin_credentials_stay_with_their_origin() {
        let first = url("http://a.example/login");
        let options = RequestOptions {
            headers: vec![
                "Authorization: Bearer t".parse().expect("valid"),
                "Cookie: s=1".parse().expect("valid"),
                "X-Other: kept".parse().expect("valid"),
            ],
            ..RequestOptions::default()
        };
        let same = text(request_head(
            &url("http://a.example/next"),
            &first,
            &options,
            None,
        ));
        assert!(same.contains("Authorization: Bearer t") && same.contains("Cookie: s=1"));
        let other = text(request_head(
            &url("http://b.example/"),
            &first,
            &options,
            None,
        ));
        assert!(
            !other.contains("Authorization") && !other.contains("Cookie"),
            "{other}"
        );
        assert!(other.contains("X-Other: kept"));
    }

    #[test]
    fn bad_headers_are_refused_with_the_reason() {
        let err = |text: &str| text.parse::<ExtraHeader>().expect_err(text);
        assert_eq!(err("no colon"), HeaderError::NoColon);
        assert_eq!(err("Bad Name: x"), HeaderError::BadName("Bad Name".into()));
        assert_eq!(err(": x"), HeaderError::BadName(String::new()));
        assert_eq!(err("X-A: a\rb"), HeaderError::BadValue("X-A".into()));
        assert_eq!(err("X-A: a\nb"), HeaderError::BadValue("X-A".into()));
        assert_eq!(
            err("connection: close"),
            HeaderError::HopByHop("connection".into())
        );
        assert_eq!(
            err("Transfer-Encoding: chunked"),
            HeaderError::HopByHop("Transfer-Encoding".into())
        );
        assert_eq!(
            err("Proxy-Authorization: Basic x"),
            HeaderError::ProxyAuthorization
        );
        assert_eq!(err("Host: other"), HeaderError::Host);
        assert_eq!(
            err("Content-Length: 3"),
            HeaderError::Body("Content-Length".into())
        );
        let ok: ExtraHeader = "X-Tab:\tvalue\twith tab".parse().expect("tabs are allowed");
        assert_eq!(ok.value, "value\twith tab");
    }
}
