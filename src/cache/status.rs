//! The `Cache-Status` response header (RFC 9211) and the access-log word
//! for how the cache took part in a response. Pure: built from an
//! `Outcome` that the request path fills in.

use std::fmt::Write;

/// The cache name in `Cache-Status`.
pub const CACHE_NAME: &str = "fetchproxy";

/// Why the request went forward (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Nothing stored under the URL.
    UriMiss,
    /// Stored under the URL, but no variant matches the request.
    VaryMiss,
    /// A miss of no finer kind.
    Miss,
    /// Stored but stale: revalidated or refetched.
    Stale,
    /// The request's directives asked for the origin.
    Request,
    /// The cache was not used (method, no-store, over a limit, off).
    Bypass,
}

impl Fwd {
    fn token(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Bypass => "bypass",
        }
    }
}

/// How the cache took part in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from the cache without contacting the origin.
    Hit {
        /// Seconds of freshness left (negative when served stale).
        ttl: i64,
        /// Served stale (`max-stale`, `stale-while-revalidate`, `stale-if-error`).
        stale: bool,
        /// Why stale was allowed, e.g. `stale-while-revalidate`.
        detail: Option<&'static str>,
    },
    /// Went to the origin (or followed a fill that did).
    Forward {
        /// Why.
        fwd: Fwd,
        /// The origin's status, when one answered.
        fwd_status: Option<u16>,
        /// The response was stored.
        stored: bool,
        /// Read from another request's fill instead of its own fetch.
        collapsed: bool,
        /// Freshness left of what is now stored.
        ttl: Option<i64>,
        /// Free-form detail, e.g. `too-large` (an RFC 8941 token).
        detail: Option<&'static str>,
    },
    /// A stale stored response served because revalidating it failed: the
    /// origin answered 500, 502, 503 or 504 (`stale-if-error`, RFC 5861
    /// §4) or could not be reached (RFC 9111 §4.2.4).
    StaleOnError {
        /// The origin's error status; `None` when it could not be reached.
        fwd_status: Option<u16>,
        /// Seconds of freshness left (negative: how stale).
        ttl: i64,
    },
    /// Answered by the cache without a stored response or the origin:
    /// `only-if-cached` with nothing usable stored (RFC 9111 §5.2.1.7).
    NotForwarded {
        /// Why, e.g. `only-if-cached`.
        detail: &'static str,
    },
}

impl Outcome {
    /// The `Cache-Status` value, e.g. `fetchproxy; fwd=uri-miss;
    /// fwd-status=200; stored; ttl=60`.
    pub fn header_value(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str(CACHE_NAME);
        match self {
            Outcome::Hit { ttl, detail, .. } => {
                out.push_str("; hit");
                push_number(&mut out, "ttl", *ttl);
                push_detail(&mut out, *detail);
            }
            Outcome::Forward {
                fwd,
                fwd_status,
                stored,
                collapsed,
                ttl,
                detail,
            } => {
                out.push_str("; fwd=");
                out.push_str(fwd.token());
                if let Some(status) = fwd_status {
                    push_number(&mut out, "fwd-status", *status);
                }
                if *stored {
                    out.push_str("; stored");
                }
                if *collapsed {
                    out.push_str("; collapsed");
                }
                if let Some(ttl) = ttl {
                    push_number(&mut out, "ttl", *ttl);
                }
                push_detail(&mut out, *detail);
            }
            Outcome::StaleOnError { fwd_status, ttl } => {
                out.push_str("; fwd=stale");
                if let Some(status) = fwd_status {
                    push_number(&mut out, "fwd-status", *status);
                }
                push_number(&mut out, "ttl", *ttl);
                let why = match fwd_status {
                    Some(_) => "stale-if-error",
                    None => "origin-unreachable",
                };
                push_detail(&mut out, Some(why));
            }
            Outcome::NotForwarded { detail } => push_detail(&mut out, Some(detail)),
        }
        out
    }

    /// The access-log word, as Squid's `TCP_HIT`/`TCP_MISS`: `HIT`,
    /// `STALE`, `REVALIDATED`, `COLLAPSED`, `MISS` or `BYPASS`.
    pub fn log_word(&self) -> &'static str {
        match self {
            Outcome::Hit { stale: true, .. } | Outcome::StaleOnError { .. } => "STALE",
            Outcome::NotForwarded { .. } => "MISS",
            Outcome::Hit { .. } => "HIT",
            Outcome::Forward {
                fwd: Fwd::Bypass, ..
            } => "BYPASS",
            Outcome::Forward {
                collapsed: true, ..
            } => "COLLAPSED",
            Outcome::Forward {
                fwd: Fwd::Stale | Fwd::Request,
                fwd_status: Some(304),
                ..
            } => "REVALIDATED",
            Outcome::Forward { .. } => "MISS",
        }
    }
}

