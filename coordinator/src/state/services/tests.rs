//! Unit tests of the services commands' effects, applied to a fresh state database.

use rusqlite::Connection;
use skyclaw_api::services::{
    DeployOutcome, DeployStatus, InstanceReport, InstanceState, ServiceSpec,
};

use crate::state::testkit::*;
use crate::state::{Command, CommandError, Output, Owner};

fn spec(args: &[&str], replicas: u32) -> ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "kind": "native",
        "artifact": format!("sha256:{}", "ab".repeat(32)),
        "command": "node",
        "args": args,
        "replicas": replicas,
    }))
    .unwrap()
}

fn put(conn: &Connection, spec: ServiceSpec, owner: Owner) -> Result<Output, CommandError> {
    run(
        conn,
        Command::PutService {
            name: "api".into(),
            spec,
            owner,
            now: 10,
        },
    )
    .outcome
}

fn deployed(conn: &Connection, spec: ServiceSpec) -> DeployOutcome {
    match put(conn, spec, Owner::Token) {
        Ok(Output::Deployed(outcome)) => outcome,
        other => panic!("not deployed: {other:?}"),
    }
}

fn place(conn: &Connection, version: u64, placements: &[(&str, &str)]) {
    let applied = run(
        conn,
        Command::PlaceInstances {
            service: "api".into(),
            version,
            placements: placements
                .iter()
                .map(|(i, h)| (i.to_string(), h.to_string()))
                .collect(),
            now: 11,
        },
    );
    assert!(applied.outcome.is_ok(), "{:?}", applied.outcome);
}

fn report(conn: &Connection, host: &str, instance: &str, state: InstanceState) -> u64 {
    let applied = run(
        conn,
        Command::ReportInstances {
            host_id: host.into(),
            reports: vec![InstanceReport {
                instance_id: instance.into(),
                state,
                endpoint: Some(format!("http://127.0.0.1:9{}", &instance[1..])),
                restarts: 0,
                last_error: None,
            }],
            now: 12,
        },
    );
    match applied.outcome {
        Ok(Output::Count(n)) => n,
        other => panic!("{other:?}"),
    }
}

fn state_of(conn: &Connection, instance: &str) -> InstanceState {
    let service = super::get(conn, "api").unwrap().unwrap();
    service
        .instances
        .iter()
        .find(|i| i.id == instance)
        .map(|i| i.state)
        .unwrap_or_else(|| panic!("no instance {instance}"))
}

fn routable(conn: &Connection) -> Vec<(String, bool)> {
    let endpoints = super::endpoints(conn, None).unwrap();
    endpoints
        .services
        .iter()
        .flat_map(|s| {
            s.endpoints
                .iter()
                .map(|e| (e.instance_id.clone(), e.draining))
        })
        .collect()
}

#[test]
fn a_deploy_creates_versions_and_the_same_spec_again_changes_nothing() {
    let conn = db();
    assert_eq!(deployed(&conn, spec(&["v1.js"], 2)), DeployOutcome::Created);
    let index = super::services_index(&conn).unwrap();
    assert_eq!(
        deployed(&conn, spec(&["v1.js"], 2)),
        DeployOutcome::Unchanged
    );
    assert_eq!(
        super::services_index(&conn).unwrap(),
        index,
        "nothing changed"
    );
    assert_eq!(deployed(&conn, spec(&["v1.js"], 3)), DeployOutcome::Scaled);
    let service = super::get(&conn, "api").unwrap().unwrap();
    assert_eq!((service.current.version, service.replicas), (1, 3));
    assert_eq!(
        deployed(&conn, spec(&["v2.js"], 3)),
        DeployOutcome::Deployed
    );
    let service = super::get(&conn, "api").unwrap().unwrap();
    assert_eq!(service.current.version, 2);
    assert_eq!(service.previous.map(|p| p.version), Some(1));
    assert_eq!(service.deploy.status, DeployStatus::Rolling);
    assert_eq!(
        service.deploy.deadline_at,
        10 + service.current.spec.rollout.healthy_deadline_ms
    );
}

