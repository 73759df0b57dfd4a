//! When a request to a service may be sent again: the one rule the gateway
//! (retrying on another endpoint) and the service client (failing over to
//! another gateway) both obey.
//!
//! A request that never reached a server (the connection failed) may always
//! be sent elsewhere. Once sent, it may run again only if running it twice is
//! harmless: its method is idempotent (RFC 9110 §9.2.2), or the caller named
//! it with an idempotency key, so the service can tell a replay.

use http::{HeaderMap, Method, StatusCode};

use crate::headers::{IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_ALT};

/// Whether `method` is idempotent: sending it twice has the effect of once.
pub fn idempotent_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Whether a request that was (or may have been) sent may be sent again.
pub fn replayable(method: &Method, headers: &HeaderMap) -> bool {
    idempotent_method(method)
        || headers.contains_key(IDEMPOTENCY_KEY)
        || headers.contains_key(IDEMPOTENCY_KEY_ALT)
}

/// Whether an answer says "this server could not handle it, another might":
/// 502, 503 and 504. Any other answer is the service's own and is returned.
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_is_replayable_only_with_a_key() {
        let mut headers = HeaderMap::new();
        assert!(!replayable(&Method::POST, &headers));
        assert!(!replayable(&Method::PATCH, &headers));
        assert!(replayable(&Method::GET, &headers));
        assert!(replayable(&Method::DELETE, &headers));
        headers.insert(IDEMPOTENCY_KEY_ALT, "k1".parse().unwrap());
        assert!(replayable(&Method::POST, &headers));
    }

    #[test]
    fn only_gateway_errors_are_retryable() {
        assert!(retryable_status(StatusCode::BAD_GATEWAY));
        assert!(retryable_status(StatusCode::GATEWAY_TIMEOUT));
        assert!(!retryable_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!retryable_status(StatusCode::NOT_FOUND));
    }
}
