//! Unit tests of the placement plan: spreading, eligibility, capacity,
//! waiting reasons, and the steps of rollouts that succeed and fail.

use std::collections::HashSet;
use std::sync::Arc;

use skyclaw_api::artifacts::Digest;
use skyclaw_api::hosts::RegisterHost;
use skyclaw_api::jobs::WasiCaps;
use skyclaw_api::services::{
    Deploy, DeployStatus, Instance, InstanceState, Service, ServiceCaps, ServiceSpec,
    ServiceVersion,
};

use super::{CRASH_LOOP_RESTARTS, Plan, Step, plan};
use crate::scheduler::LiveHost;

fn digest() -> Digest {
    Digest::from_sha256(&[7; 32])
}

fn host(id: &str, allowed: &[&str], max_instances: u32) -> LiveHost {
    LiveHost {
        registration: RegisterHost {
            host_id: id.into(),
            incarnation: "test".into(),
            name: id.into(),
            capabilities: vec!["shell".into(), "wasi".into()],
            max_parallel: 2,
            allowed_commands: allowed.iter().map(|s| s.to_string()).collect(),
            openclaw_version: None,
            version: "test".into(),
            sandbox_only: false,
            wasi: None,
            services: Some(ServiceCaps {
                max_instances,
                control_url: None,
            }),
        },
        artifacts: Arc::default(),
        draining: false,
    }
}

fn wasi_host(id: &str) -> LiveHost {
    let mut h = host(id, &[], 10);
    h.registration.sandbox_only = true;
    h.registration.wasi = Some(WasiCaps {
        default_fuel: 10,
        default_memory_mb: 16,
        default_timeout_ms: 1000,
        max_fuel: 1000,
        max_memory_mb: 64,
        max_timeout_ms: 5000,
    });
    h
}

fn native_spec(replicas: u32) -> ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "kind": "native", "artifact": digest(), "command": "node", "replicas": replicas
    }))
    .unwrap()
}

fn wasi_spec() -> ServiceSpec {
    serde_json::from_value(serde_json::json!({"kind": "wasi-http", "artifact": digest()})).unwrap()
}

fn service(spec: ServiceSpec, status: DeployStatus) -> Service {
    let replicas = spec.replicas;
    Service {
        name: "api".into(),
        current: ServiceVersion {
            version: 1,
            spec,
            created_at: 0,
        },
        previous: None,
        replicas,
        deploy: Deploy {
            version: 1,
            status,
            reason: None,
            started_at: 0,
            deadline_at: 1000,
            finished_at: None,
        },
        waiting_reason: None,
        instances: Vec::new(),
        created_at: 0,
        updated_at: 0,
    }
}

/// `s` after deploying version 2 (args changed) over version 1.
fn rolling_to_v2(mut s: Service) -> Service {
    let mut next = s.current.clone();
    next.version = 2;
    next.spec.args = vec!["v2.js".into()];
    s.previous = Some(std::mem::replace(&mut s.current, next));
    s.deploy = Deploy {
        version: 2,
        status: DeployStatus::Rolling,
        reason: None,
        started_at: 100,
        deadline_at: 1000,
        finished_at: None,
    };
    s
}

fn instance(id: &str, host: &str, version: u64, state: InstanceState) -> Instance {
    Instance {
        id: id.into(),
        host_id: host.into(),
        version,
        endpoint: Some(format!("http://{host}:1")),
        state,
        restarts: 0,
        last_error: None,
        created_at: 0,
        updated_at: 0,
    }
}