#[test]
fn a_key_manages_only_the_services_it_created() {
    let conn = db();
    let key = |id: &str| Owner::ApiKey(id.into());
    assert!(put(&conn, spec(&["a"], 1), key("k1")).is_ok());
    let refused = put(&conn, spec(&["b"], 1), key("k2"));
    assert!(
        matches!(refused, Err(CommandError::Forbidden(_))),
        "{refused:?}"
    );
    let delete = run(
        &conn,
        Command::DeleteService {
            name: "api".into(),
            owner: key("k2"),
            now: 20,
        },
    );
    assert!(matches!(delete.outcome, Err(CommandError::Forbidden(_))));
    assert!(
        put(&conn, spec(&["b"], 1), Owner::Token).is_ok(),
        "the token may"
    );
}

#[test]
fn only_healthy_instances_that_said_where_they_listen_are_routable() {
    let conn = db();
    deployed(&conn, spec(&["v1.js"], 2));
    place(&conn, 1, &[("i1", "h1"), ("i2", "h2")]);
    let assigned = super::assignments(&conn, "h1").unwrap();
    assert_eq!(assigned.len(), 1);
    assert_eq!(
        (assigned[0].instance_id.as_str(), assigned[0].stop),
        ("i1", false)
    );
    assert!(routable(&conn).is_empty());
    let index = super::endpoints(&conn, None).unwrap().index;
    assert_eq!(report(&conn, "h1", "i1", InstanceState::Healthy), 1);
    assert_eq!(routable(&conn), [("i1".to_string(), false)]);
    assert!(super::endpoints(&conn, None).unwrap().index > index);
    assert_eq!(
        report(&conn, "h1", "i2", InstanceState::Healthy),
        0,
        "a host speaks only for its own instances"
    );
    assert_eq!(state_of(&conn, "i2"), InstanceState::Pending);
}

#[test]
fn endpoints_carry_the_health_path_and_a_key_sees_only_its_own_services() {
    let conn = db();
    let mut ready = spec(&["v1.js"], 1);
    ready.health.path = "/ready".into();
    assert!(put(&conn, ready, Owner::ApiKey("k1".into())).is_ok());
    let every = super::endpoints(&conn, None).unwrap();
    assert_eq!(every.services.len(), 1);
    assert_eq!(every.services[0].health_path, "/ready");
    let own = super::endpoints(&conn, Some(&Owner::ApiKey("k1".into()).as_column())).unwrap();
    assert_eq!(own.services, every.services);
    let others = super::endpoints(&conn, Some(&Owner::ApiKey("k2".into()).as_column())).unwrap();
    assert!(others.services.is_empty());
    assert_eq!(others.index, every.index, "one index for every watcher");
}

#[test]
fn an_instance_asked_to_stop_leaves_the_endpoints_and_never_comes_back() {
    let conn = db();
    deployed(&conn, spec(&["v1.js"], 1));
    place(&conn, 1, &[("i1", "h1")]);
    report(&conn, "h1", "i1", InstanceState::Healthy);
    run(
        &conn,
        Command::StopInstances {
            ids: vec!["i1".into()],
            now: 13,
        },
    );
    assert!(routable(&conn).is_empty());
    assert!(super::assignments(&conn, "h1").unwrap()[0].stop);
    report(&conn, "h1", "i1", InstanceState::Healthy);
    assert_eq!(state_of(&conn, "i1"), InstanceState::Stopping);
    report(&conn, "h1", "i1", InstanceState::Stopped);
    assert_eq!(state_of(&conn, "i1"), InstanceState::Stopped);
    report(&conn, "h1", "i1", InstanceState::Healthy);
    assert_eq!(
        state_of(&conn, "i1"),
        InstanceState::Stopped,
        "ended for good"
    );
    assert!(super::assignments(&conn, "h1").unwrap().is_empty());
}

#[test]
fn a_failed_rollout_stops_the_new_instances_and_the_previous_version_serves() {
    let conn = db();
    deployed(&conn, spec(&["v1.js"], 1));
    place(&conn, 1, &[("i1", "h1")]);
    report(&conn, "h1", "i1", InstanceState::Healthy);
    finish(&conn, 1, DeployStatus::Done, None);
    deployed(&conn, spec(&["v2.js"], 1));
    place(&conn, 2, &[("i2", "h2")]);
    report(&conn, "h2", "i2", InstanceState::Healthy);
    assert_eq!(
        routable(&conn),
        [("i1".to_string(), true), ("i2".to_string(), false)],
        "the old version drains while the new one rolls out"
    );
    finish(&conn, 2, DeployStatus::Failed, Some("exit status 1: boom"));
    let service = super::get(&conn, "api").unwrap().unwrap();
    assert_eq!(service.target_version(), Some(1));
    assert_eq!(
        service.deploy.reason.as_deref(),
        Some("exit status 1: boom")
    );
    assert_eq!(state_of(&conn, "i2"), InstanceState::Stopping);
    assert_eq!(routable(&conn), [("i1".to_string(), false)]);
    let endpoints = super::endpoints(&conn, None).unwrap();
    assert_eq!(endpoints.services[0].version, 1);

    // The next deploy rolls out over the version that kept serving.
    deployed(&conn, spec(&["v3.js"], 1));
    let service = super::get(&conn, "api").unwrap().unwrap();
    assert_eq!(service.current.version, 3);
    assert_eq!(service.previous.map(|p| p.version), Some(1));
}

