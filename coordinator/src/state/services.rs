//! Services in the replicated state: deploys (a version counter per name),
//! scaling, removal, instances placed by the leader and reported by their
//! hosts, rollouts ended as done or failed, and the two version indexes that
//! long-polls watch (`services_index`: anything changed; `endpoints_index`:
//! the routable set changed).

use rusqlite::{Connection, OptionalExtension, Row, params};
use skyclaw_api::Millis;
use skyclaw_api::services::{
    Assignment, Deploy, DeployOutcome, DeployStatus, Endpoint, Endpoints, Instance, InstanceReport,
    InstanceState, Service, ServiceEndpoints, ServiceSpec, ServiceVersion,
};

use super::apply::{CommandResult, Effects};
use super::command::{CommandError, Output, Owner};
use super::read::corrupt;

/// Stopped and failed instances kept per service, newest first: enough to
/// see why recent ones ended (and to keep the leader from placing a version
/// again on a host where it failed), few enough that rows stay bounded.
const KEPT_ENDED_INSTANCES: i64 = 16;

/// The meta counters long-polls watch.
const SERVICES_INDEX: &str = "services_index";
const ENDPOINTS_INDEX: &str = "endpoints_index";

/// Creates a service, deploys a new version, or (the same spec with another
/// replica count) scales it; the same spec again changes nothing.
pub(super) fn put_service(
    conn: &Connection,
    name: &str,
    spec: &ServiceSpec,
    owner: &Owner,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let Some(row) = row(conn, name)? else {
        insert_version(conn, name, 1, spec, now)?;
        conn.prepare_cached(
            "INSERT INTO services (name, version, previous_version, replicas, deploy, owner,
                                   created_at, updated_at)
             VALUES (?1, 1, NULL, ?2, ?3, ?4, ?5, ?5)",
        )?
        .execute(params![
            name,
            spec.replicas,
            deploy_json(&rolling(1, spec, now)),
            owner.as_column(),
            now
        ])?;
        changed(conn, effects, true)?;
        return Ok(Ok(Output::Deployed(DeployOutcome::Created)));
    };
    if let Err(refused) = check_owner(&row, owner, name) {
        return Ok(Err(refused));
    }
    if row.deleted_at.is_none() {
        let current = version_spec(conn, name, row.version)?;
        let failed = row.deploy.status == DeployStatus::Failed;
        if !failed && current.without_replicas() == spec.without_replicas() {
            if row.replicas == spec.replicas {
                return Ok(Ok(Output::Deployed(DeployOutcome::Unchanged)));
            }
            set_replicas(conn, name, spec.replicas, now)?;
            changed(conn, effects, false)?;
            return Ok(Ok(Output::Deployed(DeployOutcome::Scaled)));
        }
    }
    let version = row.version + 1;
    // What serves while the new version rolls out: the current version once
    // its rollout is done; while it still rolls out, or after it failed, the
    // one that kept serving meanwhile. A removed service starts over with
    // nothing serving.
    let previous = match (row.deleted_at, row.deploy.status) {
        (Some(_), _) => None,
        (None, DeployStatus::Failed) => row.previous_version,
        (None, DeployStatus::Rolling) => row.previous_version.or(Some(row.version)),
        (None, DeployStatus::Done) => Some(row.version),
    };
    insert_version(conn, name, version, spec, now)?;
    conn.prepare_cached(
        "UPDATE services SET version = ?2, previous_version = ?3, replicas = ?4, deploy = ?5,
                             owner = CASE WHEN deleted_at IS NULL THEN owner ELSE ?6 END,
                             waiting_reason = NULL, deleted_at = NULL,
                             updated_at = ?7
         WHERE name = ?1",
    )?
    .execute(params![
        name,
        version,
        previous,
        spec.replicas,
        deploy_json(&rolling(version, spec, now)),
        owner.as_column(),
        now
    ])?;
    forget_unused_versions(conn, name)?;
    changed(conn, effects, true)?;
    let outcome = if row.deleted_at.is_some() {
        DeployOutcome::Created
    } else {
        DeployOutcome::Deployed
    };
    Ok(Ok(Output::Deployed(outcome)))
}

