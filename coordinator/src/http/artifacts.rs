//! Artifact routes: upload (stored where it arrives, verified against its
//! digest, then recorded through the leader), check, download (fetched from a
//! peer first when only the record is here), list, and the route through
//! which a coordinator that stored an upload records it on the leader.
//!
//! Uploads are never forwarded: a follower that receives one keeps the blob
//! and sends the leader only its record, as a JSON request to
//! `POST /v1/artifacts` that travels like any forwarded write. Another
//! coordinator asked for the blob fetches it from a peer that holds it.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use skyclaw_api::apikeys::Scope;
use skyclaw_api::artifacts::{ArtifactInfo, ArtifactKind, ArtifactList, Digest};
use skyclaw_api::{headers, now_ms};
use tokio_util::io::ReaderStream;

use super::auth::{ClusterToken, Principal};
use super::extract::JsonBody;
use super::forward::{self, FORWARDED};
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{self, Command};

/// Where artifacts are listed, and where coordinators record the blobs they
/// stored.
pub const ARTIFACTS_PATH: &str = "/v1/artifacts";
/// One artifact's blob, by digest.
pub const BLOB_PATH: &str = "/v1/artifacts/{digest}";
/// How long fetching a blob from one peer may take: the largest default blob
/// (256 MiB) at about 1 MB/s; coordinators are expected near each other.
const PEER_FETCH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long an upload received by a follower waits for the follower to apply
/// the record the leader committed, so that the uploader finds the artifact
/// here at once; replication usually takes milliseconds.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// The content type of wasm binaries.
const WASM_CONTENT_TYPE: &str = "application/wasm";
/// The content type of every other blob.
const BLOB_CONTENT_TYPE: &str = "application/octet-stream";

/// What a coordinator that stored a blob asks the leader to record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    digest: Digest,
    size: u64,
    kind: ArtifactKind,
}

/// `PUT /v1/artifacts/{digest}`: streams the body into this coordinator's blob
/// store, verified against the digest, then records it. Answers 201 when the
/// artifact is new to the cluster, 200 when it was known already.
pub async fn upload(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::ArtifactsPush)?;
    let digest = parse_digest(&digest)?;
    let limit = node.config.max_artifact_bytes;
    if declared_length(&headers).is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge(format!(
            "the artifact is larger than the limit of {limit} bytes"
        )));
    }
    let stored = node
        .blobs
        .ingest(&digest, limit, body.into_data_stream())
        .await?;
    tracing::info!(%digest, bytes = stored.size, kind = %stored.kind, "artifact stored");
    let record = Record {
        digest,
        size: stored.size,
        kind: stored.kind,
    };
    record_through_leader(&node, record).await
}

/// `POST /v1/artifacts` (cluster token): records a blob the calling
/// coordinator stored. Only the leader serves it; others forward it there.
pub async fn record(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    body: JsonBody<Record>,
) -> Result<(StatusCode, Json<ArtifactInfo>), ApiError> {
    record_here(&node, body.parse()?).await
}

/// `HEAD /v1/artifacts/{digest}`: 200 with the size when the cluster knows the
/// artifact, even if its blob must first be fetched from a peer.
pub async fn head(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::ArtifactsPush)?;
    let info = known(&node, &parse_digest(&digest)?)?;
    Ok((blob_headers(info.kind, info.size), Body::empty()).into_response())
}

/// `GET /v1/artifacts/{digest}`: the blob, streamed from disk; fetched from a
/// peer first when this coordinator has the record but not the bytes. A peer's
/// request is answered from this coordinator's own store only.
pub async fn download(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Scope::ArtifactsPush)?;
    let digest = parse_digest(&digest)?;
    if headers.contains_key(FORWARDED) {
        // The asking peer verifies the bytes, so a blob held here is served
        // even before its record is applied here.
        let kind = node
            .store
            .read(|c| state::artifacts::get(c, &digest))?
            .map_or(ArtifactKind::Blob, |info| info.kind);
        return held(&node, &digest, kind)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("this coordinator does not hold {digest}")));
    }
    let info = known(&node, &digest)?;
    if let Some(response) = held(&node, &digest, info.kind).await? {
        return Ok(response);
    }
    fetch_from_peers(&node, &info).await?;
    held(&node, &digest, info.kind).await?.ok_or_else(|| {
        ApiError::Internal(format!(
            "the blob of {digest} vanished after it was fetched"
        ))
    })
}

/// `GET /v1/artifacts`: every artifact, in the order they were recorded.
pub async fn list(
    State(node): State<Arc<Node>>,
    principal: Principal,
) -> Result<Json<ArtifactList>, ApiError> {
    principal.require(Scope::ArtifactsPush)?;
    let artifacts = node.store.scan(state::artifacts::list).await?;
    Ok(Json(ArtifactList { artifacts }))
}

