//! Forwarding to the leader: writes, and the views only the leader has (the
//! peers table with progress, host liveness), are served by the leader.
//! Another coordinator passes such a request on and returns the answer as it
//! came, so callers never need to know who leads. Artifact uploads are the
//! exception: their bodies stay on the coordinator that receives them, which
//! sends the leader only the record (see `http::artifacts`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use skyclaw_api::headers;

use crate::cluster::LEADER_WAIT;
use crate::error::ApiError;
use crate::node::Node;

/// Marks a request one coordinator sends another, so it is never passed on
/// again: not forwarded twice, and a blob asked of a peer is not fetched from
/// further peers.
pub const FORWARDED: &str = "x-skyclaw-forwarded-by";
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
    match leader_elsewhere(&node).await {
        Ok(None) => next.run(req).await,
        Ok(Some(url)) => match forward(&node, &url, req).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        },
        // A read: this node's own view beats none.
        Err(_) if is_read(req.method()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Where writes go from here: `None` when this node leads, else the leader's
/// URL. Waits up to [`LEADER_WAIT`] for one to be elected.
pub async fn leader_elsewhere(node: &Node) -> Result<Option<String>, ApiError> {
    if node.cluster.is_leader() {
        return Ok(None);
    }
    let Some((leader, url)) = node.cluster.wait_for_leader(LEADER_WAIT).await else {
        return Err(ApiError::NoQuorum(format!(
            "no leader elected within {} s: a majority of coordinators is unreachable",
            LEADER_WAIT.as_secs()
        )));
    };
    Ok((leader != node.cluster.id).then_some(url))
}

/// Sends the leader a JSON request this node makes itself, with the cluster
/// token, the way a caller's request is forwarded, and returns the answer as
/// it came.
pub async fn post_json(
    node: &Node,
    leader_url: &str,
    path: &str,
    body: &impl Serialize,
) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(body).expect("requests serialise");
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(headers::TOKEN, &node.config.token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .map_err(|e| ApiError::Internal(format!("cannot build a request to the leader: {e}")))?;
    forward(node, leader_url, req).await
}

/// Writes go to the leader, and so do the reads only the leader can answer.
fn needs_leader(method: &Method, path: &str) -> bool {
    if path.starts_with("/raft/") || is_artifact_upload(method, path) {
        return false;
    }
    !is_read(method) || path == "/v1/network/peers" || path == "/v1/hosts"
}

fn is_read(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// `PUT /v1/artifacts/{digest}`: stored where it arrives, never buffered to be
/// forwarded.
fn is_artifact_upload(method: &Method, path: &str) -> bool {
    *method == Method::PUT && path.starts_with("/v1/artifacts/")
}

async fn forward(node: &Node, leader_url: &str, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    // The leader applies each route's own limit; this only bounds what is
    // buffered here, by the largest any route accepts.
    let limit = node.config.max_body_bytes.max(super::COMPLETION_BODY_LIMIT);
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| ApiError::PayloadTooLarge(format!("request body too large: {e}")))?;
    let target = format!(
        "{leader_url}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let write = !is_read(&parts.method);
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
    let answer = request
        .send()
        .await
        .map_err(|e| lost_answer(write, leader_url, "did not answer", &e))?;
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| lost_answer(write, leader_url, "broke off its answer", &e))?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    Ok(response)
}

/// What the caller is told when the leader's answer is lost. A request
/// that never reached the leader (no connection) is safe to send again:
/// 503. A write that may have reached it has an unknown outcome, as a write
/// that timed out on the leader itself: 504, which clients retry with the
/// same idempotency key to learn what happened.
fn lost_answer(write: bool, leader_url: &str, what: &str, e: &reqwest::Error) -> ApiError {
    let message = format!("the leader at {leader_url} {what}: {e}");
    if write && !e.is_connect() {
        ApiError::Timeout(format!(
            "{message}; the write may have been applied: retry with the same idempotency key \
             to learn its outcome"
        ))
    } else {
        ApiError::Unavailable(message)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use skyclaw_api::ErrorCode;

    use super::*;

    /// A reqwest error from posting to `url`.
    async fn post_error(url: &str) -> reqwest::Error {
        reqwest::Client::new()
            .post(url)
            .body("{}")
            .send()
            .await
            .expect_err("the request fails")
    }

    #[tokio::test]
    async fn a_write_the_leader_may_have_received_has_an_unknown_outcome() {
        // Reads the whole request, then hangs up without answering.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/jobs", listener.local_addr().unwrap());
        let hang_up = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
        });
        let e = post_error(&url).await;
        hang_up.join().unwrap();
        assert_eq!(
            lost_answer(true, &url, "did not answer", &e).code(),
            ErrorCode::Timeout
        );
        assert_eq!(
            lost_answer(false, &url, "did not answer", &e).code(),
            ErrorCode::Unavailable
        );
    }

    #[tokio::test]
    async fn a_write_that_never_reached_the_leader_may_be_sent_again() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/v1/jobs");
        let e = post_error(&url).await;
        assert!(e.is_connect(), "{e}");
        assert_eq!(
            lost_answer(true, &url, "did not answer", &e).code(),
            ErrorCode::Unavailable
        );
    }
}
