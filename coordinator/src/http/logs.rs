//! `GET /v1/services/{name}/logs`: the recent output of a service's native
//! instances, fetched from the listeners of the hosts that hold them (each
//! host keeps a bounded ring per instance; coordinators store none of it).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use futures_util::future::join_all;
use skyclaw_api::headers;
use skyclaw_api::services::{
    DEFAULT_LOG_TAIL, Instance, InstanceLogs, LogsQuery, MAX_LOG_TAIL, ServiceKind, ServiceLogs,
};

use super::auth::Principal;
use super::extract::ApiQuery;
use super::services::{require_read, visible};
use crate::error::ApiError;
use crate::node::Node;
use crate::state;

/// How long a host has to answer for its instance's logs: a live host
/// answers in milliseconds; one that does not is reported, not waited for.
const HOST_LOGS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from a host: a host keeps at most 256 KiB of lines
/// per instance, which JSON escaping can double; a host that sends more is
/// lying or broken, and must not fill the coordinator's memory.
const MAX_HOST_LOGS_BYTES: usize = 2 * 1024 * 1024;

/// The client that asks hosts for logs: it sends the cluster token, so it
/// never follows a redirect (which would carry the token elsewhere).
fn host_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("a client with default TLS settings builds")
    })
}

pub async fn logs(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Json<ServiceLogs>, ApiError> {
    require_read(&principal)?;
    let tail = query.tail.unwrap_or(DEFAULT_LOG_TAIL);
    if tail > MAX_LOG_TAIL {
        return Err(ApiError::BadRequest(format!(
            "tail may be at most {MAX_LOG_TAIL}, not {tail}"
        )));
    }
    let service = visible(&node, &principal, &name).await?;
    let native = |i: &&Instance| {
        service
            .spec_of(i.version)
            .is_some_and(|spec| spec.kind == ServiceKind::Native)
    };
    let mut instances: Vec<Instance> = service
        .instances
        .iter()
        .filter(|i| i.state.is_alive())
        .filter(native)
        .cloned()
        .collect();
    if let Some(wanted) = &query.instance {
        instances.retain(|i| &i.id == wanted);
        if instances.is_empty() {
            return Err(ApiError::NotFound(format!(
                "service {name} has no running native instance {wanted}"
            )));
        }
    }
    let fetched = instances.iter().map(|i| from_host(&node, i, tail));
    Ok(Json(ServiceLogs {
        instances: join_all(fetched).await,
    }))
}

/// One instance's lines from its host, or why they could not be had.
async fn from_host(node: &Node, instance: &Instance, tail: usize) -> InstanceLogs {
    let failed = |error: String| InstanceLogs {
        instance_id: instance.id.clone(),
        host_id: instance.host_id.clone(),
        lines: Vec::new(),
        error: Some(error),
    };
    let host_id = instance.host_id.clone();
    let host = node
        .store
        .scan(move |c| state::hosts::get(c, &host_id))
        .await;
    let control_url = match host {
        Ok(Some(row)) => row.registration.services.and_then(|s| s.control_url),
        Ok(None) => None,
        Err(e) => return failed(format!("cannot read host {}: {e}", instance.host_id)),
    };
    let Some(base) = control_url else {
        return failed(format!(
            "host {} did not say where it serves logs",
            instance.host_id
        ));
    };
    let url = format!(
        "{}/v1/instances/{}/logs",
        base.trim_end_matches('/'),
        instance.id
    );
    let answer = host_client()
        .get(&url)
        .query(&[("tail", tail)])
        .header(headers::TOKEN, &node.config.token)
        .timeout(HOST_LOGS_TIMEOUT)
        .send()
        .await;
    let answer = match answer {
        Ok(answer) if answer.status().is_success() => answer,
        Ok(answer) => {
            return failed(format!(
                "host {} answered {} for the logs",
                instance.host_id,
                answer.status()
            ));
        }
        Err(e) => {
            return failed(format!(
                "cannot reach host {} for the logs: {e}",
                instance.host_id
            ));
        }
    };
    let body = match read_capped(answer).await {
        Ok(body) => body,
        Err(error) => return failed(format!("host {}: {error}", instance.host_id)),
    };
    match serde_json::from_slice::<InstanceLogs>(&body) {
        Ok(logs) if logs.instance_id == instance.id => logs,
        Ok(_) => failed(format!(
            "host {} answered for another instance",
            instance.host_id
        )),
        Err(e) => failed(format!(
            "host {} sent unreadable logs: {e}",
            instance.host_id
        )),
    }
}

/// The answer's body, refused past [`MAX_HOST_LOGS_BYTES`].
async fn read_capped(mut answer: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| format!("cannot read the logs: {e}"))?
    {
        if body.len() + chunk.len() > MAX_HOST_LOGS_BYTES {
            return Err(format!(
                "sent more than {MAX_HOST_LOGS_BYTES} bytes of logs; not read"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