fn placed(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .flat_map(|s| match s {
            Step::Place { hosts, .. } => hosts.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn stopped(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .flat_map(|s| match s {
            Step::Stop { ids } => ids.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn finished(plan: &Plan) -> Option<(DeployStatus, Option<String>)> {
    plan.steps.iter().find_map(|s| match s {
        Step::Finish { status, reason, .. } => Some((*status, reason.clone())),
        _ => None,
    })
}

#[test]
fn replicas_spread_one_per_host_while_hosts_remain() {
    let live = [host("a", &["node"], 10), host("b", &["node"], 10)];
    let s = service(native_spec(3), DeployStatus::Rolling);
    let plan = plan(&[s], &[], &live, 0);
    let hosts: Vec<String> = placed(&plan);
    assert_eq!(hosts.len(), 3);
    let distinct: HashSet<&String> = hosts.iter().take(2).collect();
    assert_eq!(distinct.len(), 2, "{hosts:?}");
    assert!(plan.waiting.is_empty(), "{:?}", plan.waiting);
}

#[test]
fn a_draining_host_takes_no_new_instance() {
    let mut draining = host("a", &["node"], 10);
    draining.draining = true;
    let live = [draining, host("b", &["node"], 10)];
    let s = service(native_spec(2), DeployStatus::Rolling);
    let plan = plan(&[s], &[], &live, 0);
    assert_eq!(placed(&plan), ["b", "b"]);
}

#[test]
fn hosts_that_hold_the_artifact_come_first_and_none_takes_more_than_its_room() {
    let mut holder = host("z", &["node"], 1);
    holder.artifacts = Arc::new(HashSet::from([digest()]));
    let live = [host("a", &["node"], 1), holder];
    let s = service(native_spec(3), DeployStatus::Rolling);
    let plan = plan(&[s], &[], &live, 0);
    assert_eq!(placed(&plan), ["z", "a"]);
    let reason = plan.waiting[0].1.as_deref().unwrap();
    assert!(reason.contains("full"), "{reason}");
}

#[test]
fn native_and_wasi_instances_go_only_where_they_can_run() {
    let live = [host("a", &["echo"], 10), wasi_host("w")];
    let native = service(native_spec(1), DeployStatus::Rolling);
    let plan_native = plan(std::slice::from_ref(&native), &[], &live, 0);
    assert!(placed(&plan_native).is_empty());
    assert_eq!(
        plan_native.waiting,
        [(
            "api".to_string(),
            Some("no host allows command node".to_string())
        )]
    );
    let wasi = service(wasi_spec(), DeployStatus::Rolling);
    assert_eq!(
        placed(&plan(std::slice::from_ref(&wasi), &[], &live, 0)),
        ["w"]
    );
    let no_wasi = plan(&[wasi], &[], &live[..1], 0);
    assert_eq!(no_wasi.waiting[0].1.as_deref(), Some("no wasi host"));
}

#[test]
fn a_rollout_replaces_old_instances_only_as_new_ones_become_healthy() {
    let live = [host("a", &["node"], 10), host("b", &["node"], 10)];
    let mut s = rolling_to_v2(service(native_spec(2), DeployStatus::Done));
    s.instances = vec![
        instance("o1", "a", 1, InstanceState::Healthy),
        instance("o2", "b", 1, InstanceState::Healthy),
    ];
    let first = plan(std::slice::from_ref(&s), &[], &live, 200);
    assert_eq!(
        placed(&first).len(),
        1,
        "one beyond the replicas: {first:?}"
    );
    assert!(
        stopped(&first).is_empty(),
        "nothing stops before a new one is healthy"
    );

    s.instances
        .push(instance("n1", "a", 2, InstanceState::Starting));
    let starting = plan(std::slice::from_ref(&s), &[], &live, 300);
    assert!(placed(&starting).is_empty() && stopped(&starting).is_empty());

    s.instances[2].state = InstanceState::Healthy;
    let one_healthy = plan(std::slice::from_ref(&s), &[], &live, 400);
    assert_eq!(stopped(&one_healthy).len(), 1);
    assert_eq!(placed(&one_healthy).len(), 1);

    s.instances[0].state = InstanceState::Stopping;
    s.instances
        .push(instance("n2", "b", 2, InstanceState::Healthy));
    s.instances[1].state = InstanceState::Stopping;
    let done = plan(&[s], &[], &live, 500);
    assert_eq!(finished(&done), Some((DeployStatus::Done, None)));
}

#[test]
fn a_rollout_fails_at_its_deadline_or_when_a_new_instance_keeps_crashing() {
    let live = [host("a", &["node"], 10)];
    let mut s = rolling_to_v2(service(native_spec(1), DeployStatus::Done));
    s.instances = vec![
        instance("o1", "a", 1, InstanceState::Healthy),
        instance("n1", "a", 2, InstanceState::Unhealthy),
    ];
    s.instances[1].last_error = Some("exit status 1: boom".into());
    assert!(finished(&plan(std::slice::from_ref(&s), &[], &live, 900)).is_none());
    let (status, reason) = finished(&plan(std::slice::from_ref(&s), &[], &live, 1000)).unwrap();
    assert_eq!(status, DeployStatus::Failed);
    let reason = reason.unwrap();
    assert!(
        reason.contains("0 of 1") && reason.contains("boom"),
        "{reason}"
    );

    s.instances[1].restarts = CRASH_LOOP_RESTARTS;
    let (status, reason) = finished(&plan(&[s], &[], &live, 200)).unwrap();
    assert_eq!(status, DeployStatus::Failed);
    assert!(reason.unwrap().contains("keeps crashing"));
}

#[test]
fn a_steady_service_drops_extras_and_other_versions_and_replaces_lost_ones() {
    let live = [host("a", &["node"], 10), host("b", &["node"], 10)];
    let mut s = service(native_spec(1), DeployStatus::Done);
    s.instances = vec![
        instance("i1", "a", 1, InstanceState::Healthy),
        instance("i2", "b", 1, InstanceState::Unhealthy),
        instance("stale", "b", 0, InstanceState::Healthy),
    ];
    let plan1 = plan(std::slice::from_ref(&s), &[], &live, 0);
    let mut stops = stopped(&plan1);
    stops.sort();
    assert_eq!(stops, ["i2", "stale"]);
    assert!(placed(&plan1).is_empty());

    s.instances = vec![instance("gone", "a", 1, InstanceState::Failed)];
    assert_eq!(
        placed(&plan(&[s], &[], &live, 0)),
        ["b"],
        "not again where it failed"
    );
}
