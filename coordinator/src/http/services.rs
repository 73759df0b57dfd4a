//! Service routes: deploy (`PUT`), list, get, scale, remove, the endpoint
//! set gateways watch (every service's for them, a key's own for a key
//! that reads services), and the two host routes of the instance protocol:
//! a long-poll of what the host should run, and its reports of how that
//! goes. Long-polls wait on the services watch and answer once the index
//! they watch passes the caller's.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use skyclaw_api::apikeys::Scope;
use skyclaw_api::artifacts::ArtifactKind;
use skyclaw_api::now_ms;
use skyclaw_api::services::{
    Assignments, DeployOutcome, Deployed, Endpoints, InstanceReports, MAX_INSTANCE_REPORTS,
    MAX_LAST_ERROR_BYTES, MAX_WATCH_WAIT_MS, Scale, Service, ServiceKind, ServiceList, ServiceSpec,
    WatchQuery, validate_replicas, validate_service_name,
};

use super::artifacts;
use super::auth::{ClusterToken, Principal};
use super::extract::{ApiQuery, IdempotencyKey, JsonBody, request_hash};
use crate::error::ApiError;
use crate::node::Node;
use crate::scheduler::claims::not_registered;
use crate::state::{self, Command};

pub async fn put(
    State(node): State<Arc<Node>>,
    principal: Principal,
    idempotency: IdempotencyKey,
    Path(name): Path<String>,
    body: JsonBody<ServiceSpec>,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    principal.require(Scope::ServicesDeploy)?;
    validate_service_name(&name).map_err(|e| ApiError::BadRequest(e.0))?;
    let spec = body.parse()?;
    spec.validate().map_err(|e| ApiError::BadRequest(e.0))?;
    check_artifact(&node, &spec)?;
    let now = now_ms();
    let record = idempotency.record(&principal, &body.request_hash, now);
    let command = Command::PutService {
        name: name.clone(),
        spec,
        owner: principal.owner(),
        now,
    };
    let outcome: DeployOutcome = node.execute(command, record).await?;
    let service = visible(&node, &principal, &name).await?;
    let status = match outcome {
        DeployOutcome::Created => StatusCode::CREATED,
        DeployOutcome::Deployed | DeployOutcome::Scaled | DeployOutcome::Unchanged => {
            StatusCode::OK
        }
    };
    Ok((status, Json(Deployed { outcome, service })))
}

/// Refuses a spec whose artifact was never uploaded or is of the wrong kind.
fn check_artifact(node: &Node, spec: &ServiceSpec) -> Result<(), ApiError> {
    let digest = &spec.artifact;
    let info = artifacts::uploaded(node, digest, "skyclaw deploy does")?;
    let fits = match spec.kind {
        ServiceKind::Native => info.kind == ArtifactKind::Bundle,
        ServiceKind::WasiHttp => info.kind == ArtifactKind::WasmComponent,
    };
    if fits {
        Ok(())
    } else {
        let wanted = match spec.kind {
            ServiceKind::Native => "a bundle (a tar archive)",
            ServiceKind::WasiHttp => "a wasm component",
        };
        Err(ApiError::BadRequest(format!(
            "artifact {digest} is a {}; a {} service runs {wanted}",
            info.kind,
            spec.kind.as_str()
        )))
    }
}

pub async fn list(
    State(node): State<Arc<Node>>,
    principal: Principal,
) -> Result<Json<ServiceList>, ApiError> {
    require_read(&principal)?;
    let owner = key_owner(&principal);
    let services = node
        .store
        .scan(move |c| state::services::list(c, owner.as_deref()))
        .await?;
    Ok(Json(ServiceList { services }))
}

