//! The one place that maps coordinator errors to error codes (each code has its
//! HTTP status, [`ErrorCode::status`]) and the JSON error envelope.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skyclaw_api::{ErrorBody, ErrorCode, ErrorEnvelope, headers};

use crate::artifacts::BlobError;
use crate::cluster::ClusterError;
use crate::state::CommandError;
use crate::store::StoreError;

/// Everything a handler can answer besides success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NoQuorum(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::Command(CommandError::NotFound(_)) => ErrorCode::NotFound,
            ApiError::Command(CommandError::Conflict(_)) => ErrorCode::Conflict,
            ApiError::Command(CommandError::Forbidden(_)) => ErrorCode::Forbidden,
            ApiError::Command(CommandError::StaleLease(_)) => ErrorCode::StaleLease,
            ApiError::Command(CommandError::HostNotRegistered(_)) => ErrorCode::HostNotRegistered,
            ApiError::Command(CommandError::IdempotencyConflict(_)) => {
                ErrorCode::IdempotencyConflict
            }
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::NoQuorum(_) => ErrorCode::NoQuorum,
            ApiError::Timeout(_) => ErrorCode::Timeout,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    fn status(&self) -> StatusCode {
        self.code().status()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store fault");
        ApiError::Internal(format!("storage fault: {e}"))
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::NoQuorum(m) => ApiError::NoQuorum(m),
            ClusterError::OutcomeUnknown(m) => ApiError::Timeout(m),
            ClusterError::Unavailable(m) => ApiError::Unavailable(m),
            ClusterError::InvalidPeer(m) => ApiError::BadRequest(m),
            ClusterError::UnknownPeer(m) => ApiError::NotFound(m),
            ClusterError::Conflict(m) => ApiError::Command(CommandError::Conflict(m)),
            ClusterError::Storage(_) | ClusterError::Internal(_) => {
                tracing::error!(error = %e, "cluster fault");
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> ApiError {
        match e {
            BlobError::Mismatch { .. } | BlobError::Transfer(_) => {
                ApiError::BadRequest(e.to_string())
            }
            BlobError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            BlobError::Io(_) => {
                tracing::error!(error = %e, "blob store fault");
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl ApiError {
    /// The error as it appears inside an envelope, for answers that report
    /// several outcomes (one per item of a batch).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let body = ErrorEnvelope::new(code, self.to_string());
        (status, [(headers::ERROR_CODE, code.as_str())], Json(body)).into_response()
    }
}