fn finish(conn: &Connection, version: u64, status: DeployStatus, reason: Option<&str>) {
    let applied = run(
        conn,
        Command::FinishDeploy {
            service: "api".into(),
            version,
            status,
            reason: reason.map(str::to_string),
            now: 14,
        },
    );
    assert!(applied.outcome.is_ok(), "{:?}", applied.outcome);
}

#[test]
fn a_host_that_goes_down_takes_its_instances_with_it() {
    let conn = db();
    run(&conn, host("h1"));
    deployed(&conn, spec(&["v1.js"], 1));
    place(&conn, 1, &[("i1", "h1")]);
    report(&conn, "h1", "i1", InstanceState::Healthy);
    run(
        &conn,
        Command::HostDown {
            host_id: "h1".into(),
            incarnation: "first".into(),
            now: 15,
        },
    );
    assert_eq!(state_of(&conn, "i1"), InstanceState::Stopped);
    assert!(routable(&conn).is_empty());
}

#[test]
fn a_removed_service_stops_and_its_name_keeps_counting_versions() {
    let conn = db();
    deployed(&conn, spec(&["v1.js"], 1));
    place(&conn, 1, &[("i1", "h1")]);
    run(
        &conn,
        Command::DeleteService {
            name: "api".into(),
            owner: Owner::Token,
            now: 16,
        },
    );
    assert!(super::get(&conn, "api").unwrap().is_none());
    let orphans = super::orphans(&conn).unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].state, InstanceState::Stopping);
    assert!(super::assignments(&conn, "h1").unwrap()[0].stop);
    assert_eq!(deployed(&conn, spec(&["v1.js"], 1)), DeployOutcome::Created);
    let service = super::get(&conn, "api").unwrap().unwrap();
    assert_eq!(service.current.version, 2, "versions never repeat");
    assert!(service.previous.is_none());
}

#[test]
fn ended_instances_are_kept_only_so_many() {
    let conn = db();
    deployed(&conn, spec(&["v1.js"], 1));
    let total = super::KEPT_ENDED_INSTANCES as usize + 4;
    for n in 0..total {
        let id = format!("i{n}");
        place(&conn, 1, &[(&id, "h1")]);
        report(&conn, "h1", &id, InstanceState::Failed);
    }
    let service = super::get(&conn, "api").unwrap().unwrap();
    assert_eq!(
        service.instances.len(),
        super::KEPT_ENDED_INSTANCES as usize
    );
    assert_eq!(
        service.instances.last().map(|i| i.id.clone()),
        Some(format!("i{}", total - 1)),
        "the newest are kept"
    );
}

#[test]
fn a_deploy_during_a_rollout_keeps_the_serving_version_as_previous() {
    let conn = db();
    deployed(&conn, spec(&["v1.js"], 1));
    finish(&conn, 1, DeployStatus::Done, None);
    deployed(&conn, spec(&["v2.js"], 1));
    // v2 is still rolling out: v1 is what serves, and stays the fallback.
    assert_eq!(
        deployed(&conn, spec(&["v3.js"], 1)),
        DeployOutcome::Deployed
    );
    let service = super::get(&conn, "api").unwrap().unwrap();
    assert_eq!(service.current.version, 3);
    assert_eq!(service.previous.map(|p| p.version), Some(1));
}

#[test]
fn the_token_redeploying_a_keys_service_leaves_it_the_keys() {
    let conn = db();
    let key = Owner::ApiKey("k1".into());
    assert!(put(&conn, spec(&["v1.js"], 1), key.clone()).is_ok());
    assert!(put(&conn, spec(&["v2.js"], 1), Owner::Token).is_ok());
    assert!(
        put(&conn, spec(&["v3.js"], 1), key).is_ok(),
        "the key still owns its service"
    );
}
