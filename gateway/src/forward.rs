//! What the gateway changes in the heads it passes on: hop-by-hop headers
//! removed both ways (RFC 9110 §7.6.1), the forwarding headers set from
//! what the gateway itself saw (it is the network's edge, so a client's own
//! `X-Forwarded-*` or `Forwarded` claims are replaced, never trusted), and
//! a request id generated when the client sent none.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use smallvec::SmallVec;

/// The request id header, passed through when a client sends a sane one.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A client's request id longer than this is replaced: ids are logged and
/// echoed, so they stay short.
const MAX_REQUEST_ID_LEN: usize = 128;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that concern one connection only, never forwarded. `Upgrade` is
/// among them; an upgrade request puts it back (`upgrade.rs`).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The values are cloned (shared bytes, no copy) so that the names they
    // list can be removed while they are read.
    let connection: SmallVec<[HeaderValue; 2]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    for name in connection
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        // Looked up by `&str`, which makes no header name (no copy); a
        // string that is no valid name is in no map.
        headers.remove(name.trim());
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// What the gateway forwards about one client connection, worked out once
/// when it is accepted: the client's address is the same for each of its
/// requests.
pub struct Client {
    /// `X-Forwarded-For`: the address the connection came from.
    x_forwarded_for: Option<HeaderValue>,
    /// `X-Forwarded-Proto`.
    proto: &'static str,
    /// `Forwarded` for a request without a usable host: `for=…;proto=…`.
    forwarded: HeaderValue,
}

impl Client {
    pub fn new(peer: Option<SocketAddr>, tls: bool) -> Client {
        let proto = if tls { "https" } else { "http" };
        let ip = peer.map(|peer| peer.ip());
        let forwarded = match ip {
            Some(IpAddr::V4(ip)) => format!("for={ip};proto={proto}"),
            Some(IpAddr::V6(ip)) => format!("for=\"[{ip}]\";proto={proto}"),
            None => format!("proto={proto}"),
        };
        Client {
            x_forwarded_for: ip.map(|ip| header_value(ip.to_string())),
            proto,
            forwarded: header_value(forwarded),
        }
    }
}

/// A value made of an address and fixed words: visible ASCII, always valid.
fn header_value(value: String) -> HeaderValue {
    HeaderValue::try_from(value).expect("an address and fixed words are a header value")
}

/// Sets the forwarding headers of a request about to go upstream, and its
/// request id; returns the id, for the response. `authority` is the
/// request's own (HTTP/2 sends the host there, HTTP/1.1 in `Host`).
pub fn prepare_request(
    headers: &mut HeaderMap,
    client: &Client,
    authority: Option<&Authority>,
) -> HeaderValue {
    strip_hop_by_hop(headers);
    for name in [
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        FORWARDED,
    ] {
        headers.remove(name);
    }
    // The endpoint's own authority becomes the Host (each attempt sets it);
    // the name the client used travels as X-Forwarded-Host.
    let host = headers
        .remove(header::HOST)
        .or_else(|| authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()))
        .filter(|h| h.to_str().is_ok_and(is_token_like));
    if let Some(v) = &client.x_forwarded_for {
        headers.insert(X_FORWARDED_FOR, v.clone());
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    let forwarded = match &host {
        Some(host) => forwarded_with_host(&client.forwarded, host),
        None => client.forwarded.clone(),
    };
    headers.insert(FORWARDED, forwarded);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    let id = match headers.get(REQUEST_ID) {
        Some(v)
            if !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.to_str().is_ok_and(is_token_like) =>
        {
            v.clone()
        }
        _ => new_request_id(),
    };
    headers.insert(REQUEST_ID, id.clone());
    id
}

/// `Forwarded` for a connection, with `;host="…"` added: `host` is
/// token-like, so it needs no escaping inside the quotes.
fn forwarded_with_host(base: &HeaderValue, host: &HeaderValue) -> HeaderValue {
    const HOST_PARAMETER: &[u8] = b";host=\"";
    let mut value = Vec::with_capacity(base.len() + HOST_PARAMETER.len() + host.len() + 1);
    value.extend_from_slice(base.as_bytes());
    value.extend_from_slice(HOST_PARAMETER);
    value.extend_from_slice(host.as_bytes());
    value.push(b'"');
    HeaderValue::from_maybe_shared(Bytes::from(value))
        .expect("two header values and fixed words are a header value")
}

/// A fresh request id: a UUIDv7 (time-ordered, so ids sort like the log),
/// in 32 hex digits.
fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Simple::LENGTH];
    let text = uuid::Uuid::now_v7().simple().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("a uuid is a header value")
}

/// Prepares a response's head for the client: hop-by-hop headers removed and
/// the request id set.
pub fn prepare_response(headers: &mut HeaderMap, request_id: HeaderValue) {
    strip_hop_by_hop(headers);
    headers.insert(REQUEST_ID, request_id);
}

/// Visible ASCII without quotes or backslashes: safe inside a quoted
/// `Forwarded` value and in logs.
fn is_token_like(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_headers_are_the_gateways_own() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        h.insert(FORWARDED, "for=6.6.6.6".parse().unwrap());
        h.insert(header::HOST, "web.example.org".parse().unwrap());
        let client = Client::new(Some("127.0.0.1:5000".parse().unwrap()), true);
        let id = prepare_request(&mut h, &client, None);
        assert_eq!(h[X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "web.example.org");
        assert_eq!(
            h[FORWARDED],
            "for=127.0.0.1;proto=https;host=\"web.example.org\""
        );
        assert!(!h.contains_key(header::HOST));
        assert_eq!(id.len(), 32);
        let v6 = Client::new(Some("[::1]:5000".parse().unwrap()), false);
        prepare_request(&mut h, &v6, None);
        assert_eq!(h[FORWARDED], "for=\"[::1]\";proto=http");
        assert!(!h.contains_key(X_FORWARDED_HOST));
        let authority: Authority = "web.example.org:8443".parse().unwrap();
        prepare_request(&mut h, &v6, Some(&authority));
        assert_eq!(
            h[FORWARDED],
            "for=\"[::1]\";proto=http;host=\"web.example.org:8443\""
        );
        assert_eq!(h[X_FORWARDED_HOST], "web.example.org:8443");
    }

    #[test]
    fn a_sane_request_id_passes_and_a_wild_one_is_replaced() {
        let client = Client::new(None, false);
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(prepare_request(&mut h, &client, None), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_str(&"x".repeat(500)).unwrap());
        assert_ne!(prepare_request(&mut h, &client, None).len(), 500);
    }
}
