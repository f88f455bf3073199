//! HTTP/1.1 message handling shared by the server and the fetch client:
//! reading request heads, body framing, header rules and writing responses.
//! Pure functions over byte slices and readers; no policy, no sockets.

pub mod body;
pub mod field;
pub mod headers;
pub mod request;
pub mod response;
