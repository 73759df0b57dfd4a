//! API key routes: create (the secret is shown once), list, revoke, and
//! `whoami`, the caller's own credentials.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rand::RngCore;
use skyclaw_api::apikeys::{
    ApiKey, ApiKeyList, CreateApiKey, CreatedApiKey, MAX_KEY_NAME_LEN, Whoami,
};
use skyclaw_api::now_ms;

use super::auth::{ClusterToken, Principal, key_hash};
use super::extract::{IdempotencyKey, JsonBody, request_hash};
use crate::error::ApiError;
use crate::node::Node;
use crate::state;
use crate::state::Command;

/// Prefix of every secret, so leaked keys are easy to recognise and scan for.
const SECRET_PREFIX: &str = "skyclaw_";

pub async fn create(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    idempotency: IdempotencyKey,
    body: JsonBody<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let CreateApiKey { name, mut scopes } = body.parse()?;
    if name.trim().is_empty() || name.len() > MAX_KEY_NAME_LEN {
        return Err(ApiError::BadRequest(format!(
            "name must be 1 to {MAX_KEY_NAME_LEN} characters"
        )));
    }
    if scopes.is_empty() {
        return Err(ApiError::BadRequest(
            "a key needs at least one scope".into(),
        ));
    }
    scopes.sort();
    scopes.dedup();
    let secret = new_secret();
    let now = now_ms();
    let command = Command::CreateApiKey {
        id: format!("k-{}", uuid::Uuid::now_v7().simple()),
        name,
        scopes,
        key_hash: key_hash(&secret),
        now,
    };
    let record = idempotency.record(&Principal::Token, &body.request_hash, now);
    let applied = node.propose(command, record).await?;
    let key: ApiKey = crate::node::answer(applied.outcome?)?;
    // A replay never shows the secret: it is stored nowhere.
    let secret = (!applied.replayed).then_some(secret);
    Ok((StatusCode::CREATED, Json(CreatedApiKey { key, secret })))
}

/// 256 random bits, hex.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

pub async fn list(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
) -> Result<Json<ApiKeyList>, ApiError> {
    let keys = node.store.scan(state::apikeys::list).await?;
    Ok(Json(ApiKeyList { keys }))
}

pub async fn revoke(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    idempotency: IdempotencyKey,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    let now = now_ms();
    let hash = request_hash("DELETE", &format!("/v1/apikeys/{id}"), b"");
    let record = idempotency.record(&Principal::Token, &hash, now);
    let key = node
        .execute(Command::RevokeApiKey { id, now }, record)
        .await?;
    Ok(Json(key))
}

/// Any credentials: the token, or the key presented with its scopes (a
/// revoked key is refused before this, as everywhere).
pub async fn whoami(principal: Principal) -> Json<Whoami> {
    Json(match principal {
        Principal::Token => Whoami::Token,
        Principal::ApiKey(key) => Whoami::ApiKey { key },
    })
}
