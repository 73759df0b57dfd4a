//! The admin listener (`--admin-listen`): `GET /health` and `GET /metrics`,
//! apart from service traffic so no service path can collide with them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use skyclaw_api::serve::Stats as ListenerStats;

use crate::metrics::{Metrics, Render};
use crate::pool::PoolStats;
use crate::routes::Routes;

/// What the admin routes read.
pub struct Admin {
    pub routes: Arc<Routes>,
    pub metrics: Arc<Metrics>,
    pub listener_stats: Arc<ListenerStats>,
    pub pool: Arc<PoolStats>,
    pub public_url: Option<String>,
}

pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

/// `ok` while the endpoint set is fresh, `stale` (still 200: the gateway
/// routes on what it knows) while no coordinator answers, `starting` (503)
/// until a first set arrived.
async fn health(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let freshness = admin.routes.freshness();
    let snapshot = admin.routes.snapshot();
    let (status, code) = if freshness.never_updated {
        ("starting", StatusCode::SERVICE_UNAVAILABLE)
    } else if freshness.stale_since.is_some() {
        ("stale", StatusCode::OK)
    } else {
        ("ok", StatusCode::OK)
    };
    let body = json!({
        "status": status,
        "endpoints_index": snapshot.index,
        "services": snapshot.services.len(),
        "stale_for_ms": freshness.stale_since.map(|at| at.elapsed().as_millis() as u64),
        "last_error": freshness.last_error,
        "public_url": admin.public_url,
    });
    (code, Json(body))
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let freshness = admin.routes.freshness();
    let snapshot = admin.routes.snapshot();
    let text = Render {
        metrics: &admin.metrics,
        snapshot: &snapshot,
        freshness: &freshness,
        stale_secs: freshness.stale_since.map(|at| at.elapsed().as_secs_f64()),
        pool: &admin.pool,
        listener: &admin.listener_stats,
    }
    .text();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
