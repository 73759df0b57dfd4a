//! Forwarding to the leader: writes, and the views only the leader has (the
//! peers table with progress, host liveness), are served by the leader.
//! Another coordinator passes such a request on and returns the answer as it
//! came, so callers never need to know who leads.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use skyclaw_api::headers;

use crate::cluster::LEADER_WAIT;
use crate::error::ApiError;
use crate::node::Node;

/// Marks a forwarded request, so it is never forwarded twice.
const FORWARDED: &str = "x-skyclaw-forwarded-by";
/// How long a forwarded request may take: longer than any long-poll.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(100);
/// The request headers that travel to the leader.
const PASSED_HEADERS: [&str; 5] = [
    headers::TOKEN,
    "authorization",
    headers::IDEMPOTENCY_KEY,
    headers::IDEMPOTENCY_KEY_ALT,
    "content-type",
];

/// Serves the request here when this node leads or the route does not need
/// the leader; otherwise forwards it.
pub async fn to_leader(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if !needs_leader(req.method(), req.uri().path()) || node.cluster.is_leader() {
        return next.run(req).await;
    }
    if req.headers().contains_key(FORWARDED) {
        return ApiError::Unavailable(
            "this coordinator stopped leading while the request was forwarded; retry".into(),
        )
        .into_response();
    }
    let Some((leader, url)) = node.cluster.wait_for_leader(LEADER_WAIT).await else {
        if req.method() == Method::GET {
            return next.run(req).await; // a read: this node's own view beats none
        }
        return ApiError::NoQuorum(format!(
            "no leader elected within {} s: a majority of coordinators is unreachable",
            LEADER_WAIT.as_secs()
        ))
        .into_response();
    };
    if leader == node.cluster.id {
        return next.run(req).await;
    }
    match forward(&node, &url, req).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Writes go to the leader, and so do the reads only the leader can answer.
fn needs_leader(method: &Method, path: &str) -> bool {
    if path.starts_with("/raft/") {
        return false;
    }
    *method != Method::GET || path == "/v1/network/peers" || path == "/v1/hosts"
}

async fn forward(node: &Node, leader_url: &str, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, node.config.max_body_bytes)
        .await
        .map_err(|e| ApiError::PayloadTooLarge(format!("request body too large: {e}")))?;
    let target = format!(
        "{leader_url}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = node
        .http
        .request(parts.method, &target)
        .timeout(FORWARD_TIMEOUT)
        .header(FORWARDED, node.cluster.id.to_string())
        .body(body);
    for name in PASSED_HEADERS {
        if let Some(value) = parts.headers.get(name) {
            request = request.header(HeaderName::from_static(name), value);
        }
    }
    let answer = request.send().await.map_err(|e| {
        ApiError::Unavailable(format!("the leader at {leader_url} did not answer: {e}"))
    })?;
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer.bytes().await.map_err(|e| {
        ApiError::Unavailable(format!(
            "the leader at {leader_url} broke off its answer: {e}"
        ))
    })?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    Ok(response)
}
