//! The host daemon, run in process, against fake coordinators on real ports:
//! registration retries, claims replayed under their idempotency keys,
//! completions resent under their leases, revocation, re-registration,
//! shutdown, and failover to coordinators learned from the peer list.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::fake_coordinator::{self, FakeCoordinator};
use common::{DEADLINE, eventually};
use skyclaw_api::hosts::Outcome;
use skyclaw_runtime::{HostConfig, JobUsers};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct RunningHost {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), skyclaw_runtime::HostError>>,
}

impl RunningHost {
    async fn shut_down(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("host stops in time")
            .unwrap()
            .expect("clean shutdown");
    }
}

fn config(url: &str, data_dir: &Path) -> HostConfig {
    let mut config = HostConfig::new(vec![url.to_string()], "token".into(), data_dir.into());
    config.job_users = Some(JobUsers::Range(common::job_uid_range()));
    config.name = "fake-host".into();
    config.allowed_commands = vec!["echo".into(), "sleep".into()];
    config.max_parallel = 2;
    config.openclaw_command = data_dir.join("no-openclaw").display().to_string();
    config.shutdown_grace = Duration::from_millis(200);
    config
}

fn start_host(config: HostConfig) -> RunningHost {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(skyclaw_runtime::run(config, async {
        let _ = stopped.await;
    }));
    RunningHost { stop, task }
}