/// Appends `; name=value` (every response writes one or two: no
/// formatting machinery).
fn push_number(out: &mut String, name: &str, value: impl itoa::Integer) {
    out.push_str("; ");
    out.push_str(name);
    out.push('=');
    out.push_str(itoa::Buffer::new().format(value));
}

fn push_detail(out: &mut String, detail: Option<&str>) {
    // A token is written bare, anything else as an sf-string.
    if let Some(detail) = detail {
        let token = detail
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:/*".contains(&b));
        if token && detail.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push_str("; detail=");
            out.push_str(detail);
        } else {
            let escaped: String = detail
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control())
                .flat_map(|c| match c {
                    '"' | '\\' => vec!['\\', c],
                    _ => vec![c],
                })
                .collect();
            let _ = write!(out, "; detail=\"{escaped}\"");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(fwd: Fwd) -> Outcome {
        forward_with(fwd, None)
    }

    fn forward_with(fwd: Fwd, fwd_status: Option<u16>) -> Outcome {
        Outcome::Forward {
            fwd,
            fwd_status,
            stored: false,
            collapsed: false,
            ttl: None,
            detail: None,
        }
    }

    #[test]
    fn hits_carry_their_ttl() {
        let hit = Outcome::Hit {
            ttl: 42,
            stale: false,
            detail: None,
        };
        assert_eq!(hit.header_value(), "fetchproxy; hit; ttl=42");
        assert_eq!(hit.log_word(), "HIT");
        let stale = Outcome::Hit {
            ttl: -3,
            stale: true,
            detail: Some("stale-while-revalidate"),
        };
        assert_eq!(
            stale.header_value(),
            "fetchproxy; hit; ttl=-3; detail=stale-while-revalidate"
        );
        assert_eq!(stale.log_word(), "STALE");
    }

    #[test]
    fn forwards_name_why_and_what_came_back() {
        let tokens = [
            (Fwd::UriMiss, "uri-miss"),
            (Fwd::VaryMiss, "vary-miss"),
            (Fwd::Miss, "miss"),
            (Fwd::Stale, "stale"),
            (Fwd::Request, "request"),
            (Fwd::Bypass, "bypass"),
        ];
        for (fwd, token) in tokens {
            assert_eq!(
                forward(fwd).header_value(),
                format!("fetchproxy; fwd={token}")
            );
        }
        let full = Outcome::Forward {
            fwd: Fwd::UriMiss,
            fwd_status: Some(200),
            stored: true,
            collapsed: true,
            ttl: Some(60),
            detail: Some("over limit"),
        };
        assert_eq!(
            full.header_value(),
            "fetchproxy; fwd=uri-miss; fwd-status=200; stored; collapsed; ttl=60; detail=\"over limit\""
        );
        assert_eq!(full.log_word(), "COLLAPSED");
    }

    #[test]
    fn log_words_follow_the_outcome() {
        assert_eq!(forward(Fwd::Bypass).log_word(), "BYPASS");
        assert_eq!(forward(Fwd::UriMiss).log_word(), "MISS");
        let revalidated = forward_with(Fwd::Stale, Some(304));
        assert_eq!(revalidated.log_word(), "REVALIDATED");
        let refetched = forward_with(Fwd::Stale, Some(200));
        assert_eq!(refetched.log_word(), "MISS");
    }

    #[test]
    fn stale_answers_after_a_failed_revalidation_say_why() {
        let error = Outcome::StaleOnError {
            fwd_status: Some(503),
            ttl: -30,
        };
        assert_eq!(
            error.header_value(),
            "fetchproxy; fwd=stale; fwd-status=503; ttl=-30; detail=stale-if-error"
        );
        assert_eq!(error.log_word(), "STALE");
        let unreachable = Outcome::StaleOnError {
            fwd_status: None,
            ttl: -1,
        };
        assert_eq!(
            unreachable.header_value(),
            "fetchproxy; fwd=stale; ttl=-1; detail=origin-unreachable"
        );
        let only = Outcome::NotForwarded {
            detail: "only-if-cached",
        };
        assert_eq!(only.header_value(), "fetchproxy; detail=only-if-cached");
        assert_eq!(only.log_word(), "MISS");
    }
}
