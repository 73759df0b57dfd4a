//! Cluster routes: the peers table, joining, and removing a coordinator.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use skyclaw_api::network::{Join, PeerList};

use super::auth::{ClusterToken, Principal};
use super::extract::JsonBody;
use crate::error::ApiError;
use crate::node::Node;

/// Any valid credential may read the peers: API-key clients (CI) need the
/// coordinator URLs to fail over, and they reveal nothing else.
pub async fn peers(State(node): State<Arc<Node>>, _caller: Principal) -> Json<PeerList> {
    Json(node.cluster.peers())
}

pub async fn join(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    body: JsonBody<Join>,
) -> Result<Json<PeerList>, ApiError> {
    node.cluster.join(body.parse()?).await?;
    Ok(Json(node.cluster.peers()))
}

pub async fn remove(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    Path(id): Path<String>,
) -> Result<Json<PeerList>, ApiError> {
    let id = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a node id")))?;
    node.cluster.remove(id).await?;
    Ok(Json(node.cluster.peers()))
}
