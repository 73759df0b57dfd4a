//! The replicated coordinator cluster, as real processes on 127.0.0.1:
//! forming from bootstrap URLs, learners beyond the voter count, losing the
//! leader under load without losing or repeating a job, losing quorum,
//! catching up through a snapshot, removing voters, moving to another port,
//! host discovery and liveness across leaders, and a host's claim whose
//! answer was lost.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Auth, Cluster, Host, RawApi, TOKEN, eventually, host_up, last_log_index, last_purged_index,
    live_fake_host, log_holds, process_gone, same_replicas, skyclaw, snapshot_meta, wait_terminal,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use skyclaw_api::apikeys::{CreateApiKey, Scope};
use skyclaw_api::hosts::{Claim, Complete, CompleteMany, Completion, Outcome};
use skyclaw_api::jobs::{Job, JobQuery, JobResult, JobSpec, JobStatus, MAX_OUTPUT_BYTES_LIMIT};
use skyclaw_api::network::PeerRole;
use skyclaw_api::{Client, ClientError, ErrorCode};

/// How long phases that wait on many conditions in turn may take.
const LONG_DEADLINE: Duration = Duration::from_secs(60);

/// A job that appends `mark` to `log` once per execution, then exits.
fn marked_job(log: &Path, mark: u64) -> JobSpec {
    marked_job_pausing(log, mark, None)
}

/// A job that appends `mark` to `log` once per execution, then sleeps for
/// `pause` (as `sleep` takes it) if given.
fn marked_job_pausing(log: &Path, mark: u64, pause: Option<&str>) -> JobSpec {
    let mut script = "echo \"$MARK\" >> \"$LOG\"".to_string();
    if let Some(pause) = pause {
        script.push_str(&format!("; sleep {pause}"));
    }
    serde_json::from_value(json!({
        "kind": "shell", "command": "sh",
        "args": ["-c", script],
        "env": {"LOG": log, "MARK": mark.to_string()},
    }))
    .unwrap()
}

/// The mark of a job made by [`marked_job`].
fn mark_of(job: &Job) -> u64 {
    let spec = serde_json::to_value(&job.spec).unwrap();
    spec["env"]["MARK"].as_str().unwrap().parse().unwrap()
}

fn echo_job() -> JobSpec {
    serde_json::from_value(json!({"kind": "shell", "command": "echo", "args": ["hi"]})).unwrap()
}

/// How many times each mark was executed.
fn executions(log: &Path) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *counts.entry(line.trim().parse().unwrap()).or_default() += 1;
    }
    counts
}

/// Every job the coordinator behind `client` holds, oldest first.
async fn all_jobs(client: &Client) -> Result<Vec<Job>, ClientError> {
    let mut jobs = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .list_jobs(&JobQuery {
                limit: Some(1000),
                after: after.clone(),
                ..Default::default()
            })
            .await?;
        jobs.extend(page.jobs);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(jobs),
        }
    }
}

