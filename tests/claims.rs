//! Claims and leases when things go wrong between a host and the cluster: a
//! claim abandoned while its lease is being proposed, a claim replayed after
//! its leases moved on, a host re-registering while it runs jobs.

mod common;

use std::time::Duration;

use common::{Coordinator, eventually, fake_host, keep_alive};
use skyclaw_api::hosts::Claim;
use skyclaw_api::jobs::{JobSpec, JobStatus};

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
    let coordinator = Coordinator::start(
        &tmp.path().join("coord"),
        &["--lease-ms", "1000", "--host-ttl-ms", "1000"],
    )
    .await;
    let client = coordinator.client();
    client
        .register_host(&fake_host("h-abandons", &["shell"]))
        .await
        .unwrap();
    let _beats = keep_alive(&client, "h-abandons", HEARTBEAT);
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