fn parse_digest(digest: &str) -> Result<Digest, ApiError> {
    digest.parse().map_err(ApiError::BadRequest)
}

/// The `content-length` the caller declared, if any.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The headers that describe a blob: its content type and length.
fn blob_headers(kind: ArtifactKind, size: u64) -> [(HeaderName, HeaderValue); 2] {
    let content_type = if kind.is_wasm() {
        WASM_CONTENT_TYPE
    } else {
        BLOB_CONTENT_TYPE
    };
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_LENGTH, HeaderValue::from(size)),
    ]
}

/// The record of an artifact a job or service names, or a 400 that says how
/// to push it (`push`: the command that does).
pub(super) fn uploaded(node: &Node, digest: &Digest, push: &str) -> Result<ArtifactInfo, ApiError> {
    node.store
        .read(|c| state::artifacts::get(c, digest))?
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "artifact {digest} was never uploaded; push it first ({push})"
            ))
        })
}

/// The artifact's record, or 404.
fn known(node: &Node, digest: &Digest) -> Result<ArtifactInfo, ApiError> {
    node.store
        .read(|c| state::artifacts::get(c, digest))?
        .ok_or_else(|| ApiError::NotFound(format!("no artifact {digest}")))
}

/// The blob as a streamed answer, if this coordinator holds it.
async fn held(
    node: &Node,
    digest: &Digest,
    kind: ArtifactKind,
) -> Result<Option<Response>, ApiError> {
    let Some((file, size)) = node.blobs.open_blob(digest).await? else {
        return Ok(None);
    };
    let response = (
        blob_headers(kind, size),
        Body::from_stream(ReaderStream::new(file)),
    );
    Ok(Some(response.into_response()))
}

/// Commits the record of a blob stored here: directly when this coordinator
/// leads, else through the leader, and then waits until this coordinator has
/// applied it too. Answers with the leader's answer.
async fn record_through_leader(node: &Node, record: Record) -> Result<Response, ApiError> {
    let Some(leader_url) = forward::leader_elsewhere(node).await? else {
        return Ok(record_here(node, record).await?.into_response());
    };
    let digest = record.digest.clone();
    let answer = forward::post_json(node, &leader_url, ARTIFACTS_PATH, &record).await?;
    if answer.status().is_success() {
        applied_here(node, &digest).await;
    }
    Ok(answer)
}

/// Commits the record through the log; this coordinator must lead.
async fn record_here(
    node: &Node,
    record: Record,
) -> Result<(StatusCode, Json<ArtifactInfo>), ApiError> {
    let command = Command::AddArtifact {
        digest: record.digest,
        size: record.size,
        kind: record.kind,
        now: now_ms(),
    };
    let (info, created) = node.execute(command, None).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

/// Waits up to [`APPLY_WAIT`] for this coordinator to have applied the record
/// of `digest`. Past that the upload still succeeded; reads here catch up
/// with replication.
async fn applied_here(node: &Node, digest: &Digest) {
    let mut applied = node.cluster.raft.metrics();
    let known_here = async {
        loop {
            if matches!(
                node.store.read(|c| state::artifacts::get(c, digest)),
                Ok(Some(_))
            ) {
                return;
            }
            if applied.changed().await.is_err() {
                return; // raft stopped: the coordinator is shutting down
            }
        }
    };
    if tokio::time::timeout(APPLY_WAIT, known_here).await.is_err() {
        tracing::warn!(%digest, "the leader recorded the artifact but this coordinator has not applied it yet");
    }
}

/// Fetches the blob of a recorded artifact from the first other coordinator
/// that holds it, verifying it on its way into this coordinator's store.
async fn fetch_from_peers(node: &Node, info: &ArtifactInfo) -> Result<(), ApiError> {
    let mut failures = Vec::new();
    for peer in node.cluster.member_urls() {
        match fetch_from(node, &peer, info).await {
            Ok(()) => {
                tracing::info!(digest = %info.digest, %peer, "artifact fetched from a peer");
                return Ok(());
            }
            Err(e) => failures.push(format!("{peer}: {e}")),
        }
    }
    Err(ApiError::Unavailable(format!(
        "this coordinator does not hold the blob of {} and no other could supply it: {}",
        info.digest,
        if failures.is_empty() {
            "there are no other coordinators".to_string()
        } else {
            failures.join("; ")
        }
    )))
}

async fn fetch_from(node: &Node, peer: &str, info: &ArtifactInfo) -> Result<(), String> {
    let response = node
        .http
        .get(format!("{peer}{ARTIFACTS_PATH}/{}", info.digest))
        .header(headers::TOKEN, &node.config.token)
        .header(FORWARDED, node.cluster.id.to_string())
        .timeout(PEER_FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    node.blobs
        .ingest(&info.digest, info.size, response.bytes_stream())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