fn rolling(version: u64, spec: &ServiceSpec, now: Millis) -> Deploy {
    Deploy {
        version,
        status: DeployStatus::Rolling,
        reason: None,
        started_at: now,
        deadline_at: now.saturating_add(spec.rollout.healthy_deadline_ms),
        finished_at: None,
    }
}

pub(super) fn scale_service(
    conn: &Connection,
    name: &str,
    replicas: u32,
    owner: &Owner,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let row = match live_row(conn, name, owner)? {
        Ok(row) => row,
        Err(refused) => return Ok(Err(refused)),
    };
    if row.replicas != replicas {
        set_replicas(conn, name, replicas, now)?;
        changed(conn, effects, false)?;
    }
    Ok(Ok(Output::Done))
}

/// Removes a service: every instance is asked to stop, and the name keeps
/// its version counter, so a service deployed again under it never reuses
/// a version an old instance still runs.
pub(super) fn delete_service(
    conn: &Connection,
    name: &str,
    owner: &Owner,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    if let Err(refused) = live_row(conn, name, owner)? {
        return Ok(Err(refused));
    }
    conn.prepare_cached("UPDATE services SET deleted_at = ?2, updated_at = ?2 WHERE name = ?1")?
        .execute(params![name, now])?;
    let alive = instance_ids(conn, name, None, true)?;
    stop(conn, &alive, now, effects)?;
    changed(conn, effects, true)?;
    Ok(Ok(Output::Done))
}

/// The service, unless removed or owned by another key.
fn live_row(
    conn: &Connection,
    name: &str,
    owner: &Owner,
) -> rusqlite::Result<Result<ServiceRow, CommandError>> {
    let Some(row) = row(conn, name)?.filter(|r| r.deleted_at.is_none()) else {
        return Ok(Err(CommandError::NotFound(format!("no service {name}"))));
    };
    Ok(check_owner(&row, owner, name).map(|()| row))
}

/// A key manages the services it created; the token manages every one.
fn check_owner(row: &ServiceRow, owner: &Owner, name: &str) -> Result<(), CommandError> {
    if *owner == Owner::Token || row.owner == owner.as_column() {
        Ok(())
    } else {
        Err(CommandError::Forbidden(format!(
            "service {name} belongs to another API key"
        )))
    }
}

fn set_replicas(conn: &Connection, name: &str, replicas: u32, now: Millis) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE services SET replicas = ?2, updated_at = ?3 WHERE name = ?1")?
        .execute(params![name, replicas, now])?;
    Ok(())
}

/// New instances of `version` of a service, each on its host, as `pending`.
/// A plan the service moved on from (another version is the target now, or
/// it was removed) is skipped.
pub(super) fn place_instances(
    conn: &Connection,
    service: &str,
    version: u64,
    placements: &[(String, String)],
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let target = get(conn, service)?.and_then(|s| s.target_version());
    if target != Some(version) {
        return Ok(Err(CommandError::Conflict(format!(
            "service {service} no longer runs version {version}"
        ))));
    }
    for (instance_id, host_id) in placements {
        conn.prepare_cached(
            "INSERT INTO instances (id, service, version, host_id, state, restarts,
                                    created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5)",
        )?
        .execute(params![instance_id, service, version, host_id, now])?;
    }
    conn.prepare_cached("UPDATE services SET waiting_reason = NULL WHERE name = ?1")?
        .execute([service])?;
    changed(conn, effects, false)?;
    Ok(Ok(Output::Count(placements.len() as u64)))
}

/// Asks the hosts of instances still alive to drain and stop them; they
/// leave the endpoint set at once. An instance nobody started (`pending`)
/// is asked too: its host may have seen it already.
pub(super) fn stop_instances(
    conn: &Connection,
    ids: &[String],
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    Ok(Ok(Output::Count(stop(conn, ids, now, effects)?)))
}

