//! The coordinator's HTTP API: routes, and the layers every route shares
//! (forwarding to the leader, body limits, timeout, tracing, JSON 404/405).
//! Artifact transfers have limits of their own instead of the body limit and
//! the request timeout.

mod apikeys;
mod artifacts;
pub mod auth;
mod extract;
mod forward;
mod hosts;
mod jobs;
mod network;
mod raft;
mod system;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get, post, put};
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::error::ApiError;
use crate::node::Node;

/// Longest any request may take, artifact transfers aside. Long-polls cap
/// their own waits well below it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest an artifact upload may go without sending more of its body: a big
/// upload takes as long as it keeps moving, a stalled one is dropped.
const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest Raft RPC body: a batch of log entries or one snapshot chunk (JSON
/// spells snapshot bytes as numbers, several characters a byte).
const RAFT_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// Largest completion body: a job's result carries up to two output streams
/// of the host's `--max-output-bytes` (at most
/// [`skyclaw_api::jobs::MAX_OUTPUT_BYTES_LIMIT`] each), which JSON escaping
/// can double, and a batch carries many small results.
pub const COMPLETION_BODY_LIMIT: usize =
    4 * skyclaw_api::jobs::MAX_OUTPUT_BYTES_LIMIT + 1024 * 1024;

pub fn router(node: Arc<Node>, max_body_bytes: usize) -> Router {
    let raft = Router::new()
        .route(crate::cluster::network::APPEND_PATH, post(raft::append))
        .route(crate::cluster::network::VOTE_PATH, post(raft::vote))
        .route(crate::cluster::network::SNAPSHOT_PATH, post(raft::snapshot))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));
    let api = Router::new()
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/register", post(hosts::register))
        .route("/v1/hosts/{id}/heartbeat", post(hosts::heartbeat))
        .route("/v1/hosts/{id}/claim", post(hosts::claim))
        .route(
            "/v1/hosts/{id}/complete",
            post(hosts::complete_many).layer(DefaultBodyLimit::max(COMPLETION_BODY_LIMIT)),
        )
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/wait", get(jobs::wait))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route(
            "/v1/jobs/{id}/complete",
            post(jobs::complete).layer(DefaultBodyLimit::max(COMPLETION_BODY_LIMIT)),
        )
        .route("/v1/apikeys", post(apikeys::create).get(apikeys::list))
        .route("/v1/apikeys/{id}", delete(apikeys::revoke))
        .route("/v1/whoami", get(apikeys::whoami))
        .route("/v1/network/peers", get(network::peers))
        .route("/v1/network/peers/{id}", delete(network::remove))
        .route("/v1/network/join", post(network::join))
        .route(
            artifacts::ARTIFACTS_PATH,
            get(artifacts::list).post(artifacts::record),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes));
    // Blobs stream through these without a body limit (uploads enforce the
    // artifact size limit themselves) and without the request timeout.
    let transfers = Router::new()
        .route(
            "/v1/artifacts/{digest}",
            put(artifacts::upload)
                .get(artifacts::download)
                .head(artifacts::head),
        )
        .layer(RequestBodyTimeoutLayer::new(UPLOAD_IDLE_TIMEOUT));
    api.merge(raft)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(request_timed_out))
                .timeout(REQUEST_TIMEOUT),
        )
        .merge(transfers)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            node.clone(),
            forward::to_leader,
        ))
        // 5xx answers (no quorum, a leader change) are expected during
        // failover; they are the caller's to report, not an error here.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .with_state(node)
}

/// The only error the layers below the timeout raise is the timeout itself.
async fn request_timed_out(_: tower::BoxError) -> ApiError {
    ApiError::Timeout(format!(
        "the request took longer than {} s",
        REQUEST_TIMEOUT.as_secs()
    ))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this route".into())
}
