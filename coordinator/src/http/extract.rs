//! Request extractors whose rejections use the JSON error envelope: bodies
//! (with the hash idempotency needs), query strings and idempotency keys.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use skyclaw_api::headers;

use super::auth::{Principal, sha256};
use crate::error::ApiError;
use crate::state::IdempotencyRecord;

/// A JSON body with the hash of the request it came in. It is parsed, strictly,
/// only when the handler asks ([`JsonBody::parse`]), after the caller's scopes
/// are checked: one who may not make a request learns nothing from its body.
pub struct JsonBody<T> {
    bytes: Bytes,
    pub request_hash: String,
    value: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonBody<T> {
    pub fn parse(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
    }
}

/// sha256 over method, path and body: what "the same request" means for
/// idempotency keys.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut input = Vec::with_capacity(method.len() + path.len() + body.len() + 2);
    input.extend_from_slice(method.as_bytes());
    input.push(b' ');
    input.extend_from_slice(path.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(body);
    hex::encode(sha256(&input))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "request body too large: {}",
                    rejection.body_text()
                ))
            } else {
                ApiError::BadRequest(format!(
                    "cannot read request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        Ok(JsonBody {
            request_hash: request_hash(&method, &path, &bytes),
            bytes,
            value: PhantomData,
        })
    }
}

/// A query string, parsed strictly.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
    }
}

/// The request's idempotency key, if it has one.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(headers::IDEMPOTENCY_KEY)
            .or_else(|| parts.headers.get(headers::IDEMPOTENCY_KEY_ALT));
        let Some(value) = value else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= headers::MAX_IDEMPOTENCY_KEY_LEN)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "idempotency key must be 1 to {} visible ASCII characters",
                    headers::MAX_IDEMPOTENCY_KEY_LEN
                ))
            })?;
        Ok(IdempotencyKey(Some(key.to_string())))
    }
}

impl IdempotencyKey {
    /// The record that binds this key to the request, for the caller.
    pub fn record(
        &self,
        principal: &Principal,
        request_hash: &str,
        now: u64,
    ) -> Option<IdempotencyRecord> {
        self.0.as_ref().map(|key| IdempotencyRecord {
            principal: principal.owner().as_column(),
            key: key.clone(),
            request_hash: request_hash.to_string(),
            now,
        })
    }
}