/// Marks the alive instances among `ids` stopping; how many were.
fn stop(
    conn: &Connection,
    ids: &[String],
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<u64> {
    let mut stopped = 0;
    let mut routable_left = false;
    for id in ids {
        let Some(state) = instance_state(conn, id)? else {
            continue;
        };
        if !state.is_alive() {
            continue;
        }
        routable_left |= state == InstanceState::Healthy;
        set_state(conn, id, InstanceState::Stopping, now)?;
        stopped += 1;
    }
    if stopped > 0 {
        changed(conn, effects, routable_left)?;
    }
    Ok(stopped)
}

/// A host's reports on its instances. A report on an instance another host
/// holds is skipped (a host speaks only for itself), as is one that would
/// bring back an instance asked to stop or already ended.
pub(super) fn report_instances(
    conn: &Connection,
    host_id: &str,
    reports: &[InstanceReport],
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let mut applied = 0;
    let mut routable_changed = false;
    for report in reports {
        let Some(known) = instance(conn, &report.instance_id)? else {
            continue;
        };
        if known.host_id != host_id || known.state.is_terminal() {
            continue;
        }
        let state = match (known.state, report.state) {
            (InstanceState::Stopping, new) if new.is_alive() => InstanceState::Stopping,
            (_, InstanceState::Pending) => continue,
            (_, new) => new,
        };
        routable_changed |= routable(known.state, known.endpoint.as_deref())
            != routable(state, report.endpoint.as_deref())
            || (state == InstanceState::Healthy && known.endpoint != report.endpoint);
        conn.prepare_cached(
            "UPDATE instances SET state = ?2, endpoint = ?3, restarts = ?4, last_error = ?5,
                                  updated_at = ?6
             WHERE id = ?1",
        )?
        .execute(params![
            report.instance_id,
            state.as_str(),
            report.endpoint,
            report.restarts,
            report.last_error,
            now
        ])?;
        applied += 1;
        if state.is_terminal() {
            prune_ended(conn, &known_service(conn, &report.instance_id)?)?;
        }
    }
    if applied > 0 {
        changed(conn, effects, routable_changed)?;
    }
    Ok(Ok(Output::Count(applied)))
}

/// Ends a rollout still rolling at `version`: done, or failed, whose new
/// instances then stop while the previous version serves on.
pub(super) fn finish_deploy(
    conn: &Connection,
    service: &str,
    version: u64,
    status: DeployStatus,
    reason: Option<&str>,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let Some(row) = row(conn, service)?.filter(|r| r.deleted_at.is_none()) else {
        return Ok(Err(CommandError::NotFound(format!("no service {service}"))));
    };
    if row.deploy.version != version || row.deploy.status != DeployStatus::Rolling {
        return Ok(Err(CommandError::Conflict(format!(
            "service {service} is not rolling out version {version}"
        ))));
    }
    let deploy = Deploy {
        status,
        reason: reason.map(str::to_string),
        finished_at: Some(now),
        ..row.deploy
    };
    conn.prepare_cached("UPDATE services SET deploy = ?2, updated_at = ?3 WHERE name = ?1")?
        .execute(params![service, deploy_json(&deploy), now])?;
    if status == DeployStatus::Failed {
        let new = instance_ids(conn, service, Some(version), true)?;
        stop(conn, &new, now, effects)?;
    }
    forget_unused_versions(conn, service)?;
    changed(conn, effects, true)?;
    Ok(Ok(Output::Done))
}

/// Records why services wait for hosts (`None`: they do not); removed
/// services are skipped.
pub(super) fn set_waiting(
    conn: &Connection,
    reasons: &[(String, Option<String>)],
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let mut set = 0;
    for (name, reason) in reasons {
        set += conn
            .prepare_cached(
                "UPDATE services SET waiting_reason = ?2
                 WHERE name = ?1 AND deleted_at IS NULL AND waiting_reason IS NOT ?2",
            )?
            .execute(params![name, reason])?;
    }
    if set > 0 {
        changed(conn, effects, false)?;
    }
    Ok(Ok(Output::Count(set as u64)))
}

/// The instances of a host that is gone (down, or restarted as another
/// incarnation) end with it; the leader places them elsewhere.
pub(super) fn lose_host_instances(
    conn: &Connection,
    host_id: &str,
    reason: &str,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<()> {
    let mut lost = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT id, service, state FROM instances
         WHERE host_id = ?1 AND state NOT IN ('stopped', 'failed')",
    )?;
    let rows = stmt.query_map([host_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        lost.push(row?);
    }
    if lost.is_empty() {
        return Ok(());
    }
    let mut routable_left = false;
    for (id, service, state) in &lost {
        routable_left |= state == InstanceState::Healthy.as_str();
        // Stopped, not failed: the instance did nothing wrong, and a failed
        // one would keep its version off that host (and fail a rollout).
        let ended = InstanceState::Stopped;
        conn.prepare_cached(
            "UPDATE instances SET state = ?2, last_error = ?3, updated_at = ?4 WHERE id = ?1",
        )?
        .execute(params![id, ended.as_str(), reason, now])?;
        prune_ended(conn, service)?;
    }
    changed(conn, effects, routable_left)?;
    Ok(())
}

/// True when an instance in `state` at `endpoint` is in the endpoint set.
fn routable(state: InstanceState, endpoint: Option<&str>) -> bool {
    state == InstanceState::Healthy && endpoint.is_some()
}

/// Bumps the services index (and the endpoints index when the routable set
/// changed), and tells the node to wake the long-polls.
fn changed(conn: &Connection, effects: &mut Effects, endpoints: bool) -> rusqlite::Result<()> {
    bump(conn, SERVICES_INDEX)?;
    if endpoints {
        bump(conn, ENDPOINTS_INDEX)?;
    }
    effects.services_changed = true;
    Ok(())
}

fn bump(conn: &Connection, key: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = ?1")?
        .execute([key])?;
    Ok(())
}

fn set_state(
    conn: &Connection,
    id: &str,
    state: InstanceState,
    now: Millis,
) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE instances SET state = ?2, updated_at = ?3 WHERE id = ?1")?
        .execute(params![id, state.as_str(), now])?;
    Ok(())
}

fn insert_version(
    conn: &Connection,
    name: &str,
    version: u64,
    spec: &ServiceSpec,
    now: Millis,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO service_versions (service, version, spec, created_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        name,
        version,
        serde_json::to_string(spec).expect("wire types serialise"),
        now
    ])?;
    Ok(())
}

