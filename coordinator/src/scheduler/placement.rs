//! Placement of service instances: the leader's plan that brings every
//! service from the instances it has to the ones it should have. Pure: the
//! caller reads the services and the live hosts, this decides, and the
//! caller proposes the steps.
//!
//! - A service is kept at its replicas of its target version; instances of
//!   other versions stop.
//! - A rollout starts new instances first (at most `max_surge` beyond the
//!   replicas) and stops an old instance only for each new one that is
//!   healthy; it is done when every instance is new and healthy, and fails
//!   at its deadline, or at once when a new instance cannot run or keeps
//!   crashing.
//! - Instances spread one per host while hosts remain, native ones only on
//!   hosts that allow the command and are not sandbox-only, wasi-http ones
//!   only on hosts with WASI caps that cover the limits; hosts that hold the
//!   artifact come first, and no host takes more than its capacity.

use std::collections::HashMap;

use skyclaw_api::Millis;
use skyclaw_api::services::{DeployStatus, Instance, InstanceState, Service, ServiceKind};

use super::LiveHost;

/// Restarts after which a new version's instance counts as crash-looping:
/// its rollout fails at once instead of at the deadline, with the crash's
/// output as the reason.
pub const CRASH_LOOP_RESTARTS: u32 = 3;

/// One change the leader proposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// New instances of `version`, one on each host named (a host may repeat).
    Place {
        service: String,
        version: u64,
        hosts: Vec<String>,
    },
    Stop {
        ids: Vec<String>,
    },
    Finish {
        service: String,
        version: u64,
        status: DeployStatus,
        reason: Option<String>,
    },
}

/// The steps, and the waiting reasons that changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub waiting: Vec<(String, Option<String>)>,
}

/// The plan for `services` given the `live` hosts; `orphans` are instances
/// of removed services, which still hold their hosts' capacity.
pub fn plan(services: &[Service], orphans: &[Instance], live: &[LiveHost], now: Millis) -> Plan {
    let mut load = Load::new(services, orphans);
    let mut plan = Plan::default();
    for service in services {
        plan_service(service, live, now, &mut load, &mut plan);
    }
    plan
}

/// Instances holding each host's capacity, updated as the plan places more.
struct Load {
    per_host: HashMap<String, u32>,
}

impl Load {
    fn new(services: &[Service], orphans: &[Instance]) -> Load {
        let mut per_host = HashMap::new();
        let holding = services
            .iter()
            .flat_map(|s| &s.instances)
            .chain(orphans)
            .filter(|i| !i.state.is_terminal());
        for instance in holding {
            *per_host.entry(instance.host_id.clone()).or_insert(0) += 1;
        }
        Load { per_host }
    }

    fn of(&self, host_id: &str) -> u32 {
        self.per_host.get(host_id).copied().unwrap_or(0)
    }
}

fn plan_service(
    service: &Service,
    live: &[LiveHost],
    now: Millis,
    load: &mut Load,
    plan: &mut Plan,
) {
    let alive = service.instances.iter().filter(|i| i.state.is_alive());
    let Some(target) = service.target_version() else {
        stop(plan, alive.collect());
        return;
    };
    let replicas = service.replicas as usize;
    let (new, old): (Vec<&Instance>, Vec<&Instance>) = alive.partition(|i| i.version == target);
    let rolling =
        service.deploy.status == DeployStatus::Rolling && service.deploy.version == target;
    let wanted = if rolling {
        if let Some(reason) = rollout_failure(service, target, now) {
            plan.steps.push(Step::Finish {
                service: service.name.clone(),
                version: target,
                status: DeployStatus::Failed,
                reason: Some(reason),
            });
            return;
        }
        let healthy = new
            .iter()
            .filter(|i| i.state == InstanceState::Healthy)
            .count();
        if healthy >= replicas && new.len() == replicas && old.is_empty() {
            plan.steps.push(Step::Finish {
                service: service.name.clone(),
                version: target,
                status: DeployStatus::Done,
                reason: None,
            });
        }
        // An old instance stops for each new one that is healthy.
        let keep_old = replicas.saturating_sub(healthy).min(old.len());
        let retiring = old.len() - keep_old;
        stop(plan, least_useful(old, retiring));
        let surge = service
            .spec_of(target)
            .map_or(1, |s| s.rollout.max_surge as usize);
        let room = (replicas + surge).saturating_sub(new.len() + keep_old);
        replicas.saturating_sub(new.len()).min(room)
    } else {
        stop(plan, old);
        let missing = replicas.saturating_sub(new.len());
        let extra = new.len().saturating_sub(replicas);
        stop(plan, least_useful(new, extra));
        missing
    };
    let (hosts, reason) = pick_hosts(service, target, live, load, wanted);
    if !hosts.is_empty() {
        plan.steps.push(Step::Place {
            service: service.name.clone(),
            version: target,
            hosts,
        });
    }
    if reason != service.waiting_reason {
        plan.waiting.push((service.name.clone(), reason));
    }
}

