//! The JSON error envelope every Skyclaw HTTP error uses:
//! `{"error":{"code":"...","message":"..."}}`.

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

/// Machine-readable error codes. The HTTP status goes with the code
/// ([`ErrorCode::status`]); the coordinator maps its errors to codes in one
/// place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, unknown fields or kinds, values out of range (400).
    BadRequest,
    /// Missing or wrong credentials (401).
    Unauthorized,
    /// Right credentials, missing scope (403).
    Forbidden,
    /// No such job, host or key, or not visible to the caller (404).
    NotFound,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The request conflicts with the current state (409).
    Conflict,
    /// A completion or renewal carried a lease token that is no longer current (409).
    StaleLease,
    /// The idempotency key was used before with a different request (409).
    IdempotencyConflict,
    /// The host is unknown or was marked down; it must register again (404).
    HostNotRegistered,
    /// The body is larger than the route accepts (413).
    PayloadTooLarge,
    /// The request line and headers are larger than any listener accepts (431).
    HeadersTooLarge,
    /// The server could not finish in time (504).
    Timeout,
    /// The client sent its request body too slowly (408).
    RequestTimeout,
    /// A gateway could not get an answer from any endpoint (502).
    BadGateway,
    /// The server cannot take writes right now (503).
    Unavailable,
    /// The coordinator cluster has no quorum: writes cannot commit (503).
    NoQuorum,
    /// A bug or an IO failure on the server (500).
    Internal,
}

impl ErrorCode {
    /// The code's wire spelling, as used in the envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::StaleLease => "stale_lease",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::HostNotRegistered => "host_not_registered",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NoQuorum => "no_quorum",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status every answer with this code carries.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::HostNotRegistered => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict | ErrorCode::StaleLease | ErrorCode::IdempotencyConflict => {
                StatusCode::CONFLICT
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::Unavailable | ErrorCode::NoQuorum => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::str::FromStr for ErrorCode {
    type Err = String;

    /// Reads a code's wire spelling ([`ErrorCode::as_str`]).
    fn from_str(s: &str) -> Result<ErrorCode, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("unknown error code {s:?}"))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outer object of an error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// What went wrong: a stable code and a human sentence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorEnvelope {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorEnvelope {
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}