/// `POST /v1/jobs` straight to one coordinator, without failover.
async fn raw_submit(url: &str, key: &str) -> (StatusCode, Value) {
    let resp = RawApi::new(url)
        .request("POST", "/v1/jobs", Auth::Token)
        .header("x-idempotency-key", key)
        .header("content-type", "application/json")
        .body(r#"{"kind":"shell","command":"echo","args":["x"]}"#)
        // Far beyond the bounded time a write without quorum may take.
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}/v1/jobs got no answer: {e}"));
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Kills a process the test started when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn coordinators_form_from_bootstrap_urls_and_agree_on_peers() {
    let mut cluster = Cluster::start(3, 3, &[]).await;
    cluster.add().await;
    cluster.add().await;

    // Every node answers the same five peers (checked by `wait_for_peers`):
    // nodes 1-3 vote, one of them leads, 4 and 5 are learners.
    let expected = cluster.expected_roles();
    let table = cluster
        .wait_for_peers("five peers on every node", |view| *view == expected)
        .await;
    let roles: BTreeMap<u64, PeerRole> = table.peers.iter().map(|p| (p.id, p.role)).collect();
    let leader = table.leader_id.unwrap();
    assert!((1..=3).contains(&leader), "a voter leads: {table:?}");
    for id in 1..=3 {
        let role = if id == leader {
            PeerRole::Leader
        } else {
            PeerRole::Voter
        };
        assert_eq!(roles[&id], role, "{table:?}");
    }
    assert_eq!(roles[&4], PeerRole::Learner, "{table:?}");
    assert_eq!(roles[&5], PeerRole::Learner, "{table:?}");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let peer = table.peers.iter().find(|p| p.id == i as u64 + 1).unwrap();
        assert_eq!(peer.url, node.url, "each node is listed at its own url");
    }

    // One URL is enough to learn them all.
    let learner = cluster.nodes[4].client();
    let mut learned = learner.refresh_urls().await.unwrap();
    learned.sort();
    let mut urls = cluster.url_list();
    urls.sort();
    assert_eq!(learned, urls);

    // A learner forwards writes to the leader and serves reads; the write
    // reaches every node.
    let job = cluster.nodes[4]
        .client()
        .submit_job(&echo_job(), Some("through-a-learner"))
        .await
        .unwrap();
    for node in &cluster.nodes {
        let client = node.client();
        eventually("the job on every node", || async {
            client.get_job(&job.id).await.ok()
        })
        .await;
    }

    // A new coordinator that claims node 2's id from another address is refused.
    let dir = cluster.tmp.path().join("impostor");
    let stderr_path = cluster.tmp.path().join("impostor.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let child = skyclaw()
        .args(["coordinator", "--node-id", "2", "--listen", "127.0.0.1:0"])
        .args(["--token", TOKEN, "--voters", "3", "--bootstrap"])
        .arg(&cluster.nodes[0].url)
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut impostor = Reaped(child);
    let status = eventually("the impostor to exit", || {
        let exited = impostor.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let message = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!status.success(), "refused: {status:?}\n{message}");
    assert!(
        message.contains("node id 2"),
        "the refusal names the id: {message}"
    );
    let after = cluster
        .wait_for_peers("the same five peers", |view| *view == expected)
        .await;
    assert_eq!(after.peers.len(), 5);
}

#[tokio::test]
async fn leader_sigkill_under_load_loses_nothing_and_runs_nothing_twice() {
    // A lease orphaned by the failover would end within the test's deadlines
    // (and show as a second attempt) rather than after the default 30 s.
    let mut cluster = Cluster::start(3, 3, &["--lease-ms", "10000"]).await;
    let (_log_dir, log) = common::execution_log();
    let hosts: Vec<Host> = (0..2)
        .map(|i| {
            Host::start(
                &cluster.urls(),
                &cluster.tmp.path().join(format!("host{i}")),
                "sh",
                &["--max-parallel", "4"],
            )
        })
        .collect();
    let client = cluster.client();
    for host in &hosts {
        host_up(&client, &host.id().await).await;
    }

    // Several clients submit a steady stream, each with its own keys; a
    // failed submission is retried with the same key until it is answered.
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let accepted_after_kill = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for task in 0..4u64 {
        let client = cluster.client();
        let (stop, killed, accepted, after) = (
            stop.clone(),
            killed.clone(),
            accepted.clone(),
            accepted_after_kill.clone(),
        );
        let log = log.clone();
        submitters.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let mark = task * 1_000_000 + n;
                n += 1;
                let key = format!("submitter-{task}-{mark}");
                // Some jobs run for a while, so the leader dies while
                // hosts hold leases it granted.
                let pause = (mark % 3 == 0).then_some("0.3");
                let spec = marked_job_pausing(&log, mark, pause);
                loop {
                    let during_kill = killed.load(Ordering::SeqCst);
                    match client.submit_job(&spec, Some(&key)).await {
                        Ok(job) => {
                            accepted.lock().unwrap().push((mark, job.id));
                            if during_kill {
                                after.fetch_add(1, Ordering::SeqCst);
                            }
                            break;
                        }
                        Err(e) => {
                            errors.push(e);
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                // A steady stream, not a flood: hosts keep up with it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            errors
        }));
    }
    let key = client
        .create_api_key(&CreateApiKey {
            name: "before-the-kill".into(),
            scopes: vec![Scope::JobsSubmit],
        })
        .await
        .unwrap();
    eventually("40 accepted submissions", || {
        let enough = accepted.lock().unwrap().len() >= 40;
        async move { enough.then_some(()) }
    })
    .await;
    let log_before_kill = executions(&log);
    assert!(
        !log_before_kill.is_empty(),
        "hosts run jobs before the kill"
    );

    let old_leader = cluster.leader().await;
    let leader_client = cluster.nodes[old_leader].client();
    let running = eventually("a job running on a host", || async {
        let running = leader_client
            .list_jobs(&JobQuery {
                status: Some(JobStatus::Running),
                ..Default::default()
            })
            .await
            .ok()?
            .jobs;
        (!running.is_empty()).then_some(running)
    })
    .await;
    cluster.nodes[old_leader].kill9();
    killed.store(true, Ordering::SeqCst);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    let after = accepted_after_kill.clone();
    eventually("60 submissions accepted after the kill", || {
        let enough = after.load(Ordering::SeqCst) >= 60;
        async move { enough.then_some(()) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for task in submitters {
        errors.extend(task.await.unwrap());
    }
    for e in &errors {
        assert!(
            e.is_transient(),
            "only failover errors while the leader changes: {e}"
        );
    }
    let accepted = accepted.lock().unwrap().clone();

    // Every accepted job succeeds.
    for (_, id) in &accepted {
        let job = wait_terminal(&client, id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    }
    // So does every job in the cluster (a submission whose answer was lost
    // may have committed), each executed exactly once.
    let leader_client = cluster.nodes[new_leader].client();
    let jobs = eventually("every job to be terminal", || async {
        let jobs = all_jobs(&leader_client).await.ok()?;
        jobs.iter().all(|j| j.status.is_terminal()).then_some(jobs)
    })
    .await;
    let runs = eventually("every job's execution in the log", || {
        let runs = executions(&log);
        let complete = runs.len() >= jobs.len();
        async move { complete.then_some(runs) }
    })
    .await;
    let marks: BTreeSet<u64> = jobs.iter().map(mark_of).collect();
    assert_eq!(marks.len(), jobs.len(), "one job per idempotency key");
    for job in &jobs {
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    }
    let twice: Vec<_> = runs.iter().filter(|&(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "marks executed more than once: {twice:?}");
    assert_eq!(
        runs.keys().copied().collect::<BTreeSet<_>>(),
        marks,
        "the executed marks are exactly the jobs' marks"
    );
    let job_ids: BTreeSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    for (mark, id) in &accepted {
        assert!(
            job_ids.contains(id.as_str()),
            "accepted job {id} ({mark}) kept"
        );
    }
    let reattempted: Vec<_> = jobs.iter().filter(|j| j.attempts != 1).collect();
    assert!(
        reattempted.is_empty(),
        "no job was handed out twice (a lease orphaned by a lost claim answer \
         expired and the job was leased again): {reattempted:?}"
    );
    for job in &running {
        assert!(job_ids.contains(job.id.as_str()), "{job:?}");
    }
    for host in &hosts {
        assert!(!process_gone(host.pid() as i32), "hosts did not crash");
    }
    // The new leader kept both hosts up through the hand-over.
    let new_leader_client = cluster.nodes[new_leader].client();
    for host in &hosts {
        host_up(&new_leader_client, &host.id().await).await;
    }
    let keys = new_leader_client.list_api_keys().await.unwrap();
    assert!(keys.keys.iter().any(|k| k.id == key.key.id), "{keys:?}");
    println!(
        "{} accepted, {} jobs, {} failed attempts retried, {} run before the kill, {} running at it",
        accepted.len(),
        jobs.len(),
        errors.len(),
        log_before_kill.len(),
        running.len()
    );

    // The killed leader comes back on its address and catches up to the
    // same state as the others.
    cluster.nodes[old_leader].restart().await;
    let dirs: Vec<PathBuf> = cluster.nodes.iter().map(|n| n.dir.clone()).collect();
    let rows = same_replicas(&dirs).await;
    assert!(rows > jobs.len(), "the compared state holds the jobs");
    eventually("the same applied index on every /health", || async {
        let mut indexes = BTreeSet::new();
        for node in &cluster.nodes {
            indexes.insert(node.applied_index().await?);
        }
        (indexes.len() == 1).then_some(())
    })
    .await;
    let expected = cluster.expected_roles();
    cluster
        .wait_for_peers("the restarted node back in the cluster", |view| {
            *view == expected
        })
        .await;
    drop(hosts);
}

/// Kills two of three coordinators: writes to the survivor answer 503
/// `no_quorum` while its reads keep working; bringing one back resumes writes.
async fn quorum_loss(kill_leader: bool) {
    let mut cluster = Cluster::start(3, 3, &[]).await;
    let job = cluster
        .client()
        .submit_job(&echo_job(), Some("before"))
        .await
        .unwrap();
    let leader = cluster.leader().await;
    let (survivor, dead) = if kill_leader {
        let survivor = cluster.follower(leader);
        let other = (0..3).find(|&i| i != leader && i != survivor).unwrap();
        (survivor, [leader, other])
    } else {
        let first = cluster.follower(leader);
        let second = (0..3).find(|&i| i != leader && i != first).unwrap();
        (leader, [first, second])
    };
    let reader = cluster.nodes[survivor].client();
    eventually("the job on the survivor", || async {
        reader.get_job(&job.id).await.ok()
    })
    .await;
    for &i in &dead {
        cluster.nodes[i].kill9();
    }

    let url = cluster.nodes[survivor].url.clone();
    let mut attempt = 0;
    let refusal = eventually("a write to answer 503 no_quorum", || {
        attempt += 1;
        let key = format!("without-quorum-{attempt}");
        let url = url.clone();
        async move {
            let (status, body) = raw_submit(&url, &key).await;
            // A write that reached the leader's log before it noticed the
            // lost quorum answers 504 timeout: its outcome is unknown.
            let outcome_unknown =
                status == StatusCode::GATEWAY_TIMEOUT && body["error"]["code"] == "timeout";
            assert!(
                status == StatusCode::SERVICE_UNAVAILABLE || outcome_unknown,
                "no write commits without quorum: {status} {body}"
            );
            (body["error"]["code"] == "no_quorum").then_some(body)
        }
    })
    .await;
    assert!(refusal["error"]["message"].as_str().is_some(), "{refusal}");
    // Once more: the refusal is steady, not a blip of the election.
    let (status, body) = raw_submit(&url, "without-quorum-again").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "no_quorum", "{body}");

    // Reads are served by the survivor alone.
    let read = reader.get_job(&job.id).await.unwrap();
    assert_eq!(read.id, job.id);
    assert_eq!(read.status, JobStatus::Queued);
    let list = all_jobs(&reader).await.unwrap();
    assert!(list.iter().any(|j| j.id == job.id), "{list:?}");
    reader.health().await.unwrap();

    // One coordinator back: a majority again, writes resume.
    let back = dead[0];
    cluster.nodes[back].restart().await;
    let written = eventually("a write to succeed again", || {
        let url = url.clone();
        async move {
            let (status, body) = raw_submit(&url, "with-quorum").await;
            match status {
                StatusCode::CREATED | StatusCode::OK => Some(body),
                StatusCode::SERVICE_UNAVAILABLE => None,
                other => panic!("unexpected answer {other}: {body}"),
            }
        }
    })
    .await;
    let id = written["id"].as_str().unwrap().to_string();
    for node in [survivor, back] {
        let client = cluster.nodes[node].client();
        eventually("the new job on both running nodes", || async {
            client.get_job(&id).await.ok()
        })
        .await;
    }
    let jobs = all_jobs(&reader).await.unwrap();
    println!(
        "{} jobs after recovery: {} refused writes committed later",
        jobs.len(),
        jobs.len() - 2
    );
}

#[tokio::test]
async fn without_quorum_a_follower_refuses_writes_and_serves_reads() {
    quorum_loss(true).await;
}

#[tokio::test]
async fn without_quorum_the_leader_refuses_writes_and_serves_reads() {
    quorum_loss(false).await;
}

#[tokio::test]
async fn a_node_far_behind_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(3, 3, &["--snapshot-logs", "100"]).await;
    let leader = cluster.leader().await;
    let lagging = cluster.follower(leader);
    let status = cluster.nodes[lagging].terminate();
    assert!(
        status.success(),
        "a coordinator stops cleanly on SIGTERM: {status:?}"
    );
    let lagging_dir = cluster.nodes[lagging].dir.clone();
    let behind = last_log_index(&lagging_dir);
    let live_dirs: Vec<PathBuf> = cluster
        .live()
        .into_iter()
        .map(|i| cluster.nodes[i].dir.clone())
        .collect();

    // Commit entries until no running node's log holds what the stopped one
    // lacks: then only a snapshot can bring it up to date.
    let client = cluster.client();
    let start = Instant::now();
    let mut submitted = 0;
    while !live_dirs
        .iter()
        .all(|d| last_purged_index(d).is_some_and(|p| p > behind))
    {
        assert!(
            start.elapsed() < LONG_DEADLINE,
            "logs never purged past {behind}: {:?} after {submitted} jobs",
            live_dirs
                .iter()
                .map(|d| last_purged_index(d))
                .collect::<Vec<_>>()
        );
        let tasks: Vec<_> = (0..4)
            .map(|task| {
                let client = client.clone();
                tokio::spawn(async move {
                    for n in 0..25 {
                        let key = format!("fill-{submitted}-{task}-{n}");
                        client.submit_job(&echo_job(), Some(&key)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        submitted += 100;
    }
    println!(
        "{submitted} jobs submitted while node {} was down (its log ended at {behind})",
        lagging + 1
    );

    cluster.nodes[lagging].restart().await;
    let leader = cluster.leader().await;
    let leader_dir = cluster.nodes[leader].dir.clone();
    let rows = same_replicas(&[leader_dir, lagging_dir.clone()]).await;
    assert!(rows >= submitted, "{rows} rows");
    let leader_jobs = all_jobs(&cluster.nodes[leader].client()).await.unwrap();
    let lagging_jobs = all_jobs(&cluster.nodes[lagging].client()).await.unwrap();
    assert_eq!(leader_jobs.len(), submitted);
    assert_eq!(leader_jobs, lagging_jobs);
    let applied = cluster.nodes[lagging].applied_index().await.unwrap();
    assert!(applied > behind + 1000, "{applied} vs {behind}");

    // It holds a snapshot past its old log, and never received the entries
    // right after that log.
    let meta = snapshot_meta(&lagging_dir).expect("a snapshot on the node");
    let snapshot_index = meta["last_log_id"]["index"].as_u64().unwrap();
    assert!(snapshot_index > behind, "{meta}");
    assert!(
        !log_holds(&lagging_dir, behind + 1),
        "entry {} came from the log, not a snapshot",
        behind + 1
    );
}

/// Jobs the large-output test completes, in rounds of what the fake host may
/// run at once: 2 MiB of output each, 280 MiB in all, more than one Raft
/// request may carry (256 MiB).
const LARGE_OUTPUT_JOBS: usize = 140;

/// A follower that was down while jobs reported megabytes of output catches
/// up: the leader splits what it sends so that no request passes the Raft
/// body limit, and no log entry holds more than one request can carry.
#[tokio::test]
async fn a_follower_catches_up_after_jobs_with_megabytes_of_output() {
    let mut cluster = Cluster::start(3, 3, &[]).await;
    let leader = cluster.leader().await;
    let lagging = cluster.follower(leader);
    assert!(cluster.nodes[lagging].terminate().success());
    let client = cluster.client();
    let _beats = live_fake_host(&client, "h-loud", Duration::from_millis(500)).await;

    // Each job reports the most output a host may send, on both streams.
    let loud = "a".repeat(MAX_OUTPUT_BYTES_LIMIT);
    let spec: JobSpec =
        serde_json::from_value(json!({"kind": "shell", "command": "true"})).unwrap();
    let mut finished = 0;
    let mut round = 0;
    let mut last_job = String::new();
    while finished < LARGE_OUTPUT_JOBS {
        round += 1;
        let mut submitted = Vec::new();
        for n in 0..common::FAKE_HOST_PARALLEL {
            let key = format!("loud-{round}-{n}");
            submitted.push(client.submit_job(&spec, Some(&key)).await.unwrap().id);
        }
        let claim = Claim {
            max_jobs: common::FAKE_HOST_PARALLEL as u32,
            wait_ms: 5_000,
        };
        let leased = client
            .claim("h-loud", &claim, &format!("claim-{round}"))
            .await
            .unwrap()
            .jobs;
        assert_eq!(leased.len(), submitted.len(), "round {round}");
        // Completed at once, so that they are proposed together.
        let completions: Vec<_> = leased
            .into_iter()
            .map(|leased| {
                let client = client.clone();
                let result: JobResult = serde_json::from_value(json!({
                    "exit_code": 0, "stdout": loud, "stderr": loud,
                    "stdout_truncated": false, "stderr_truncated": false,
                    "duration_ms": 1, "error": null,
                }))
                .unwrap();
                async move {
                    let batch = CompleteMany {
                        completions: vec![Completion {
                            job_id: leased.job.id.clone(),
                            complete: Complete {
                                lease_token: leased.lease_token,
                                outcome: Outcome::Succeeded,
                                result,
                            },
                        }],
                    };
                    client.complete_many("h-loud", &batch).await.unwrap()
                }
            })
            .map(tokio::spawn)
            .collect();
        for completion in completions {
            let answer = completion.await.unwrap();
            assert_eq!(answer.results[0].error, None, "round {round}");
            finished += 1;
        }
        last_job = submitted.pop().expect("a job this round");
    }

    cluster.nodes[lagging].restart().await;
    let leader = cluster.leader().await;
    let dirs = [
        cluster.nodes[leader].dir.clone(),
        cluster.nodes[lagging].dir.clone(),
    ];
    let rows = same_replicas(&dirs).await;
    assert!(rows > finished, "{rows} rows compared");
    // And it serves what it caught up on.
    let job = cluster.nodes[lagging]
        .client()
        .get_job(&last_job)
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    let result = job.result.expect("a result");
    assert_eq!(result.stdout.len(), MAX_OUTPUT_BYTES_LIMIT);
    assert_eq!(result.stderr.len(), MAX_OUTPUT_BYTES_LIMIT);
}

#[tokio::test]
async fn removing_a_dead_voter_promotes_a_learner() {
    let mut cluster = Cluster::start(4, 3, &[]).await;
    let leader = cluster.leader().await;
    let dead = (0..3).find(|&i| i != leader).unwrap();
    cluster.nodes[dead].kill9();
    let dead_id = dead as u64 + 1;

    let client = cluster.client();
    eventually("the dead voter to be removed", || async {
        match client.remove_peer(dead_id).await {
            Ok(_) => Some(()),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Some(()),
            Err(e) if e.is_transient() => None,
            Err(e) => panic!("removing {dead_id}: {e}"),
        }
    })
    .await;
    let live: Vec<(u64, String, bool)> = cluster
        .live()
        .into_iter()
        .map(|i| (i as u64 + 1, cluster.nodes[i].url.clone(), true))
        .collect();
    let table = cluster
        .wait_for_peers("the learner to become a voter", |view| *view == live)
        .await;
    let roles: HashMap<u64, PeerRole> = table.peers.iter().map(|p| (p.id, p.role)).collect();
    assert_ne!(roles[&4], PeerRole::Learner, "{table:?}");
    assert!(!roles.contains_key(&dead_id), "{table:?}");
    client
        .submit_job(&echo_job(), Some("after-removal"))
        .await
        .unwrap();

    // The promoted node really votes: with the leader gone too, it and the
    // last original voter still elect a leader and commit writes.
    cluster.nodes[leader].kill9();
    let new_leader = cluster.leader().await;
    assert!(new_leader != leader && new_leader != dead);
    let job = eventually("a write with two of the three voters", || async {
        client
            .submit_job(&echo_job(), Some("after-leader-loss"))
            .await
            .ok()
    })
    .await;
    let promoted = cluster.nodes[3].client();
    eventually("the job on the promoted node", || async {
        promoted.get_job(&job.id).await.ok()
    })
    .await;
}

/// A TCP proxy in front of `upstream` that passes everything through, except
/// that it breaks off the first answer containing `marker` (once), as a
/// coordinator that dies between committing and answering would.
async fn lossy_proxy(
    listener: tokio::net::TcpListener,
    upstream: String,
    marker: String,
    dropped: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
            continue;
        };
        let (marker, dropped) = (marker.clone(), dropped.clone());
        tokio::spawn(async move {
            let (mut client_read, mut client_write) = client.split();
            let (mut server_read, mut server_write) = server.split();
            let up = tokio::io::copy(&mut client_read, &mut server_write);
            let down = async {
                let mut seen: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = server_read.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    // Look across chunk boundaries too.
                    seen.extend_from_slice(&buf[..n]);
                    let hit = seen.windows(marker.len()).any(|w| w == marker.as_bytes());
                    if hit && !dropped.swap(true, Ordering::SeqCst) {
                        return Ok(()); // both sockets close, the answer is lost
                    }
                    let keep = seen.len().saturating_sub(marker.len());
                    seen.drain(..keep);
                    client_write.write_all(&buf[..n]).await?;
                }
            };
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        });
    }
}

/// A host whose claim answer was lost retries the claim under the same key
/// and gets the jobs it leased, even when a slot freed up meanwhile.
#[tokio::test]
async fn a_claim_whose_answer_is_lost_is_replayed_to_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    // The coordinator advertises the proxy, so the host keeps using it after
    // it refreshes its coordinator list from the peers table.
    let coordinator = common::Coordinator::start(
        &tmp.path().join("coord"),
        &["--advertise", &proxy_url, "--lease-ms", "10000"],
    )
    .await;
    let marker = "7777777".to_string();
    let dropped = Arc::new(AtomicBool::new(false));
    let proxy = tokio::spawn(lossy_proxy(
        listener,
        coordinator.url.trim_start_matches("http://").to_string(),
        format!("\"MARK\":\"{marker}\""),
        dropped.clone(),
    ));
    let host = Host::start(
        &proxy_url,
        &tmp.path().join("host"),
        "sh",
        &["--max-parallel", "2"],
    );
    let client = coordinator.client();
    host_up(&client, &host.id().await).await;
    let (_log_dir, log) = common::execution_log();

    // A first job takes one slot; the host's next claim asks for one job.
    let first = client.submit_job(&marked_job(&log, 1), None).await.unwrap();
    let first = wait_terminal(&client, &first.id).await;
    assert_eq!(first.status, JobStatus::Succeeded, "{first:?}");
    // That slot is free again when the host retries the claim whose answer
    // (leasing this job) the proxy breaks off.
    let job = client
        .submit_job(&marked_job(&log, marker.parse().unwrap()), None)
        .await
        .unwrap();
    let done = wait_terminal(&client, &job.id).await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the proxy broke off the claim answer"
    );
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.attempts, 1,
        "the lost claim was replayed, not left to expire: {done:?}"
    );
    assert_eq!(
        executions(&log).values().copied().collect::<Vec<_>>(),
        [1, 1]
    );
    proxy.abort();
}

#[tokio::test]
async fn a_coordinator_restarted_on_another_port_announces_its_new_address() {
    let mut cluster = Cluster::start(3, 3, &[]).await;
    let leader = cluster.leader().await;
    let moving = cluster.follower(leader);
    let old_url = cluster.nodes[moving].url.clone();
    cluster.nodes[moving].kill9();
    cluster.nodes[moving].restart_on_new_port().await;
    assert_ne!(cluster.nodes[moving].url, old_url);
    let expected = cluster.expected_roles();
    cluster
        .wait_for_peers("the new address on every node", |view| *view == expected)
        .await;

    // It serves as before: writes through it commit and reach it.
    let client = cluster.nodes[moving].client();
    let job = eventually("a write through the moved node", || async {
        client.submit_job(&echo_job(), Some("moved")).await.ok()
    })
    .await;
    eventually("the job on the moved node", || async {
        client.get_job(&job.id).await.ok()
    })
    .await;

    // So does the leader (which may take the lead again at once, its vote
    // being committed): it rejoins at its new address.
    let leader = cluster.leader().await;
    cluster.nodes[leader].kill9();
    cluster.nodes[leader].restart_on_new_port().await;
    let expected = cluster.expected_roles();
    cluster
        .wait_for_peers("the old leader's new address", |view| *view == expected)
        .await;
    let client = cluster.nodes[leader].client();
    let job = eventually("a write through the old leader", || async {
        client
            .submit_job(&echo_job(), Some("moved-leader"))
            .await
            .ok()
    })
    .await;
    eventually("the job on the old leader", || async {
        client.get_job(&job.id).await.ok()
    })
    .await;
    let dirs: Vec<PathBuf> = cluster.nodes.iter().map(|n| n.dir.clone()).collect();
    same_replicas(&dirs).await;
}

#[tokio::test]
async fn a_single_coordinator_restarted_on_another_port_announces_its_new_address() {
    let mut cluster = Cluster::start(1, 3, &[]).await;
    let job = cluster
        .client()
        .submit_job(&echo_job(), Some("before"))
        .await
        .unwrap();
    cluster.nodes[0].kill9();
    cluster.nodes[0].restart_on_new_port().await;
    let expected = cluster.expected_roles();
    cluster
        .wait_for_peers("the new address", |view| *view == expected)
        .await;
    let client = cluster.client();
    assert_eq!(client.get_job(&job.id).await.unwrap().id, job.id);
    client.submit_job(&echo_job(), Some("after")).await.unwrap();
}

#[tokio::test]
async fn a_host_given_one_coordinator_url_fails_over_to_the_peers_it_learned() {
    let mut cluster = Cluster::start(3, 3, &[]).await;
    let (_log_dir, log) = common::execution_log();
    // The host knows node 1 only, and learns the others from it.
    let host = Host::start(
        &cluster.nodes[0].url,
        &cluster.tmp.path().join("host"),
        "sh",
        &[],
    );
    let client = cluster.client();
    host_up(&client, &host.id().await).await;
    let first = client.submit_job(&marked_job(&log, 1), None).await.unwrap();
    assert_eq!(
        wait_terminal(&client, &first.id).await.status,
        JobStatus::Succeeded
    );

    cluster.nodes[0].kill9();
    let job = eventually("a submission without node 1", || async {
        client
            .submit_job(&marked_job(&log, 2), Some("without-node-1"))
            .await
            .ok()
    })
    .await;
    let done = wait_terminal(&client, &job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.host_id.as_deref(), Some(host.id().await.as_str()));
    assert_eq!(
        executions(&log).into_iter().collect::<Vec<_>>(),
        [(1, 1), (2, 1)]
    );
}

#[tokio::test]
async fn removing_the_live_leader_promotes_a_learner_and_hands_over() {
    let mut cluster = Cluster::start(4, 3, &[]).await;
    let leader = cluster.leader().await;
    let leader_id = leader as u64 + 1;
    let client = cluster.client();
    eventually("the leader to be removed", || async {
        match client.remove_peer(leader_id).await {
            Ok(_) => Some(()),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Some(()),
            Err(e) if e.is_transient() => None,
            Err(e) => panic!("removing {leader_id}: {e}"),
        }
    })
    .await;
    // The operator stops the removed coordinator.
    cluster.nodes[leader].terminate();
    let expected: Vec<(u64, String, bool)> = cluster
        .live()
        .into_iter()
        .map(|i| (i as u64 + 1, cluster.nodes[i].url.clone(), true))
        .collect();
    cluster
        .wait_for_peers("three voters without the removed leader", |view| {
            *view == expected
        })
        .await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let job = eventually("a write after the hand-over", || async {
        client.submit_job(&echo_job(), Some("after")).await.ok()
    })
    .await;
    let promoted = cluster.nodes[3].client();
    eventually("the job on the promoted node", || async {
        promoted.get_job(&job.id).await.ok()
    })
    .await;
}

/// Host liveness lives in the leader's memory: a new leader must notice on
/// its own that a host died together with the old leader, and requeue its job.
#[tokio::test]
async fn a_new_leader_marks_a_host_that_died_with_the_old_one_down() {
    let mut cluster = Cluster::start(3, 3, &["--host-ttl-ms", "2000"]).await;
    let (_log_dir, log) = common::execution_log();
    let mut hosts: Vec<Host> = (0..2)
        .map(|i| {
            Host::start(
                &cluster.urls(),
                &cluster.tmp.path().join(format!("host{i}")),
                "sh",
                &[],
            )
        })
        .collect();
    let client = cluster.client();
    let mut ids = Vec::new();
    for host in &hosts {
        ids.push(host.id().await);
        host_up(&client, ids.last().unwrap()).await;
    }
    let job = client
        .submit_job(&marked_job_pausing(&log, 1, Some("3")), None)
        .await
        .unwrap();
    let running_on = eventually("the job to run", || async {
        let j = client.get_job(&job.id).await.ok()?;
        (j.status == JobStatus::Running && !executions(&log).is_empty()).then_some(j.host_id?)
    })
    .await;
    let dead = ids.iter().position(|id| *id == running_on).unwrap();
    let alive = 1 - dead;

    let leader = cluster.leader().await;
    hosts[dead].kill9();
    cluster.nodes[leader].kill9();
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);

    let done = wait_terminal(&client, &job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.host_id.as_deref(),
        Some(ids[alive].as_str()),
        "{done:?}"
    );
    assert_eq!(done.attempts, 2, "{done:?}");
    let list = cluster.nodes[new_leader]
        .client()
        .list_hosts()
        .await
        .unwrap();
    let status = |id: &str| list.hosts.iter().find(|h| h.id == id).unwrap().status;
    assert_eq!(status(&ids[dead]), skyclaw_api::hosts::HostStatus::Down);
    assert_eq!(status(&ids[alive]), skyclaw_api::hosts::HostStatus::Up);
}