#[tokio::test]
async fn runs_claimed_jobs_and_reports_them_through_failures() {
    let fake = Arc::new(FakeCoordinator::default());
    {
        let mut s = fake.lock();
        s.register_failures = 3;
        s.lose_next_claim_answer = true;
        s.complete_failures = 2;
    }
    let url = fake_coordinator::start(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let host = start_host(config(&url, data.path()));

    let registered = eventually("registration", || async {
        fake.lock().registrations.first().cloned()
    })
    .await;
    assert!(
        registered.host_id.starts_with("h-"),
        "{}",
        registered.host_id
    );
    assert_eq!(registered.name, "fake-host");
    assert_eq!(registered.capabilities, ["wasi", "shell"]);
    assert!(!registered.sandbox_only);
    assert_eq!(registered.wasi, Some(config(&url, data.path()).wasi_caps()));
    assert_eq!(registered.openclaw_version, None);
    assert_eq!(registered.max_parallel, 2);
    // The daemon reports its crate's version, the one the skyclaw package has.
    assert_eq!(registered.version, env!("CARGO_PKG_VERSION"));

    fake.enqueue(
        "ok",
        serde_json::json!({"kind": "shell", "command": "echo", "args": ["hi"]}),
    );
    fake.enqueue(
        "bad",
        serde_json::json!({"kind": "shell", "command": "touch", "args": ["x"]}),
    );
    let completions = eventually("both completions", || async {
        let s = fake.lock();
        (s.completions.len() == 2).then(|| s.completions.clone())
    })
    .await;

    let ok = &completions["ok"];
    assert_eq!(ok.outcome, Outcome::Succeeded);
    assert_eq!(ok.lease_token, "lease-ok");
    assert_eq!(ok.result.stdout, "hi\n");
    let bad = &completions["bad"];
    assert_eq!(bad.outcome, Outcome::Failed);
    assert_eq!(
        bad.result.error.as_deref(),
        Some("command not allowed on host fake-host: touch")
    );

    {
        let s = fake.lock();
        // The lost claim answer was asked for again under the same key.
        let lost_key = s.lost_claim_key.as_ref().expect("a claim answer was lost");
        assert_eq!(s.claim_keys.iter().filter(|k| *k == lost_key).count(), 2);
        // Every completion attempt of a job named that job's one lease.
        for (job, lease) in &s.complete_attempts {
            assert!(
                ["ok", "bad"].contains(&job.as_str()) && *lease == format!("lease-{job}"),
                "{job} {lease}"
            );
        }
        assert_eq!(s.complete_attempts.len(), 4);
        assert!(!s.heartbeats.is_empty());
    }
    host.shut_down().await;

    // A restarted host keeps its id.
    let host = start_host(config(&url, data.path()));
    eventually("second registration", || async {
        (fake.lock().registrations.len() == 2).then_some(())
    })
    .await;
    assert_eq!(fake.lock().registrations[1].host_id, registered.host_id);
    host.shut_down().await;
}

/// Waits until a heartbeat renews `job_id`'s lease: the job is running.
async fn wait_running(fake: &FakeCoordinator, job_id: &str) {
    eventually("the job's lease in a heartbeat", || async {
        let s = fake.lock();
        s.heartbeats
            .last()
            .filter(|hb| hb.running.iter().any(|l| l.job_id == job_id))
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn shutdown_abandons_jobs_still_running_after_the_grace() {
    let fake = Arc::new(FakeCoordinator::default());
    let url = fake_coordinator::start(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let host = start_host(config(&url, data.path()));
    fake.enqueue(
        "long",
        serde_json::json!({"kind": "shell", "command": "sleep", "args": ["300"]}),
    );
    wait_running(&fake, "long").await;

    host.shut_down().await;
    let s = fake.lock();
    let long = s.completions.get("long").expect("abandoned job reported");
    assert_eq!(long.outcome, Outcome::Abandoned);
    assert_eq!(long.result.error.as_deref(), Some("host shutting down"));
}

#[tokio::test]
async fn revoked_jobs_are_killed_and_not_reported() {
    let fake = Arc::new(FakeCoordinator::default());
    let url = fake_coordinator::start(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let host = start_host(config(&url, data.path()));
    fake.enqueue(
        "doomed",
        serde_json::json!({"kind": "shell", "command": "sleep", "args": ["300"]}),
    );
    wait_running(&fake, "doomed").await;

    fake.lock().stop.push("doomed".to_string());
    eventually("the revoked job's lease to go", || async {
        let s = fake.lock();
        s.heartbeats
            .last()
            .filter(|hb| s.stop.is_empty() && hb.running.is_empty())
            .map(|_| ())
    })
    .await;
    assert!(fake.lock().completions.is_empty());

    // The slot is free again: another job runs.
    fake.enqueue(
        "next",
        serde_json::json!({"kind": "shell", "command": "echo"}),
    );
    eventually("the next job", || async {
        fake.lock().completions.get("next").cloned()
    })
    .await;
    host.shut_down().await;
    assert!(!fake.lock().completions.contains_key("doomed"));
}

#[tokio::test]
async fn a_forgotten_host_registers_again_with_the_same_id() {
    let fake = Arc::new(FakeCoordinator::default());
    fake.lock().heartbeat_forgets = 1;
    let url = fake_coordinator::start(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let host = start_host(config(&url, data.path()));
    let ids = eventually("a second registration", || async {
        let s = fake.lock();
        (s.registrations.len() >= 2).then(|| {
            (
                s.registrations[0].host_id.clone(),
                s.registrations[1].host_id.clone(),
            )
        })
    })
    .await;
    assert_eq!(ids.0, ids.1);
    eventually("heartbeats after registering again", || async {
        (!fake.lock().heartbeats.is_empty()).then_some(())
    })
    .await;
    host.shut_down().await;
}

#[tokio::test]
async fn learns_the_cluster_from_one_coordinator_and_fails_over_to_the_others() {
    let first = Arc::new(FakeCoordinator::default());
    let second = Arc::new(FakeCoordinator::default());
    let first_url = fake_coordinator::start(first.clone()).await;
    let second_url = fake_coordinator::start(second.clone()).await;
    for fake in [&first, &second] {
        fake.lock().peers = vec![first_url.clone(), second_url.clone()];
    }
    let data = tempfile::tempdir().unwrap();
    // The host is given the first coordinator only.
    let host = start_host(config(&first_url, data.path()));
    eventually("registration", || async {
        (!first.lock().registrations.is_empty()).then_some(())
    })
    .await;
    eventually("the host to read the peer list", || async {
        (first.lock().peer_reads > 0).then_some(())
    })
    .await;

    first.go_down();
    second.enqueue(
        "elsewhere",
        serde_json::json!({"kind": "shell", "command": "echo", "args": ["hi"]}),
    );
    let done = eventually("the job through the second coordinator", || async {
        second.lock().completions.get("elsewhere").cloned()
    })
    .await;
    assert_eq!(done.outcome, Outcome::Succeeded);
    assert_eq!(done.result.stdout, "hi\n");
    eventually("heartbeats to the second coordinator", || async {
        (!second.lock().heartbeats.is_empty()).then_some(())
    })
    .await;
    host.shut_down().await;
    assert!(first.lock().completions.is_empty());
}

#[tokio::test]
async fn sandbox_only_host_refuses_a_native_job_it_is_given() {
    let fake = Arc::new(FakeCoordinator::default());
    let url = fake_coordinator::start(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let mut sandboxed = config(&url, data.path());
    sandboxed.allowed_commands.clear();
    sandboxed.sandbox_only = true;
    let host = start_host(sandboxed);
    let registered = eventually("registration", || async {
        fake.lock().registrations.first().cloned()
    })
    .await;
    assert!(registered.sandbox_only);
    assert_eq!(registered.capabilities, ["wasi"]);

    // A coordinator should never do this; the host refuses all the same.
    let marker = data.path().join("touched");
    fake.enqueue(
        "native",
        serde_json::json!({"kind": "shell", "command": "touch", "args": [marker]}),
    );
    let native = eventually("the refusal", || async {
        fake.lock().completions.get("native").cloned()
    })
    .await;
    assert_eq!(native.outcome, Outcome::Failed);
    assert_eq!(
        native.result.error.as_deref(),
        Some("host fake-host is sandbox-only: it runs WASI jobs, never shell jobs")
    );
    assert!(!marker.exists(), "nothing was spawned");
    host.shut_down().await;
}