/// Why a rollout of `target` fails now, if it does: a new instance that
/// cannot run or keeps crashing, or the deadline passed.
fn rollout_failure(service: &Service, target: u64, now: Millis) -> Option<String> {
    let new: Vec<&Instance> = service
        .instances
        .iter()
        .filter(|i| i.version == target)
        .collect();
    let described = |i: &Instance| {
        let detail = i.last_error.as_deref().unwrap_or("no output");
        format!("instance {} on host {}: {detail}", i.id, i.host_id)
    };
    if let Some(failed) = new.iter().find(|i| i.state == InstanceState::Failed) {
        return Some(format!(
            "version {target} cannot run: {}",
            described(failed)
        ));
    }
    if let Some(crashing) = new
        .iter()
        .find(|i| i.state.is_alive() && i.restarts >= CRASH_LOOP_RESTARTS)
    {
        return Some(format!(
            "version {target} keeps crashing ({} restarts): {}",
            crashing.restarts,
            described(crashing)
        ));
    }
    if now < service.deploy.deadline_at {
        return None;
    }
    let healthy = new
        .iter()
        .filter(|i| i.state == InstanceState::Healthy)
        .count();
    let seconds = service
        .deploy
        .deadline_at
        .saturating_sub(service.deploy.started_at)
        / 1000;
    let mut reason = format!(
        "{healthy} of {} instances of version {target} became healthy within {seconds} s",
        service.replicas
    );
    if let Some(unhealthy) = new.iter().find(|i| i.state != InstanceState::Healthy) {
        reason.push_str(&format!("; {}", described(unhealthy)));
    } else if let Some(reason_waiting) = &service.waiting_reason {
        reason.push_str(&format!("; {reason_waiting}"));
    }
    Some(reason)
}

/// Picks `n` of `instances` to stop: the ones serving least (not healthy
/// first), newest first among equals.
fn least_useful(mut instances: Vec<&Instance>, n: usize) -> Vec<&Instance> {
    instances.sort_by_key(|i| {
        (
            i.state == InstanceState::Healthy,
            std::cmp::Reverse(i.created_at),
        )
    });
    instances.truncate(n);
    instances
}

fn stop(plan: &mut Plan, instances: Vec<&Instance>) {
    if !instances.is_empty() {
        plan.steps.push(Step::Stop {
            ids: instances.into_iter().map(|i| i.id.clone()).collect(),
        });
    }
}

