//! Jobs that no live host can run: the submit answer and the job say why,
//! `--wait` says so once, the reason follows the hosts that come and go, a
//! queue timeout fails such a job, and every coordinator reports the reason.

use crate::common;

use std::process::Stdio;

use common::{Cluster, Host, Network, eventually, fake_host, fake_openclaw};
use serde_json::json;
use skyclaw_api::jobs::{JobSpec, JobStatus};

const NO_GPU: &str = "no live host offers capability gpu";

#[tokio::test]
async fn a_job_no_host_can_run_says_why_until_one_can() {
    // A short host TTL, so the host registered by hand is soon marked down.
    let net = Network::start_with(&["--host-ttl-ms", "2000"], "echo", &[]).await;
    let client = net.client();
    let out = net.cli(&[
        "job",
        "shell",
        "--json",
        "--require",
        "gpu",
        "--",
        "echo",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["waiting_reason"], NO_GPU, "the submit answer says why");
    let id = job["id"].as_str().unwrap().to_string();
    let shown = String::from_utf8(net.cli(&["job", "get", &id]).stdout).unwrap();
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("waiting  ") && l.ends_with(NO_GPU)),
        "{shown}"
    );

    let reason = |id: String| {
        let client = client.clone();
        async move { client.get_job(&id).await.ok().map(|j| j.waiting_reason) }
    };
    client
        .register_host(&fake_host("h-gpu", &["shell", "gpu"]))
        .await
        .unwrap();
    eventually("the reason to clear once a gpu host is live", || async {
        reason(id.clone()).await?.is_none().then_some(())
    })
    .await;
    // Nobody heartbeats for the host registered by hand: once it is marked
    // down, nothing can run the job again.
    eventually("the reason to return once the gpu host is down", || async {
        (reason(id.clone()).await?.as_deref() == Some(NO_GPU)).then_some(())
    })
    .await;
    let job = client.get_job(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Queued);
}

#[tokio::test]
async fn wait_says_why_once_and_a_queue_timeout_fails_the_job() {
    let net = Network::start("echo", &[]).await;
    let out = net.cli(&[
        "job",
        "shell",
        "--wait",
        "--require",
        "gpu",
        "--queue-timeout-ms",
        "1000",
        "--",
        "echo",
        "hi",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a job that timed out in the queue failed: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches(&format!("waiting: {NO_GPU}\n")).count(),
        1,
        "{stderr}"
    );
    let failure = format!("failed: {NO_GPU}; gave up after its queue timeout of 1000 ms");
    assert!(stderr.contains(&failure), "{stderr}");
    let list = net.client().list_jobs(&Default::default()).await.unwrap();
    let job = &list.jobs[0];
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.waiting_reason, None, "a failed job no longer waits");

    // Through the API, and with a host that can run it, the timeout never fires.
    let spec: JobSpec = serde_json::from_value(
        json!({"kind": "shell", "command": "echo", "queue_timeout_ms": 60_000}),
    )
    .unwrap();
    let submitted = net.client().submit_job(&spec, None).await.unwrap();
    assert_eq!(submitted.waiting_reason, None);
    let done = common::wait_terminal(&net.client(), &submitted.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
}

#[tokio::test]
async fn an_openclaw_job_waits_for_a_host_that_runs_openclaw() {
    let net = Network::start("echo", &["--openclaw-command", "/nonexistent/openclaw"]).await;
    let waiting = net
        .cli_command(&["job", "openclaw", "--message", "hi", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = net.client();
    eventually("the job to be queued with its reason", || async {
        let list = client.list_jobs(&Default::default()).await.ok()?;
        let reason = list.jobs.first()?.waiting_reason.clone()?;
        assert_eq!(reason, "no live host runs openclaw-run jobs");
        Some(())
    })
    .await;
    let (_scripts, fake) = fake_openclaw();
    let _claw_host = Host::start(
        &net.coordinator.url,
        &net.tmp.path().join("claw-host"),
        "echo",
        &["--openclaw-command", fake.to_str().unwrap()],
    );
    let out = tokio::task::spawn_blocking(move || waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr
            .matches("waiting: no live host runs openclaw-run jobs")
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""--message","hi""#),
        "{out:?}"
    );
}

/// The reason is replicated state: followers, which know no hosts, answer
/// reads with the reason the leader recorded.
#[tokio::test]
async fn every_coordinator_reports_the_waiting_reason() {
    let cluster = Cluster::start(3, 3, &[]).await;
    let client = cluster.client();
    let spec: JobSpec = serde_json::from_value(
        json!({"kind": "shell", "command": "echo", "requirements": {"capabilities": ["gpu"]}}),
    )
    .unwrap();
    let job = client.submit_job(&spec, None).await.unwrap();
    assert_eq!(job.waiting_reason.as_deref(), Some("no host is live"));
    let reasons = || async {
        let mut seen = Vec::new();
        for node in &cluster.nodes {
            seen.push(node.client().get_job(&job.id).await.ok()?.waiting_reason);
        }
        Some(seen)
    };
    eventually("every node to report the reason", || async {
        let seen = reasons().await?;
        seen.iter()
            .all(|r| r.as_deref() == Some("no host is live"))
            .then_some(())
    })
    .await;
    client
        .register_host(&fake_host("h-shell", &["shell"]))
        .await
        .unwrap();
    eventually("every node to report the new reason", || async {
        let seen = reasons().await?;
        seen.iter()
            .all(|r| r.as_deref() == Some(NO_GPU))
            .then_some(())
    })
    .await;
    client
        .register_host(&fake_host("h-gpu", &["shell", "gpu"]))
        .await
        .unwrap();
    eventually("every node to report no reason", || async {
        reasons().await?.iter().all(Option::is_none).then_some(())
    })
    .await;
}
