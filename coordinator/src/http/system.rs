//! `/health` and `/metrics`: public, for load balancers and Prometheus.

use std::fmt::Write;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use crate::error::ApiError;
use crate::node::Node;
use crate::state::{jobs, read};

pub async fn health(State(node): State<Arc<Node>>) -> Result<Json<serde_json::Value>, ApiError> {
    let applied = node.store.read(read::applied_index)?;
    Ok(Json(json!({"status": "ok", "applied_index": applied})))
}

pub async fn metrics(State(node): State<Arc<Node>>) -> Result<impl IntoResponse, ApiError> {
    let (applied, jobs) = node
        .store
        .scan(|c| Ok((read::applied_index(c)?, jobs::counts(c)?)))
        .await?;
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE skyclaw_applied_index counter");
    let _ = writeln!(out, "skyclaw_applied_index {applied}");
    let _ = writeln!(out, "# TYPE skyclaw_jobs gauge");
    for (status, count) in jobs {
        let _ = writeln!(out, "skyclaw_jobs{{status=\"{status}\"}} {count}");
    }
    let _ = writeln!(out, "# TYPE skyclaw_hosts_up gauge");
    let _ = writeln!(out, "skyclaw_hosts_up {}", node.liveness.up_hosts().len());
    let _ = writeln!(out, "# TYPE skyclaw_claims_reserved_jobs gauge");
    let _ = writeln!(
        out,
        "skyclaw_claims_reserved_jobs {}",
        node.reservations.count()
    );
    let _ = writeln!(out, "# TYPE skyclaw_job_waiters gauge");
    let _ = writeln!(
        out,
        "skyclaw_job_waiters {}",
        node.store.events().job_watches()
    );
    let connections = &node.connections;
    let _ = writeln!(out, "# TYPE skyclaw_http_connections_open gauge");
    let _ = writeln!(out, "skyclaw_http_connections_open {}", connections.open());
    let _ = writeln!(out, "# TYPE skyclaw_http_connections_refused_total counter");
    let _ = writeln!(
        out,
        "skyclaw_http_connections_refused_total {}",
        connections.refused()
    );
    let _ = writeln!(
        out,
        "# TYPE skyclaw_http_connections_timed_out_total counter"
    );
    let _ = writeln!(
        out,
        "skyclaw_http_connections_timed_out_total{{timeout=\"header\"}} {}",
        connections.header_timeouts()
    );
    let _ = writeln!(
        out,
        "skyclaw_http_connections_timed_out_total{{timeout=\"idle\"}} {}",
        connections.idle_timeouts()
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
