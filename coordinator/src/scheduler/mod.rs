//! Scheduling: which queued jobs a claiming host gets, and why a job no live
//! host can run waits. This module is pure: the caller reads the queue, the
//! live hosts and their loads, and it decides; [`claims`] does the reading,
//! reserving and proposing around it.
//!
//! Hosts pull work, so placement is a matter of which jobs a host is *not*
//! given: a job is left in the queue for another host when that host is a
//! better place for it and can take it now. Otherwise whoever asks first (a
//! host only asks with free slots) gets it, which keeps every slot busy.

pub mod claims;
pub mod placement;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use skyclaw_api::artifacts::Digest;
use skyclaw_api::hosts::RegisterHost;
use skyclaw_api::jobs::{CAP_OPENCLAW, CAP_SHELL, CAP_WASI, Job, JobSpec};

/// A live host as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct LiveHost {
    pub registration: RegisterHost,
    /// Artifacts the host last reported holding.
    pub artifacts: Arc<HashSet<Digest>>,
    /// The host said it is shutting down: no new instances go there.
    pub draining: bool,
}

/// Jobs running per host id; hosts not in the map run none.
pub type Loads = HashMap<String, u32>;

/// Picks up to `max` jobs, oldest first, that `host` should run now.
///
/// - Native jobs never go to sandbox-only hosts.
/// - A shell job goes only to hosts whose allowlist has its command, unless no
///   other live host allows it: then any shell host takes it and fails it with
///   a clear error, rather than leaving it queued forever.
/// - A WASI job whose limits exceed this host's caps is left for a live host
///   whose caps cover them, if there is one (else this host runs it capped).
/// - A job whose artifact this host lacks is left for a live host that holds
///   it and has a free slot.
pub fn pick<'a>(
    queued: &'a [Job],
    host: &LiveHost,
    live: &[LiveHost],
    loads: &Loads,
    max: usize,
) -> Vec<&'a Job> {
    let others: Vec<&LiveHost> = live
        .iter()
        .filter(|h| h.registration.host_id != host.registration.host_id)
        .collect();
    queued
        .iter()
        .filter(|job| can_run(&job.spec, &host.registration))
        .filter(|job| !better_elsewhere(job, host, &others, loads))
        .take(max)
        .collect()
}

/// True when `loads` is needed to decide for this queue: some other host
/// holds an artifact that a queued job needs and `host` lacks.
pub fn needs_loads(queued: &[Job], host: &LiveHost, live: &[LiveHost]) -> bool {
    queued
        .iter()
        .filter_map(|j| j.spec.artifact())
        .any(|digest| {
            !host.artifacts.contains(digest)
                && live.iter().any(|h| {
                    h.registration.host_id != host.registration.host_id
                        && h.artifacts.contains(digest)
                })
        })
}

/// Why no live host can run a job with this spec, or `None` when one can
/// (busy or not). It names the first thing missing: no host at all, only
/// sandbox-only hosts for a native job, a capability no host offers, or no
/// one host offering all of them.
///
/// A shell job whose command no live host allows is not waiting: a shell
/// host takes it and fails it with that reason (see [`pick`]).
pub fn waiting_reason(spec: &JobSpec, live: &[LiveHost]) -> Option<String> {
    if live.iter().any(|h| can_run(spec, &h.registration)) {
        return None;
    }
    if live.is_empty() {
        return Some("no host is live".to_string());
    }
    let eligible: Vec<&RegisterHost> = live
        .iter()
        .map(|h| &h.registration)
        .filter(|h| !(spec.is_native() && h.sandbox_only))
        .collect();
    if eligible.is_empty() {
        return Some(format!(
            "no live host runs {} jobs: every live host is sandbox-only",
            spec.kind()
        ));
    }
    let needed = spec.required_capabilities();
    let missing = needed
        .iter()
        .find(|cap| !eligible.iter().any(|h| offers(h, cap)));
    Some(match missing.map(String::as_str) {
        Some(CAP_SHELL) => "no live host runs shell jobs".to_string(),
        Some(CAP_OPENCLAW) => "no live host runs openclaw-run jobs".to_string(),
        Some(CAP_WASI) => "no live host runs wasi jobs".to_string(),
        Some(cap) => format!("no live host offers capability {cap}"),
        None => format!("no live host offers all of {} at once", needed.join(", ")),
    })
}

/// Whether the host is able to run the job at all: capabilities and
/// sandbox-only mode.
fn can_run(spec: &JobSpec, host: &RegisterHost) -> bool {
    !(spec.is_native() && host.sandbox_only)
        && spec
            .required_capabilities()
            .iter()
            .all(|cap| offers(host, cap))
}

