//! Gateway routes: heartbeats that register and renew gateways (the token
//! or a `gateway` key), and the list of live ones (any credential).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use skyclaw_api::apikeys::Scope;
use skyclaw_api::gateways::{Gateway, GatewayHeartbeat, GatewayList, MAX_GATEWAY_LIST};
use skyclaw_api::now_ms;

use super::auth::Principal;
use super::extract::JsonBody;
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{self, Command};

/// Registers or renews the gateway. No idempotency record: a heartbeat sent
/// again only renews.
pub async fn heartbeat(
    State(node): State<Arc<Node>>,
    principal: Principal,
    body: JsonBody<GatewayHeartbeat>,
) -> Result<Json<Gateway>, ApiError> {
    principal.require(Scope::Gateway)?;
    let heartbeat = body.parse()?;
    heartbeat
        .validate()
        .map_err(|e| ApiError::BadRequest(e.0))?;
    let command = Command::GatewayHeartbeat {
        id: heartbeat.id,
        public_url: heartbeat.public_url,
        owner: principal.owner(),
        now: now_ms(),
    };
    Ok(Json(node.execute(command, None).await?))
}

/// Any valid credential may list the gateways: they are the public ways
/// into the cluster's services, and reveal nothing else.
pub async fn list(
    State(node): State<Arc<Node>>,
    _caller: Principal,
) -> Result<Json<GatewayList>, ApiError> {
    let now = now_ms();
    let gateways = node
        .store
        .scan(move |c| state::gateways::live(c, now, MAX_GATEWAY_LIST))
        .await?;
    Ok(Json(GatewayList { gateways }))
}