/// Drops versions that are neither current nor previous and that no
/// instance still runs.
fn forget_unused_versions(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM service_versions
         WHERE service = ?1
           AND version NOT IN (SELECT version FROM services WHERE name = ?1)
           AND version NOT IN (SELECT previous_version FROM services
                               WHERE name = ?1 AND previous_version IS NOT NULL)
           AND version NOT IN (SELECT version FROM instances
                               WHERE service = ?1 AND state NOT IN ('stopped', 'failed'))",
    )?
    .execute([name])?;
    Ok(())
}

/// Keeps the newest [`KEPT_ENDED_INSTANCES`] ended instances of a service.
fn prune_ended(conn: &Connection, service: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM instances WHERE service = ?1 AND state IN ('stopped', 'failed')
           AND seq NOT IN (SELECT seq FROM instances
                           WHERE service = ?1 AND state IN ('stopped', 'failed')
                           ORDER BY seq DESC LIMIT ?2)",
    )?
    .execute(params![service, KEPT_ENDED_INSTANCES])?;
    forget_unused_versions(conn, service)
}

fn deploy_json(deploy: &Deploy) -> String {
    serde_json::to_string(deploy).expect("wire types serialise")
}

// Reads, shared by `apply` and the HTTP handlers.

/// A service as stored, with what only the coordinator sees.
#[derive(Debug, Clone, PartialEq)]
struct ServiceRow {
    version: u64,
    previous_version: Option<u64>,
    replicas: u32,
    deploy: Deploy,
    waiting_reason: Option<String>,
    owner: String,
    created_at: Millis,
    updated_at: Millis,
    deleted_at: Option<Millis>,
}

const SERVICE_COLUMNS: &str = "name, version, previous_version, replicas, deploy, \
     waiting_reason, owner, created_at, updated_at, deleted_at";

