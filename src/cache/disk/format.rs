//! The disk object file, all integers little-endian:
//!
//! ```text
//! "FPCACHE1"  u32 header length  header  u64 xxh3(header)
//! body ...
//! u64 body length  u64 xxh3(body)  "FPCEND01"
//! ```
//!
//! The header holds the URL, the variant's request values, the response
//! time, status and headers, and the request headers the policy needs, so
//! the policy can be rebuilt after a restart. The trailer is written last,
//! then the file is renamed into place: a file cut short anywhere fails
//! the length or checksum checks and is never served. xxh3 is used for
//! speed (many GB/s, far above disk rates) and because it catches the torn
//! and flipped bytes a crash or a bad sector leaves, which is its job here;
//! it is not a defence against tampering, and needs none.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::cache::key::{CacheKey, Variant};

/// First bytes of every object file.
pub const MAGIC: &[u8; 8] = b"FPCACHE1";
/// Last bytes of every complete object file.
pub const END_MAGIC: &[u8; 8] = b"FPCEND01";
/// Bytes after the body.
pub const TRAILER_LEN: u64 = 24;
/// Largest header accepted when reading (a bound on what a bad file costs).
pub const MAX_HEADER_BYTES: u32 = 1 << 20;

/// The decoded header of an object file.
#[derive(Debug, Clone)]
pub struct Header {
    /// The primary key.
    pub key: CacheKey,
    /// The secondary key.
    pub variant: Variant,
    /// When the response was received (or last revalidated).
    pub response_time: SystemTime,
    /// The stored status.
    pub status: StatusCode,
    /// The request headers the policy needs (`Policy::request_headers`).
    pub request: HeaderMap,
    /// The stored response headers.
    pub response: HeaderMap,
}

/// Why a file is not a valid object.
pub type Broken = &'static str;

/// Encodes `header` (without magic, length and checksum).
pub fn encode(header: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    put_bytes(&mut out, header.key.as_str().as_bytes());
    let since = header
        .response_time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    out.extend_from_slice(&since.as_secs().to_le_bytes());
    out.extend_from_slice(&since.subsec_nanos().to_le_bytes());
    out.extend_from_slice(&header.status.as_u16().to_le_bytes());
    match header.variant.fields() {
        None => out.push(1),
        Some(fields) => {
            out.push(0);
            put_count(&mut out, fields.len());
            for (name, value) in fields {
                put_bytes(&mut out, name.as_str().as_bytes());
                match value {
                    Some(value) => {
                        out.push(1);
                        put_bytes(&mut out, value);
                    }
                    None => out.push(0),
                }
            }
        }
    }
    put_headers(&mut out, &header.request);
    put_headers(&mut out, &header.response);
    out
}

/// Decodes a header encoded by `encode`.
///
/// # Errors
/// A short description of the first thing that does not parse.
pub fn decode(bytes: &[u8]) -> Result<Header, Broken> {
    let mut r = Reader(bytes);
    let url = std::str::from_utf8(r.bytes()?).map_err(|_| "url is not utf-8")?;
    let key = CacheKey::from_target(url).map_err(|_| "bad url")?;
    let secs = u64::from_le_bytes(r.array()?);
    let nanos = u32::from_le_bytes(r.array()?);
    let response_time = SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos.min(999_999_999)))
        .ok_or("bad response time")?;
    let status = StatusCode::from_u16(u16::from_le_bytes(r.array()?)).map_err(|_| "bad status")?;
    let variant = match r.array::<1>()?[0] {
        1 => Variant::from_fields(None),
        0 => {
            let count = r.count()?;
            let mut fields = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                let name = HeaderName::from_bytes(r.bytes()?).map_err(|_| "bad vary name")?;
                let value = match r.array::<1>()?[0] {
                    0 => None,
                    _ => Some(r.bytes()?.to_vec()),
                };
                fields.push((name, value));
            }
            Variant::from_fields(Some(fields))
        }
        _ => return Err("bad variant kind"),
    };
    let request = r.headers()?;
    let response = r.headers()?;
    if !r.0.is_empty() {
        return Err("bytes after the header");
    }
    Ok(Header {
        key,
        variant,
        response_time,
        status,
        request,
        response,
    })
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_count(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    put_count(out, headers.len());
    for (name, value) in headers {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

/// A cursor over header bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Broken> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or("header cut short")?;
        self.0 = rest;
        Ok(*head)
    }

    fn count(&mut self) -> Result<usize, Broken> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Broken> {
        let len = self.count()?;
        if len > self.0.len() {
            return Err("header cut short");
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn headers(&mut self) -> Result<HeaderMap, Broken> {
        let count = self.count()?;
        let mut map = HeaderMap::with_capacity(count.min(256));
        for _ in 0..count {
            let name = HeaderName::from_bytes(self.bytes()?).map_err(|_| "bad header name")?;
            let value = HeaderValue::from_bytes(self.bytes()?).map_err(|_| "bad header value")?;
            map.append(name, value);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::VaryNames;
    use crate::cache::testing::{headers, request};

    fn sample() -> Header {
        let response = headers(&[
            ("cache-control", "max-age=60"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("vary", "accept"),
        ]);
        let req = request("GET", "http://h/x", &[("accept", "text/html")]);
        Header {
            key: CacheKey::from_target("http://h/x").expect("key"),
            variant: Variant::capture(&VaryNames::of_response(&response), &req),
            response_time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            status: StatusCode::OK,
            request: headers(&[("cache-control", "no-cache")]),
            response,
        }
    }

    #[test]
    fn headers_round_trip() {
        let header = sample();
        let back = decode(&encode(&header)).expect("decode");
        assert_eq!(back.key, header.key);
        assert_eq!(back.variant, header.variant);
        assert_eq!(back.response_time, header.response_time);
        assert_eq!(back.status, header.status);
        assert_eq!(back.request, header.request);
        assert_eq!(back.response, header.response);
        assert_eq!(back.response.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn huge_counts_fail_without_allocating_them() {
        let mut bytes = encode(&sample());
        // The URL length is the first field.
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&bytes).is_err());
    }
}
