//! Claims, leases and long-polls when things go wrong between a host or a
//! client and the cluster: a claim abandoned while its lease is being
//! proposed, a claim replayed after its leases moved on, attempts of one
//! claim racing, waits abandoned by their clients, a leader dying while a
//! host runs a job.

use crate::common;

use std::time::Duration;

use common::{
    Cluster, Coordinator, Host, eventually, execution_log, host_up, live_fake_host, metric,
    wait_status, wait_terminal,
};
use skyclaw_api::ErrorCode;
use skyclaw_api::hosts::Claim;
use skyclaw_api::jobs::{JobSpec, JobStatus};

/// Leases and a host TTL of a second: expiries and verdicts come soon.
const SHORT_LEASES: [&str; 4] = ["--lease-ms", "1000", "--host-ttl-ms", "1000"];
/// How often the tests' fake hosts heartbeat: five times per host TTL.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// How long a test's client waits for a claim it then abandons.
const ABANDON_AFTER: Duration = Duration::from_millis(500);

fn true_job() -> JobSpec {
    serde_json::from_value(serde_json::json!({"kind": "shell", "command": "true"}))
        .expect("valid spec")
}

/// A claim whose client gives up while the lease proposal waits must not
/// keep the job reserved: once that lease expires the job is leased again.
#[tokio::test]
async fn a_claim_abandoned_mid_proposal_leaves_its_jobs_claimable() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &SHORT_LEASES).await;
    let client = coordinator.client();
    let _beats = live_fake_host(&client, "h-abandons", HEARTBEAT).await;
    let job = client.submit_job(&true_job(), None).await.unwrap();

    let claim = Claim {
        max_jobs: 1,
        wait_ms: 0,
    };
    {
        // The lease commits to the log but cannot apply while the database
        // is held, so the claim is still waiting on it when its client goes.
        let _held = coordinator.hold_state_database();
        let abandoned = tokio::time::timeout(
            ABANDON_AFTER,
            client.claim("h-abandons", &claim, "abandoned-claim"),
        )
        .await;
        assert!(abandoned.is_err(), "the claim answered: {abandoned:?}");
    }
    // The claim's handler went with its client, and its reservation with it.
    eventually("the abandoned claim's reservation to be released", || {
        let url = coordinator.url.clone();
        async move {
            let reserved = metric(&url, "skyclaw_claims_reserved_jobs").await;
            (reserved == Some(0.0)).then_some(())
        }
    })
    .await;

    // The abandoned lease applies, nobody renews it, it expires, and the
    // job is queued again: a new claim gets it.
    let mut attempt = 0;
    let leased = eventually("the job to be leased again", || {
        attempt += 1;
        let key = format!("claim-{attempt}");
        let (client, claim) = (client.clone(), claim.clone());
        async move {
            let claimed = client.claim("h-abandons", &claim, &key).await.unwrap();
            claimed.jobs.into_iter().next()
        }
    })
    .await;
    assert_eq!(leased.job.id, job.id);
    assert_eq!(leased.job.status, JobStatus::Running);
    assert_eq!(leased.job.attempts, 2, "{:?}", leased.job);
}

/// A host whose claim answer was lost and who was marked down meanwhile
/// gets nothing back under that claim's key: not while it is down, and
/// after it registers again not the job its lost lease named, which another
/// host now runs.
#[tokio::test]
async fn a_replayed_claim_hands_out_only_leases_the_host_still_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &SHORT_LEASES).await;
    let client = coordinator.client();
    let partitioned = live_fake_host(&client, "h-partitioned", HEARTBEAT).await;
    let job = client.submit_job(&true_job(), None).await.unwrap();
    let claim = Claim {
        max_jobs: 1,
        wait_ms: 0,
    };
    let lost = client
        .claim("h-partitioned", &claim, "lost-answer")
        .await
        .unwrap();
    assert_eq!(lost.jobs.len(), 1, "{lost:?}");

    // The host falls silent past its TTL: it is marked down and the job is
    // queued again, then leased to another host.
    partitioned.abort();
    wait_status(&client, &job.id, JobStatus::Queued).await;
    let _other = live_fake_host(&client, "h-other", HEARTBEAT).await;
    let taken = client.claim("h-other", &claim, "other").await.unwrap();
    assert_eq!(taken.jobs.len(), 1, "{taken:?}");
    assert_eq!(taken.jobs[0].job.id, job.id);

    let refused = client
        .claim("h-partitioned", &claim, "lost-answer")
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::HostNotRegistered),
        "{refused}"
    );
    let _back = live_fake_host(&client, "h-partitioned", HEARTBEAT).await;
    let replayed = client
        .claim("h-partitioned", &claim, "lost-answer")
        .await
        .unwrap();
    assert!(
        replayed.jobs.is_empty(),
        "a dead lease handed out: {replayed:?}"
    );
    let running = client.get_job(&job.id).await.unwrap();
    assert_eq!(running.host_id.as_deref(), Some("h-other"), "{running:?}");
}