pub async fn get(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Service>, ApiError> {
    require_read(&principal)?;
    Ok(Json(visible(&node, &principal, &name).await?))
}

pub async fn scale(
    State(node): State<Arc<Node>>,
    principal: Principal,
    idempotency: IdempotencyKey,
    Path(name): Path<String>,
    body: JsonBody<Scale>,
) -> Result<Json<Service>, ApiError> {
    principal.require(Scope::ServicesDeploy)?;
    let replicas = body.parse()?.replicas;
    validate_replicas(replicas).map_err(|e| ApiError::BadRequest(e.0))?;
    let now = now_ms();
    let record = idempotency.record(&principal, &body.request_hash, now);
    let command = Command::ScaleService {
        name: name.clone(),
        replicas,
        owner: principal.owner(),
        now,
    };
    node.execute::<()>(command, record).await?;
    Ok(Json(visible(&node, &principal, &name).await?))
}

pub async fn delete(
    State(node): State<Arc<Node>>,
    principal: Principal,
    idempotency: IdempotencyKey,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Scope::ServicesDeploy)?;
    let now = now_ms();
    let hash = request_hash("DELETE", &format!("/v1/services/{name}"), b"");
    let record = idempotency.record(&principal, &hash, now);
    let command = Command::DeleteService {
        name,
        owner: principal.owner(),
        now,
    };
    node.execute::<()>(command, record).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reading services takes `services:read`, or `services:deploy`, which
/// reads what it deploys.
pub(super) fn require_read(principal: &Principal) -> Result<(), ApiError> {
    principal
        .require(Scope::ServicesRead)
        .or_else(|_| principal.require(Scope::ServicesDeploy))
}

/// The owner a key's reads are limited to; the token reads every service.
fn key_owner(principal: &Principal) -> Option<String> {
    match principal {
        Principal::Token => None,
        Principal::ApiKey(_) => Some(principal.owner().as_column()),
    }
}

/// A service the caller may see; others' services are reported as missing.
pub(super) async fn visible(
    node: &Node,
    principal: &Principal,
    name: &str,
) -> Result<Service, ApiError> {
    let owner = key_owner(principal);
    let name_owned = name.to_string();
    let found = node
        .store
        .scan(move |c| state::services::get_owned(c, &name_owned, owner.as_deref()))
        .await?;
    found.ok_or_else(|| ApiError::NotFound(format!("no service {name}")))
}

/// Routable endpoints, once their index passes `index`: every service's
/// for the token and `gateway` keys (gateways route to all of them), the
/// key's own services' for a key that reads services.
pub async fn endpoints(
    State(node): State<Arc<Node>>,
    principal: Principal,
    ApiQuery(query): ApiQuery<WatchQuery>,
) -> Result<Json<Endpoints>, ApiError> {
    let owner = match principal.require(Scope::Gateway) {
        Ok(()) => None,
        Err(_) => {
            require_read(&principal)?;
            key_owner(&principal)
        }
    };
    let endpoints = node
        .store
        .scan_past(query.index, give_up(&node, query), move |c| {
            let endpoints = state::services::endpoints(c, owner.as_deref())?;
            Ok((endpoints.index, endpoints))
        })
        .await?;
    Ok(Json(endpoints))
}

/// What a host should run, once the services index passes `index`.
pub async fn assignments(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    Path(host_id): Path<String>,
    ApiQuery(query): ApiQuery<WatchQuery>,
) -> Result<Json<Assignments>, ApiError> {
    let assignments = node
        .store
        .scan_past(query.index, give_up(&node, query), move |c| {
            let index = state::services::services_index(c)?;
            let instances = state::services::assignments(c, &host_id)?;
            Ok((index, Assignments { index, instances }))
        })
        .await?;
    Ok(Json(assignments))
}

/// When a long-poll gives up waiting: after `wait_ms` (capped at
/// [`MAX_WATCH_WAIT_MS`]), or at shutdown.
async fn give_up(node: &Node, query: WatchQuery) {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0).min(MAX_WATCH_WAIT_MS));
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = node.shutting_down() => {}
    }
}

/// A host's reports on its instances; reports on instances it does not
/// hold are left out by the state machine.
pub async fn report(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    Path(host_id): Path<String>,
    body: JsonBody<InstanceReports>,
) -> Result<StatusCode, ApiError> {
    let reports = body.parse()?.reports;
    if reports.len() > MAX_INSTANCE_REPORTS {
        return Err(ApiError::BadRequest(format!(
            "a report carries at most {MAX_INSTANCE_REPORTS} instances, not {}",
            reports.len()
        )));
    }
    for report in &reports {
        if report
            .last_error
            .as_ref()
            .is_some_and(|e| e.len() > MAX_LAST_ERROR_BYTES)
        {
            return Err(ApiError::BadRequest(format!(
                "last_error of instance {} is over {MAX_LAST_ERROR_BYTES} bytes",
                report.instance_id
            )));
        }
        if let Some(endpoint) = &report.endpoint
            && !skyclaw_api::url::is_http_url(endpoint)
        {
            return Err(ApiError::BadRequest(format!(
                "endpoint {endpoint:?} of instance {} is not an http(s) URL",
                report.instance_id
            )));
        }
    }
    node.hosts_tracked().await?;
    if node.liveness.get(&host_id).is_none() {
        return Err(not_registered(&host_id));
    }
    let command = Command::ReportInstances {
        host_id,
        reports,
        now: now_ms(),
    };
    node.execute::<u64>(command, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
