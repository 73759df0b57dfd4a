//! Crashes: a coordinator killed with SIGKILL loses no accepted job and
//! completes none twice; a host killed mid-job has its job requeued and
//! finished by another host; a host stopped with SIGTERM hands its jobs back;
//! a state database that lost its tail after the log was purged is restored
//! from the snapshot.

use crate::common;

use std::collections::HashMap;
use std::path::Path;

use common::{Coordinator, Host, eventually, host_up, last_purged_index, wait_terminal};
use rusqlite::config::DbConfig;
use serde_json::json;
use skyclaw_api::Client;
use skyclaw_api::jobs::{JobQuery, JobSpec, JobStatus};

/// A job that records each execution of itself in `log`, then sleeps.
fn logged_job(log: &Path, mark: usize, sleep: &str) -> JobSpec {
    serde_json::from_value(json!({
        "kind": "shell", "command": "sh",
        "args": ["-c", format!("echo {mark} >> \"$LOG\"; sleep {sleep}")],
        "env": {"LOG": log},
    }))
    .unwrap()
}

/// How many times each mark was executed.
fn executions(log: &Path) -> HashMap<usize, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *counts.entry(line.trim().parse().unwrap()).or_default() += 1;
    }
    counts
}

async fn statuses(client: &Client) -> HashMap<JobStatus, usize> {
    let list = client
        .list_jobs(&JobQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut counts = HashMap::new();
    for job in list.jobs {
        *counts.entry(job.status).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn coordinator_sigkill_loses_nothing_and_completes_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let host = Host::start(
        &coordinator.url,
        &tmp.path().join("host"),
        "sh",
        &["--max-parallel", "3"],
    );
    let client = coordinator.client();
    host_up(&client, &host.id().await).await;
    let (_log_dir, log) = common::execution_log();

    let mut accepted = Vec::new();
    for mark in 0..30 {
        let sleep = if mark % 3 == 0 { "0.05" } else { "0.6" };
        let job = client
            .submit_job(&logged_job(&log, mark, sleep), None)
            .await
            .unwrap();
        accepted.push(job.id);
    }
    eventually("queued, running and finished jobs at once", || async {
        let s = statuses(&client).await;
        let mixed = s.get(&JobStatus::Queued).copied().unwrap_or(0) > 0
            && s.get(&JobStatus::Running).copied().unwrap_or(0) > 0
            && s.get(&JobStatus::Succeeded).copied().unwrap_or(0) > 0;
        mixed.then_some(())
    })
    .await;

    coordinator.kill9();
    coordinator.restart().await;

    for id in &accepted {
        let job = wait_terminal(&client, id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    }
    let runs = executions(&log);
    assert_eq!(
        runs.len(),
        accepted.len(),
        "every accepted job ran: {runs:?}"
    );
    assert!(
        runs.values().all(|&n| n == 1),
        "each job ran exactly once: {runs:?}"
    );
    drop(host);
}

#[tokio::test]
async fn a_job_whose_host_dies_is_finished_by_another() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator =
        Coordinator::start(&tmp.path().join("coord"), &["--host-ttl-ms", "1000"]).await;
    let client = coordinator.client();
    let mut first = Host::start(&coordinator.url, &tmp.path().join("h1"), "sh", &[]);
    let first_id = first.id().await;
    host_up(&client, &first_id).await;

    let (_log_dir, log) = common::execution_log();
    let job = client
        .submit_job(&logged_job(&log, 7, "2"), None)
        .await
        .unwrap();
    eventually("the job to run on the first host", || async {
        let j = client.get_job(&job.id).await.ok()?;
        (j.status == JobStatus::Running && j.host_id.as_deref() == Some(&first_id)).then_some(())
    })
    .await;

    let second = Host::start(&coordinator.url, &tmp.path().join("h2"), "sh", &[]);
    let second_id = second.id().await;
    host_up(&client, &second_id).await;
    first.kill9();

    let done = wait_terminal(&client, &job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.host_id.as_deref(), Some(second_id.as_str()));
    assert_eq!(done.attempts, 2);
    let hosts = client.list_hosts().await.unwrap();
    let dead = hosts.hosts.iter().find(|h| h.id == first_id).unwrap();
    assert_eq!(dead.status, skyclaw_api::hosts::HostStatus::Down);
}

#[tokio::test]
async fn sigterm_hands_running_jobs_back() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let mut host = Host::start(
        &coordinator.url,
        &tmp.path().join("h1"),
        "sh",
        &["--shutdown-grace-ms", "200"],
    );
    host_up(&client, &host.id().await).await;
    let (_log_dir, log) = common::execution_log();
    let job = client
        .submit_job(&logged_job(&log, 1, "300"), None)
        .await
        .unwrap();
    eventually("the job to start", || async {
        (!executions(&log).is_empty()).then_some(())
    })
    .await;

    let status = host.terminate();
    assert!(status.success(), "the host exits 0 on SIGTERM: {status:?}");
    let j = client.get_job(&job.id).await.unwrap();
    assert_eq!(
        j.status,
        JobStatus::Queued,
        "handed back for another host: {j:?}"
    );
    assert_eq!(j.attempts, 1);
}

/// The state database is not fsynced on commit, so a power cut can take its
/// last commits after the Raft log was purged past them. The coordinator
/// then restores the database from its snapshot at start and loses nothing.
#[tokio::test]
async fn a_state_database_behind_the_purged_log_is_restored_from_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("coord");
    let mut coordinator = Coordinator::start(&dir, &["--snapshot-logs", "100"]).await;
    let client = coordinator.client();
    // A reader that keeps its view stops checkpoints from copying anything
    // newer into the database file: every later commit stays in the WAL.
    let reader = rusqlite::Connection::open(dir.join("coordinator.db")).unwrap();
    reader
        .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let before: u64 = reader
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(before, 0);

    // Enough entries for snapshots and a purge of the log behind them.
    let submitted = 1300;
    let spec: JobSpec =
        serde_json::from_value(json!({"kind": "shell", "command": "true"})).unwrap();
    for _ in 0..submitted {
        client.submit_job(&spec, None).await.unwrap();
    }
    eventually("the log to be purged", || async {
        last_purged_index(&dir).filter(|&p| p > 0)
    })
    .await;

    // The power cut: the process dies and the WAL's content is lost.
    coordinator.kill9();
    reader.execute_batch("ROLLBACK").unwrap();
    drop(reader);
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("coordinator.db-wal"))
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::remove_file(dir.join("coordinator.db-shm")).unwrap();

    coordinator.restart().await;
    let url = coordinator.url.clone();
    eventually("every job back", || async {
        let queued = common::metric(&url, "skyclaw_jobs{status=\"queued\"}").await;
        (queued == Some(submitted as f64)).then_some(())
    })
    .await;
}