/// Whether the host offers a capability; `wasi` also needs the runtime's caps.
fn offers(host: &RegisterHost, cap: &str) -> bool {
    host.capabilities.iter().any(|c| c == cap) && (cap != CAP_WASI || host.wasi.is_some())
}

/// Whether another live host is a better place for the job than `host`.
fn better_elsewhere(job: &Job, host: &LiveHost, others: &[&LiveHost], loads: &Loads) -> bool {
    match &job.spec {
        JobSpec::Shell(shell) => {
            !allows(&host.registration, &shell.command)
                && others.iter().any(|h| {
                    can_run(&job.spec, &h.registration) && allows(&h.registration, &shell.command)
                })
        }
        JobSpec::OpenclawRun(_) => false,
        JobSpec::Wasi(wasi) => {
            let covers = |h: &RegisterHost| h.wasi.is_some_and(|caps| wasi.limits.within(&caps));
            if !covers(&host.registration)
                && others
                    .iter()
                    .any(|h| can_run(&job.spec, &h.registration) && covers(&h.registration))
            {
                return true;
            }
            !host.artifacts.contains(&wasi.artifact)
                && others.iter().any(|h| {
                    h.artifacts.contains(&wasi.artifact)
                        && can_run(&job.spec, &h.registration)
                        && covers(&h.registration) >= covers(&host.registration)
                        && has_free_slot(h, loads)
                })
        }
    }
}

fn has_free_slot(host: &LiveHost, loads: &Loads) -> bool {
    let running = loads.get(&host.registration.host_id).copied().unwrap_or(0);
    running < host.registration.max_parallel
}

