//! The host's own HTTP listener (`--listen`): `GET /health`, `GET /metrics`
//! (Prometheus text), and, for the coordinators only (the cluster token),
//! `GET /v1/instances/{id}/logs`, the recent output of a native instance.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use skyclaw_api::services::{DEFAULT_LOG_TAIL, InstanceLogs, MAX_LOG_TAIL, ServiceKind};
use skyclaw_api::{ErrorCode, ErrorEnvelope, headers};
use subtle::ConstantTimeEq;

use crate::artifacts::ArtifactCache;
use crate::metrics::{Counters, Snapshot};
use crate::services::Supervisor;
use crate::wasi::WasiEngine;

/// What the listener's routes read.
pub(crate) struct Control {
    pub(crate) host_id: String,
    /// sha256 of the cluster token, compared in constant time.
    pub(crate) token_hash: [u8; 32],
    pub(crate) counters: Arc<Counters>,
    pub(crate) artifacts: Arc<ArtifactCache>,
    /// Counts what wasi-http instances answered.
    pub(crate) engine: WasiEngine,
    /// `None` on a host that runs no services.
    pub(crate) supervisor: Option<Arc<Supervisor>>,
}

pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub(crate) fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/instances/{id}/logs", get(logs))
        .fallback(|| async { refusal(ErrorCode::NotFound, "no such route on a host".into()) })
        .with_state(control)
}

async fn health(State(control): State<Arc<Control>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "host_id": control.host_id}))
}

async fn metrics(State(control): State<Arc<Control>>) -> impl IntoResponse {
    let (instances, restarts) = match &control.supervisor {
        Some(supervisor) => (supervisor.states(), supervisor.restarts()),
        None => Default::default(),
    };
    let text = Snapshot {
        counters: &control.counters,
        instances,
        restarts,
        cache: control.artifacts.stats(),
        http: control.engine.http_stats(),
    }
    .render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    tail: Option<usize>,
}

async fn logs(
    State(control): State<Arc<Control>>,
    sent: HeaderMap,
    Path(instance_id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(refused) = token_refusal(&control, &sent) {
        return refused;
    }
    let Ok(Query(query)) = query else {
        return refusal(
            ErrorCode::BadRequest,
            "the only query parameter is tail".into(),
        );
    };
    let tail = query.tail.unwrap_or(DEFAULT_LOG_TAIL);
    if tail > MAX_LOG_TAIL {
        return refusal(
            ErrorCode::BadRequest,
            format!("tail may be at most {MAX_LOG_TAIL}"),
        );
    }
    let found = control
        .supervisor
        .as_ref()
        .and_then(|s| s.logs(&instance_id));
    let Some((kind, logs)) = found else {
        return refusal(
            ErrorCode::NotFound,
            format!("no instance {instance_id} runs on this host"),
        );
    };
    let (lines, error) = match kind {
        ServiceKind::Native => (logs.tail(tail), None),
        ServiceKind::WasiHttp => (
            Vec::new(),
            Some("wasi-http instances have no output to show".to_string()),
        ),
    };
    Json(InstanceLogs {
        instance_id,
        host_id: control.host_id.clone(),
        lines,
        error,
    })
    .into_response()
}

/// Only the coordinators (holding the cluster token) read logs: the
/// refusal for a request without it.
fn token_refusal(control: &Control, sent: &HeaderMap) -> Option<Response> {
    let Some(token) = sent.get(headers::TOKEN) else {
        return Some(refusal(
            ErrorCode::Unauthorized,
            "this route needs the cluster token".into(),
        ));
    };
    if bool::from(token_hash_bytes(token).ct_eq(&control.token_hash)) {
        None
    } else {
        Some(refusal(
            ErrorCode::Unauthorized,
            "wrong cluster token".into(),
        ))
    }
}

fn token_hash_bytes(token: &HeaderValue) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// An error answer in the envelope every Skyclaw node uses.
fn refusal(code: ErrorCode, message: String) -> Response {
    let mut answer = (code.status(), Json(ErrorEnvelope::new(code, message))).into_response();
    answer
        .headers_mut()
        .insert(headers::ERROR_CODE, HeaderValue::from_static(code.as_str()));
    answer
}
