//! What the gateway changes in the heads it passes on: hop-by-hop headers
//! removed both ways (RFC 9110 §7.6.1), the forwarding headers set from
//! what the gateway itself saw (it is the network's edge, so a client's own
//! `X-Forwarded-*` or `Forwarded` claims are replaced, never trusted), and
//! a request id generated when the client sent none.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// What the gateway knows of where a request came from.
pub struct Origin<'a> {
    pub client: Option<SocketAddr>,
    pub tls: bool,
    /// The host the client asked for (`Host` or the HTTP/2 authority).
    pub host: Option<&'a str>,
}

/// Sets the forwarding headers of a request about to go upstream, and its
/// request id; returns the id, for the response.
pub fn prepare_request(headers: &mut HeaderMap, origin: &Origin<'_>) -> HeaderValue {
    strip_hop_by_hop(headers);
    for name in [
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        FORWARDED,
    ] {
        headers.remove(name);
    }
    // The endpoint's own authority becomes the Host (the pool sets it); the
    // name the client used travels as X-Forwarded-Host.
    headers.remove(header::HOST);
    let proto = if origin.tls { "https" } else { "http" };
    let mut forwarded = String::new();
    if let Some(client) = origin.client {
        let ip = client.ip();
        if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        forwarded = match ip {
            std::net::IpAddr::V4(ip) => format!("for={ip}"),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if !forwarded.is_empty() {
        forwarded.push(';');
    }
    forwarded.push_str("proto=");
    forwarded.push_str(proto);
    if let Some(host) = origin.host.filter(|h| is_token_like(h))
        && let Ok(v) = HeaderValue::from_str(host)
    {
        headers.insert(X_FORWARDED_HOST, v);
        forwarded.push_str(";host=\"");
        forwarded.push_str(host);
        forwarded.push('"');
    }
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(FORWARDED, v);
    }
    let id = match headers.get(REQUEST_ID) {
        Some(v)
            if !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.to_str().is_ok_and(is_token_like) =>
        {
            v.clone()
        }
        _ => {
            let id = uuid::Uuid::now_v7().simple().to_string();
            HeaderValue::from_str(&id).expect("a uuid is a header value")
        }
    };
    headers.insert(REQUEST_ID, id.clone());
    id
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
        let origin = Origin {
            client: Some("127.0.0.1:5000".parse().unwrap()),
            tls: true,
            host: Some("web.example.org"),
        };
        let id = prepare_request(&mut h, &origin);
        assert_eq!(h[X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "web.example.org");
        assert_eq!(
            h[FORWARDED],
            "for=127.0.0.1;proto=https;host=\"web.example.org\""
        );
        assert!(!h.contains_key(header::HOST));
        assert_eq!(id.len(), 32);
        let v6 = Origin {
            client: Some("[::1]:5000".parse().unwrap()),
            tls: false,
            host: None,
        };
        prepare_request(&mut h, &v6);
        assert_eq!(h[FORWARDED], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn a_sane_request_id_passes_and_a_wild_one_is_replaced() {
        let origin = Origin {
            client: None,
            tls: false,
            host: None,
        };
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(prepare_request(&mut h, &origin), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_str(&"x".repeat(500)).unwrap());
        assert_ne!(prepare_request(&mut h, &origin).len(), 500);
    }
}