fn service_row(row: &Row<'_>) -> rusqlite::Result<(String, ServiceRow)> {
    let deploy: String = row.get(4)?;
    Ok((
        row.get(0)?,
        ServiceRow {
            version: row.get(1)?,
            previous_version: row.get(2)?,
            replicas: row.get(3)?,
            deploy: serde_json::from_str(&deploy).map_err(|e| corrupt(4, e))?,
            waiting_reason: row.get(5)?,
            owner: row.get(6)?,
            created_at: row.get(7)?,
            updated_at: row.get(8)?,
            deleted_at: row.get(9)?,
        },
    ))
}

fn row(conn: &Connection, name: &str) -> rusqlite::Result<Option<ServiceRow>> {
    conn.prepare_cached(&format!(
        "SELECT {SERVICE_COLUMNS} FROM services WHERE name = ?1"
    ))?
    .query_row([name], service_row)
    .optional()
    .map(|found| found.map(|(_, row)| row))
}

fn version_spec(conn: &Connection, name: &str, version: u64) -> rusqlite::Result<ServiceSpec> {
    let spec: String = conn
        .prepare_cached("SELECT spec FROM service_versions WHERE service = ?1 AND version = ?2")?
        .query_row(params![name, version], |r| r.get(0))?;
    serde_json::from_str(&spec).map_err(|e| corrupt(0, e))
}

fn version(conn: &Connection, name: &str, version: u64) -> rusqlite::Result<ServiceVersion> {
    let (spec, created_at): (String, Millis) = conn
        .prepare_cached(
            "SELECT spec, created_at FROM service_versions WHERE service = ?1 AND version = ?2",
        )?
        .query_row(params![name, version], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(ServiceVersion {
        version,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt(0, e))?,
        created_at,
    })
}

const INSTANCE_COLUMNS: &str =
    "id, host_id, version, endpoint, state, restarts, last_error, created_at, updated_at";

fn instance_row(row: &Row<'_>) -> rusqlite::Result<Instance> {
    let state: String = row.get(4)?;
    Ok(Instance {
        id: row.get(0)?,
        host_id: row.get(1)?,
        version: row.get(2)?,
        endpoint: row.get(3)?,
        state: state.parse().map_err(|e: String| corrupt(4, e))?,
        restarts: row.get(5)?,
        last_error: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}

fn instance(conn: &Connection, id: &str) -> rusqlite::Result<Option<Instance>> {
    conn.prepare_cached(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1"
    ))?
    .query_row([id], instance_row)
    .optional()
}

fn instance_state(conn: &Connection, id: &str) -> rusqlite::Result<Option<InstanceState>> {
    Ok(instance(conn, id)?.map(|i| i.state))
}

fn known_service(conn: &Connection, instance_id: &str) -> rusqlite::Result<String> {
    conn.prepare_cached("SELECT service FROM instances WHERE id = ?1")?
        .query_row([instance_id], |r| r.get(0))
}

/// Ids of a service's instances (of one version, or all; alive ones only, or all).
fn instance_ids(
    conn: &Connection,
    service: &str,
    version: Option<u64>,
    alive_only: bool,
) -> rusqlite::Result<Vec<String>> {
    let mut ids = Vec::new();
    for instance in instances_of(conn, service)? {
        if version.is_none_or(|v| v == instance.version)
            && (!alive_only || instance.state.is_alive())
        {
            ids.push(instance.id);
        }
    }
    Ok(ids)
}

fn instances_of(conn: &Connection, service: &str) -> rusqlite::Result<Vec<Instance>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE service = ?1 ORDER BY seq"
    ))?;
    let rows = stmt.query_map([service], instance_row)?;
    rows.collect()
}