/// Two attempts of one claim (the same key) in flight at once pick
/// different jobs; the one that applies second replays the first one's
/// grants, and both answer those grants, so no job is left running on a
/// lease nobody was told of.
#[tokio::test]
async fn attempts_of_one_claim_all_answer_the_grants_that_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let _beats = live_fake_host(&client, "h-retries", HEARTBEAT).await;
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(client.submit_job(&true_job(), None).await.unwrap());
    }
    let claim = Claim {
        max_jobs: 2,
        wait_ms: 0,
    };
    let attempt = |client: &skyclaw_api::Client| {
        let (client, claim) = (client.clone(), claim.clone());
        tokio::spawn(async move { client.claim("h-retries", &claim, "retried").await })
    };
    let reserved = |count: f64| {
        let url = coordinator.url.clone();
        async move {
            let now = metric(&url, "skyclaw_claims_reserved_jobs").await;
            (now == Some(count)).then_some(())
        }
    };

    let (first, second) = {
        // The first attempt's lease cannot apply while the database is
        // held, and the second one's waits behind it: the second attempt
        // starts once the first reserved its jobs, and picks others.
        let _held = coordinator.hold_state_database();
        let first = attempt(&client);
        eventually("the first attempt to reserve two jobs", || reserved(2.0)).await;
        let second = attempt(&client);
        eventually("the second attempt to reserve two more", || reserved(4.0)).await;
        (first, second)
    };
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    let leases = |claimed: &skyclaw_api::hosts::Claimed| {
        let mut leases: Vec<_> = claimed
            .jobs
            .iter()
            .map(|l| (l.job.id.clone(), l.lease_token.clone()))
            .collect();
        leases.sort();
        leases
    };
    assert_eq!(leases(&first).len(), 2, "{first:?}");
    assert_eq!(leases(&first), leases(&second));
    for job in &jobs {
        let job = client.get_job(&job.id).await.unwrap();
        let granted = leases(&first).iter().any(|(id, _)| *id == job.id);
        let expected = if granted {
            JobStatus::Running
        } else {
            JobStatus::Queued
        };
        assert_eq!(job.status, expected, "{job:?}");
    }
}

/// Waits whose clients give up leave nothing behind on the coordinator.
#[tokio::test]
async fn abandoned_waits_leave_no_watch_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    // No host: the job stays queued, and every wait on it waits.
    let job = client.submit_job(&true_job(), None).await.unwrap();
    let waits = 20;
    let mut abandoned = Vec::new();
    for _ in 0..waits {
        let (client, id) = (client.clone(), job.id.clone());
        abandoned.push(tokio::spawn(async move {
            let wait = client.wait_job_once(&id, Duration::from_secs(60));
            tokio::time::timeout(ABANDON_AFTER, wait).await.is_err()
        }));
    }
    eventually("the waits to be watching", || async {
        (metric(&coordinator.url, "skyclaw_job_waiters").await == Some(waits as f64)).then_some(())
    })
    .await;
    for wait in abandoned {
        assert!(
            wait.await.unwrap(),
            "the wait answered before it was abandoned"
        );
    }
    eventually("the abandoned watches to be gone", || async {
        (metric(&coordinator.url, "skyclaw_job_waiters").await == Some(0.0)).then_some(())
    })
    .await;
}

/// A leader dies while a host runs a job that may run only once, under
/// leases and a host TTL shorter than the election: the new leader neither
/// takes the host's re-registration for a restart nor expires the lease it
/// could not renew meanwhile, and the job succeeds, once.
#[tokio::test]
async fn a_leader_change_while_a_host_runs_a_one_attempt_job_runs_it_once() {
    let timing = ["--host-ttl-ms", "1000", "--lease-ms", "1000"];
    let mut cluster = Cluster::start(3, 3, &timing).await;
    let tmp = tempfile::tempdir().unwrap();
    let host = Host::start(&cluster.urls(), &tmp.path().join("host"), "sh", &[]);
    let client = cluster.client();
    host_up(&client, &host.id().await).await;
    let (_log_dir, log) = execution_log();
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "kind": "shell", "command": "sh", "max_attempts": 1,
        "args": ["-c", "echo ran >> \"$LOG\"; sleep 4"],
        "env": {"LOG": log},
    }))
    .unwrap();
    let job = client.submit_job(&spec, None).await.unwrap();
    wait_status(&client, &job.id, JobStatus::Running).await;

    let leader = cluster.leader().await;
    cluster.nodes[leader].kill9();
    let done = wait_terminal(&client, &job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 1, "{done:?}");
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs, "ran\n", "the job ran once");
}
