//! Who is calling: the cluster token (private and public routes) or a scoped
//! API key (public routes only), and what each may do.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use skyclaw_api::apikeys::{ApiKey, Scope};
use skyclaw_api::headers;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::node::Node;
use crate::state::Owner;
use crate::state::{self, JobRow};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    Token,
    ApiKey(ApiKey),
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// How an API key secret is stored: its sha256, hex. Secrets are 256 random
/// bits, so a fast hash is enough; a slow one would only slow every request.
pub fn key_hash(secret: &str) -> String {
    hex::encode(sha256(secret.as_bytes()))
}

impl FromRequestParts<Arc<Node>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        if let Some(token) = parts.headers.get(headers::TOKEN) {
            // Hashing first makes the comparison constant-time in the length too.
            let presented = sha256(token.as_bytes());
            if bool::from(presented.ct_eq(&node.token_hash)) {
                return Ok(Principal::Token);
            }
            return Err(ApiError::Unauthorized("wrong cluster token".into()));
        }
        let Some(auth) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(format!(
                "credentials required: {} header or authorization: Bearer <api key>",
                headers::TOKEN
            )));
        };
        let secret = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized("authorization must be Bearer <api key>".into())
            })?;
        let hash = key_hash(secret);
        match node.store.read(|c| state::apikeys::by_hash(c, &hash))? {
            Some(key) => Ok(Principal::ApiKey(key)),
            None => Err(ApiError::Unauthorized("unknown or revoked api key".into())),
        }
    }
}

/// Proof that the caller presented the cluster token. Private routes take it
/// as an extractor, so credentials are checked before the body is read.
pub struct ClusterToken;

impl FromRequestParts<Arc<Node>> for ClusterToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        Principal::from_request_parts(parts, node)
            .await?
            .require_token()?;
        Ok(ClusterToken)
    }
}

impl Principal {
    /// Private routes: the cluster token only.
    pub fn require_token(&self) -> Result<(), ApiError> {
        match self {
            Principal::Token => Ok(()),
            Principal::ApiKey(key) => Err(ApiError::Forbidden(format!(
                "api key {} cannot use this route; it needs the cluster token",
                key.id
            ))),
        }
    }

    /// Public routes: the token, or a key with `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match self {
            Principal::Token => Ok(()),
            Principal::ApiKey(key) if key.scopes.contains(&scope) => Ok(()),
            Principal::ApiKey(key) => Err(ApiError::Forbidden(format!(
                "api key {} lacks the {scope} scope",
                key.id
            ))),
        }
    }

    pub fn owner(&self) -> Owner {
        match self {
            Principal::Token => Owner::Token,
            Principal::ApiKey(key) => Owner::ApiKey(key.id.clone()),
        }
    }

    /// The token sees every job; a key only the jobs it submitted.
    pub fn can_see(&self, row: &JobRow) -> bool {
        match self {
            Principal::Token => true,
            Principal::ApiKey(_) => row.owner == self.owner().as_column(),
        }
    }
}