fn view(conn: &Connection, name: String, row: ServiceRow) -> rusqlite::Result<Service> {
    let current = version(conn, &name, row.version)?;
    let previous = row
        .previous_version
        .map(|v| version(conn, &name, v))
        .transpose()?;
    let instances = instances_of(conn, &name)?;
    Ok(Service {
        name,
        current,
        previous,
        replicas: row.replicas,
        deploy: row.deploy,
        waiting_reason: row.waiting_reason,
        instances,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// A service that was not removed, with its versions and instances.
pub fn get(conn: &Connection, name: &str) -> rusqlite::Result<Option<Service>> {
    get_owned(conn, name, None)
}

/// [`get`], limited to services `owner` (as stored) created when given.
pub fn get_owned(
    conn: &Connection,
    name: &str,
    owner: Option<&str>,
) -> rusqlite::Result<Option<Service>> {
    let visible =
        row(conn, name)?.filter(|r| r.deleted_at.is_none() && owner.is_none_or(|o| o == r.owner));
    match visible {
        Some(row) => view(conn, name.to_string(), row).map(Some),
        None => Ok(None),
    }
}

/// Every service not removed, by name; only `owner`'s when given.
pub fn list(conn: &Connection, owner: Option<&str>) -> rusqlite::Result<Vec<Service>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SERVICE_COLUMNS} FROM services
         WHERE deleted_at IS NULL AND (?1 IS NULL OR owner = ?1) ORDER BY name"
    ))?;
    let rows: Vec<(String, ServiceRow)> = stmt
        .query_map([owner], service_row)?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|(name, row)| view(conn, name, row))
        .collect()
}

/// Instances still alive (or stopping) of services that were removed: the
/// leader has nothing more to place for them, only these to see stopped.
pub fn orphans(conn: &Connection) -> rusqlite::Result<Vec<Instance>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances
         WHERE state NOT IN ('stopped', 'failed')
           AND service IN (SELECT name FROM services WHERE deleted_at IS NOT NULL)
         ORDER BY seq"
    ))?;
    let rows = stmt.query_map([], instance_row)?;
    rows.collect()
}

/// What a host should run now: its instances not yet ended, each with its
/// version's spec, `stop` for those asked to stop.
pub fn assignments(conn: &Connection, host_id: &str) -> rusqlite::Result<Vec<Assignment>> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.id, i.service, i.version, i.state, v.spec
         FROM instances i JOIN service_versions v
           ON v.service = i.service AND v.version = i.version
         WHERE i.host_id = ?1 AND i.state NOT IN ('stopped', 'failed')
         ORDER BY i.seq",
    )?;
    let rows = stmt.query_map([host_id], |r| {
        let state: String = r.get(3)?;
        let spec: String = r.get(4)?;
        Ok(Assignment {
            instance_id: r.get(0)?,
            service: r.get(1)?,
            version: r.get(2)?,
            stop: state == InstanceState::Stopping.as_str(),
            spec: serde_json::from_str(&spec).map_err(|e| corrupt(4, e))?,
        })
    })?;
    rows.collect()
}

/// Every service's routable endpoints (only `owner`'s services when
/// given): healthy instances that reported where they listen. Instances of
/// another version than the target (the previous one, while a rollout
/// runs) are marked draining.
pub fn endpoints(conn: &Connection, owner: Option<&str>) -> rusqlite::Result<Endpoints> {
    let index = self::index(conn, ENDPOINTS_INDEX)?;
    let mut services = Vec::new();
    for service in list(conn, owner)? {
        let Some(version) = service.target_version() else {
            continue;
        };
        let endpoints = service
            .instances
            .iter()
            .filter(|i| routable(i.state, i.endpoint.as_deref()))
            .map(|i| Endpoint {
                instance_id: i.id.clone(),
                url: i.endpoint.clone().unwrap_or_default(),
                version: i.version,
                draining: i.version != version,
            })
            .collect();
        let spec = service.spec_of(version).unwrap_or(&service.current.spec);
        let (kind, health_path) = (spec.kind, spec.health.path.clone());
        services.push(ServiceEndpoints {
            name: service.name,
            kind,
            version,
            health_path,
            endpoints,
        });
    }
    Ok(Endpoints { index, services })
}

/// The index that grows with every change to services and instances.
pub fn services_index(conn: &Connection) -> rusqlite::Result<u64> {
    index(conn, SERVICES_INDEX)
}

fn index(conn: &Connection, key: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
}

#[cfg(test)]
mod tests;