/// Up to `wanted` hosts for new instances, and why not all could be found.
fn pick_hosts(
    service: &Service,
    target: u64,
    live: &[LiveHost],
    load: &mut Load,
    wanted: usize,
) -> (Vec<String>, Option<String>) {
    let Some(spec) = service.spec_of(target) else {
        return (Vec::new(), Some(format!("version {target} is not kept")));
    };
    let mut per_host: HashMap<&str, usize> = HashMap::new();
    for instance in service.instances.iter().filter(|i| i.state.is_alive()) {
        *per_host.entry(instance.host_id.as_str()).or_insert(0) += 1;
    }
    let failed_on = |host: &str| {
        service
            .instances
            .iter()
            .any(|i| i.version == target && i.host_id == host && i.state == InstanceState::Failed)
    };
    let eligible: Vec<&LiveHost> = live
        .iter()
        .filter(|h| suits(spec, h).is_ok() && !failed_on(&h.registration.host_id))
        .collect();
    let mut hosts = Vec::new();
    while hosts.len() < wanted {
        let best = eligible
            .iter()
            .filter(|h| has_room(h, load))
            .min_by_key(|h| {
                let id = h.registration.host_id.as_str();
                (
                    per_host.get(id).copied().unwrap_or(0),
                    !h.artifacts.contains(&spec.artifact),
                    load.of(id),
                    id,
                )
            });
        let Some(best) = best else {
            break;
        };
        let id = best.registration.host_id.clone();
        *per_host
            .entry(best.registration.host_id.as_str())
            .or_insert(0) += 1;
        *load.per_host.entry(id.clone()).or_insert(0) += 1;
        hosts.push(id);
    }
    let reason = (hosts.len() < wanted).then(|| no_host_reason(service, target, live, &eligible));
    (hosts, reason)
}

fn has_room(host: &LiveHost, load: &Load) -> bool {
    host.registration
        .services
        .as_ref()
        .is_some_and(|caps| load.of(&host.registration.host_id) < caps.max_instances)
}

/// Whether a host can run instances of `spec` at all, and if not, why not.
fn suits(spec: &skyclaw_api::services::ServiceSpec, host: &LiveHost) -> Result<(), String> {
    let reg = &host.registration;
    if reg.services.is_none() {
        return Err("runs no services".into());
    }
    if host.draining {
        return Err("is shutting down".into());
    }
    match spec.kind {
        ServiceKind::Native => {
            let command = spec.command.as_deref().unwrap_or_default();
            if reg.sandbox_only {
                Err("is sandbox-only".into())
            } else if !super::allows(reg, command) {
                Err(format!("does not allow command {command}"))
            } else {
                Ok(())
            }
        }
        ServiceKind::WasiHttp => match reg.wasi {
            None => Err("runs no WASI".into()),
            Some(caps) => match spec.limits.excess(&caps) {
                Some(excess) => Err(excess),
                None => Ok(()),
            },
        },
    }
}

/// The sentence a service waiting for hosts shows.
fn no_host_reason(
    service: &Service,
    target: u64,
    live: &[LiveHost],
    eligible: &[&LiveHost],
) -> String {
    let Some(spec) = service.spec_of(target) else {
        return format!("version {target} is not kept");
    };
    if !eligible.is_empty() {
        return format!(
            "every host that can run it is full ({} eligible)",
            eligible.len()
        );
    }
    let offering: Vec<&LiveHost> = live
        .iter()
        .filter(|h| h.registration.services.is_some())
        .collect();
    if offering.is_empty() {
        return "no live host runs services".into();
    }
    if offering.iter().any(|h| suits(spec, h).is_ok()) {
        let last_error = service
            .instances
            .iter()
            .rev()
            .find(|i| i.version == target && i.state == InstanceState::Failed)
            .and_then(|i| i.last_error.clone())
            .unwrap_or_default();
        return format!("version {target} failed on every host that can run it: {last_error}");
    }
    match spec.kind {
        ServiceKind::Native => format!(
            "no host allows command {}",
            spec.command.as_deref().unwrap_or_default()
        ),
        ServiceKind::WasiHttp => {
            if offering.iter().all(|h| h.registration.wasi.is_none()) {
                "no wasi host".into()
            } else {
                let why: Vec<String> = offering
                    .iter()
                    .filter_map(|h| suits(spec, h).err())
                    .collect();
                format!("no wasi host grants its limits: {}", why.join("; "))
            }
        }
    }
}

#[cfg(test)]
mod tests;
