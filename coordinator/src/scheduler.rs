//! Which queued jobs a claiming host gets. Pure: the caller reads the queue and
//! the hosts; this decides.

use skyclaw_api::hosts::RegisterHost;
use skyclaw_api::jobs::{Job, JobSpec};

/// Picks up to `max` jobs, oldest first, that `host` can run.
///
/// A shell job goes only to hosts whose allowlist has its command, unless no
/// live host allows it: then any shell host takes it and fails it with a clear
/// error, rather than leaving it queued forever.
pub fn pick<'a>(
    queued: &'a [Job],
    host: &RegisterHost,
    live_hosts: &[RegisterHost],
    max: usize,
) -> Vec<&'a Job> {
    queued
        .iter()
        .filter(|job| runnable_on(job, host, live_hosts))
        .take(max)
        .collect()
}

fn runnable_on(job: &Job, host: &RegisterHost, live_hosts: &[RegisterHost]) -> bool {
    let has_caps = job
        .spec
        .required_capabilities()
        .iter()
        .all(|cap| host.capabilities.contains(cap));
    if !has_caps {
        return false;
    }
    match &job.spec {
        JobSpec::Shell(shell) => {
            allows(host, &shell.command)
                || !live_hosts
                    .iter()
                    .any(|h| h.host_id != host.host_id && allows(h, &shell.command))
        }
        JobSpec::OpenclawRun(_) | JobSpec::Wasi(_) => true,
    }
}

fn allows(host: &RegisterHost, command: &str) -> bool {
    host.allowed_commands.iter().any(|c| c == command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyclaw_api::jobs::JobStatus;

    fn host(id: &str, caps: &[&str], allowed: &[&str]) -> RegisterHost {
        RegisterHost {
            host_id: id.into(),
            name: id.into(),
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
            max_parallel: 4,
            allowed_commands: allowed.iter().map(|s| s.to_string()).collect(),
            openclaw_version: None,
            version: "test".into(),
            sandbox_only: false,
            wasi: None,
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
        }
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
        let ids = |jobs: Vec<&Job>| jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(pick(&queued, &a, &live, 10)), ["1"]);
        assert_eq!(ids(pick(&queued, &b, &live, 10)), ["2", "3"]);
        // With only `a` alive, nobody else allows uname: `a` takes it to fail it.
        assert_eq!(ids(pick(&queued, &a, &live[..1], 10)), ["1", "2"]);
        assert_eq!(ids(pick(&queued, &b, &live, 1)), ["2"]);
    }
}