fn allows(host: &RegisterHost, command: &str) -> bool {
    host.allowed_commands.iter().any(|c| c == command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyclaw_api::jobs::{JobStatus, WasiCaps};

    fn caps(max_fuel: u64) -> WasiCaps {
        WasiCaps {
            default_fuel: 10,
            default_memory_mb: 16,
            default_timeout_ms: 1000,
            max_fuel,
            max_memory_mb: 64,
            max_timeout_ms: 5000,
        }
    }

    fn host(id: &str, caps_: &[&str], allowed: &[&str]) -> LiveHost {
        LiveHost {
            registration: RegisterHost {
                host_id: id.into(),
                incarnation: "test".into(),
                name: id.into(),
                capabilities: caps_.iter().map(|s| s.to_string()).collect(),
                max_parallel: 2,
                allowed_commands: allowed.iter().map(|s| s.to_string()).collect(),
                openclaw_version: None,
                version: "test".into(),
                sandbox_only: false,
                wasi: caps_.contains(&"wasi").then(|| caps(1000)),
                services: None,
            },
            artifacts: Arc::default(),
            draining: false,
        }
    }

    fn job(id: &str, spec: &str) -> Job {
        Job {
            id: id.into(),
            status: JobStatus::Queued,
            spec: serde_json::from_str(spec).unwrap(),
            attempts: 0,
            host_id: None,
            created_at: 0,
            updated_at: 0,
            result: None,
            waiting_reason: None,
        }
    }

    fn wasi_job(id: &str, digest: &Digest, fuel: u64) -> Job {
        job(
            id,
            &format!(r#"{{"kind":"wasi","artifact":"{digest}","limits":{{"fuel":{fuel}}}}}"#),
        )
    }

    fn digest(byte: u8) -> Digest {
        Digest::from_sha256(&[byte; 32])
    }

    fn ids(jobs: Vec<&Job>) -> Vec<String> {
        jobs.iter().map(|j| j.id.clone()).collect()
    }

    #[test]
    fn capabilities_and_allowlists_route_jobs() {
        let echo = job("1", r#"{"kind":"shell","command":"echo"}"#);
        let uname = job("2", r#"{"kind":"shell","command":"uname"}"#);
        let claw = job("3", r#"{"kind":"openclaw-run","message":"hi"}"#);
        let queued = vec![echo, uname, claw];
        let a = host("a", &["shell"], &["echo"]);
        let b = host("b", &["shell", "openclaw"], &["uname"]);
        let live = vec![a.clone(), b.clone()];
        let none = Loads::new();
        assert_eq!(ids(pick(&queued, &a, &live, &none, 10)), ["1"]);
        assert_eq!(ids(pick(&queued, &b, &live, &none, 10)), ["2", "3"]);
        // With only `a` alive, nobody else allows uname: `a` takes it to fail it.
        assert_eq!(ids(pick(&queued, &a, &live[..1], &none, 10)), ["1", "2"]);
        assert_eq!(ids(pick(&queued, &b, &live, &none, 1)), ["2"]);
    }

    #[test]
    fn sandbox_only_hosts_get_only_wasi_jobs() {
        let d = digest(1);
        let queued = vec![
            job("1", r#"{"kind":"shell","command":"echo"}"#),
            wasi_job("2", &d, 5),
        ];
        let mut sandbox = host("s", &["shell", "wasi"], &["echo"]);
        sandbox.registration.sandbox_only = true;
        let plain = host("p", &["shell"], &["echo"]);
        let live = vec![sandbox.clone(), plain.clone()];
        let none = Loads::new();
        assert_eq!(ids(pick(&queued, &sandbox, &live, &none, 10)), ["2"]);
        // Even alone, a sandbox-only host never takes the shell job.
        assert_eq!(ids(pick(&queued, &sandbox, &live[..1], &none, 10)), ["2"]);
        // A host without the wasi runtime never gets WASI jobs.
        assert_eq!(ids(pick(&queued, &plain, &live, &none, 10)), ["1"]);
    }

    #[test]
    fn jobs_go_where_their_artifact_is_while_it_has_room() {
        let d = digest(7);
        let queued = vec![wasi_job("1", &d, 5)];
        let mut holder = host("h", &["wasi"], &[]);
        holder.artifacts = Arc::new(HashSet::from([d.clone()]));
        let other = host("o", &["wasi"], &[]);
        let live = vec![holder.clone(), other.clone()];
        let idle = Loads::new();
        assert!(needs_loads(&queued, &other, &live));
        assert!(!needs_loads(&queued, &holder, &live));
        assert!(pick(&queued, &other, &live, &idle, 10).is_empty());
        assert_eq!(ids(pick(&queued, &holder, &live, &idle, 10)), ["1"]);
        let full = Loads::from([("h".to_string(), 2)]);
        assert_eq!(ids(pick(&queued, &other, &live, &full, 10)), ["1"]);
    }

    #[test]
    fn waiting_reasons_name_what_no_live_host_offers() {
        let reason = |spec: &str, live: &[LiveHost]| waiting_reason(&job("1", spec).spec, live);
        let gpu = r#"{"kind":"shell","command":"echo","requirements":{"capabilities":["gpu"]}}"#;
        let claw = r#"{"kind":"openclaw-run","message":"hi"}"#;
        let shell = host("a", &["shell", "wasi"], &["echo"]);
        assert_eq!(reason(gpu, &[]).as_deref(), Some("no host is live"));
        assert_eq!(
            reason(gpu, std::slice::from_ref(&shell)).as_deref(),
            Some("no live host offers capability gpu")
        );
        assert_eq!(
            reason(claw, std::slice::from_ref(&shell)).as_deref(),
            Some("no live host runs openclaw-run jobs")
        );
        let mut sandbox = host("s", &["wasi", "gpu"], &[]);
        sandbox.registration.sandbox_only = true;
        assert_eq!(
            reason(gpu, std::slice::from_ref(&sandbox)).as_deref(),
            Some("no live host runs shell jobs: every live host is sandbox-only")
        );
        let gpu_only = host("g", &["gpu"], &[]);
        assert_eq!(
            reason(gpu, &[shell.clone(), gpu_only]).as_deref(),
            Some("no live host offers all of shell, gpu at once")
        );
        let both = host("b", &["shell", "gpu"], &[]);
        assert_eq!(reason(gpu, &[shell.clone(), both]), None);
        // A command no host allows is failed by a shell host, not left waiting.
        let other = r#"{"kind":"shell","command":"python3"}"#;
        assert_eq!(reason(other, std::slice::from_ref(&shell)), None);
        let d = digest(2);
        let wasi = format!(r#"{{"kind":"wasi","artifact":"{d}"}}"#);
        assert_eq!(reason(&wasi, std::slice::from_ref(&shell)), None);
        assert_eq!(
            reason(&wasi, &[host("n", &["shell"], &["echo"])]).as_deref(),
            Some("no live host runs wasi jobs")
        );
    }

    #[test]
    fn limits_above_a_hosts_caps_go_to_a_host_that_covers_them() {
        let d = digest(3);
        let queued = vec![wasi_job("1", &d, 5000)];
        let small = host("small", &["wasi"], &[]);
        let mut big = host("big", &["wasi"], &[]);
        big.registration.wasi = Some(caps(10_000));
        let live = vec![small.clone(), big.clone()];
        let none = Loads::new();
        assert!(pick(&queued, &small, &live, &none, 10).is_empty());
        assert_eq!(ids(pick(&queued, &big, &live, &none, 10)), ["1"]);
        // Alone, the small host runs it capped.
        assert_eq!(ids(pick(&queued, &small, &live[..1], &none, 10)), ["1"]);
    }
}
