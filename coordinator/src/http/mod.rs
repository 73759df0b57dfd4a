//! The coordinator's HTTP API: routes, and the layers every route shares
//! (body limit, timeout, tracing, JSON 404/405).

mod apikeys;
pub mod auth;
mod extract;
mod hosts;
mod jobs;
mod system;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::node::Node;

/// Longest any request may take. Long-polls cap their own waits well below it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

pub fn router(node: Arc<Node>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/register", post(hosts::register))
        .route("/v1/hosts/{id}/heartbeat", post(hosts::heartbeat))
        .route("/v1/hosts/{id}/claim", post(hosts::claim))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/wait", get(jobs::wait))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/complete", post(jobs::complete))
        .route("/v1/apikeys", post(apikeys::create).get(apikeys::list))
        .route("/v1/apikeys/{id}", delete(apikeys::revoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(node)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::BadRequest("method not allowed on this route".into())
}
