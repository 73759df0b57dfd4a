//! Unit tests of the jobs commands' effects, applied to a fresh state database.

use skyclaw_api::hosts::{HeldLease, Outcome};
use skyclaw_api::jobs::{JobResult, JobStatus};

use crate::state::testkit::*;
use crate::state::{Command, CommandError, Effects, Output, Owner};

#[test]
fn a_job_is_leased_once_and_completed_once() {
    let conn = db();
    run(&conn, host("h1"));
    run(&conn, host("h2"));
    enqueue(&conn, "j1", 3);
    assert_eq!(lease(&conn, "h1", "j1", "t1", 100), 1);
    assert_eq!(lease(&conn, "h2", "j1", "t2", 100), 0, "already leased");
    assert_eq!(status(&conn, "j1"), (JobStatus::Running, 1));
    assert!(matches!(
        complete(&conn, "j1", "t2"),
        Err(CommandError::StaleLease(_))
    ));
    let done = run(
        &conn,
        Command::CompleteJob {
            job_id: "j1".into(),
            lease_token: "t1".into(),
            outcome: Outcome::Succeeded,
            result: JobResult::default(),
            now: 9,
        },
    );
    assert_eq!(done.effects.finished, ["j1"]);
    // The same lease reported again, even with another outcome, is
    // answered as recorded and changes nothing.
    let again = run(
        &conn,
        Command::CompleteJob {
            job_id: "j1".into(),
            lease_token: "t1".into(),
            outcome: Outcome::Failed,
            result: JobResult::error("late"),
            now: 10,
        },
    );
    assert_eq!(again.outcome, Ok(Output::Done));
    assert_eq!(again.effects, Effects::default());
    let row = super::get(&conn, "j1").unwrap().unwrap();
    assert_eq!(
        (row.job.status, row.job.updated_at),
        (JobStatus::Succeeded, 9)
    );
    assert_eq!(row.job.result.unwrap().error, None);
}

#[test]
fn a_completion_is_stale_once_its_lease_was_lost_or_replaced() {
    let conn = db();
    run(&conn, host("h1"));
    enqueue(&conn, "j1", 3);
    // Lost to expiry: requeued, and the old lease's report is stale.
    lease(&conn, "h1", "j1", "t1", 100);
    run(&conn, Command::ExpireLeases { now: 101 });
    assert!(matches!(
        complete(&conn, "j1", "t1"),
        Err(CommandError::StaleLease(_))
    ));
    // Given back: requeued; the same report again is answered as
    // recorded until another lease replaces it.
    lease(&conn, "h1", "j1", "t2", 200);
    let abandon = Command::CompleteJob {
        job_id: "j1".into(),
        lease_token: "t2".into(),
        outcome: Outcome::Abandoned,
        result: JobResult::error("shutting down"),
        now: 150,
    };
    assert!(run(&conn, abandon.clone()).effects.jobs_queued);
    assert_eq!(status(&conn, "j1"), (JobStatus::Queued, 2));
    let again = run(&conn, abandon.clone());
    assert_eq!(
        (again.outcome, again.effects),
        (Ok(Output::Done), Effects::default())
    );
    lease(&conn, "h1", "j1", "t3", 300);
    assert!(matches!(
        run(&conn, abandon).outcome,
        Err(CommandError::StaleLease(_))
    ));
    assert_eq!(status(&conn, "j1"), (JobStatus::Running, 3));
}

#[test]
fn lost_leases_requeue_until_attempts_run_out() {
    let conn = db();
    run(&conn, host("h1"));
    enqueue(&conn, "j1", 2);
    lease(&conn, "h1", "j1", "t1", 100);
    run(&conn, Command::ExpireLeases { now: 50 });
    assert_eq!(
        status(&conn, "j1"),
        (JobStatus::Running, 1),
        "not yet expired"
    );
    run(&conn, Command::ExpireLeases { now: 101 });
    assert_eq!(status(&conn, "j1"), (JobStatus::Queued, 1));
    lease(&conn, "h1", "j1", "t2", 200);
    let down = run(
        &conn,
        Command::HostDown {
            host_id: "h1".into(),
            incarnation: "first".into(),
            now: 150,
        },
    );
    assert_eq!(down.effects.finished, ["j1"]);
    let row = super::get(&conn, "j1").unwrap().unwrap();
    assert_eq!(row.job.status, JobStatus::Failed);
    let error = row.job.result.unwrap().error.unwrap();
    assert!(
        error.contains("stopped heartbeating") && error.contains("2 of 2"),
        "{error}"
    );
    // A down host can no longer take leases.
    enqueue(&conn, "j2", 1);
    assert!(matches!(
        run(
            &conn,
            Command::LeaseJobs {
                host_id: "h1".into(),
                leases: vec![("j2".into(), "t".into())],
                expires_at: 1,
                now: 1
            }
        )
        .outcome,
        Err(CommandError::HostNotRegistered(_))
    ));
}

#[test]
fn renewals_name_the_leases_a_host_must_stop() {
    let conn = db();
    run(&conn, host("h1"));
    enqueue(&conn, "j1", 1);
    enqueue(&conn, "j2", 1);
    lease(&conn, "h1", "j1", "t1", 100);
    lease(&conn, "h1", "j2", "t2", 100);
    run(
        &conn,
        Command::CancelJob {
            job_id: "j2".into(),
            owner: Owner::Token,
            now: 5,
        },
    );
    let held = vec![
        HeldLease {
            job_id: "j1".into(),
            lease_token: "t1".into(),
        },
        HeldLease {
            job_id: "j2".into(),
            lease_token: "t2".into(),
        },
    ];
    let renewed = run(
        &conn,
        Command::RenewLeases {
            host_id: "h1".into(),
            leases: held,
            expires_at: 500,
        },
    );
    assert_eq!(renewed.outcome, Ok(Output::Stop(vec!["j2".into()])));
    run(&conn, Command::ExpireLeases { now: 400 });
    assert_eq!(
        status(&conn, "j1").0,
        JobStatus::Running,
        "renewed past 400"
    );
}

#[test]
fn waiting_reasons_are_kept_only_while_queued() {
    let conn = db();
    run(&conn, host("h1"));
    let spec = serde_json::json!({"kind": "shell", "command": "echo"});
    enqueue_with(
        &conn,
        "j1",
        spec.clone(),
        Some("no live host offers capability gpu"),
    );
    enqueue_with(&conn, "j2", spec, None);
    assert_eq!(
        waiting_reason(&conn, "j1").as_deref(),
        Some("no live host offers capability gpu")
    );
    let set = run(
        &conn,
        Command::SetWaitingReasons {
            reasons: vec![
                ("j1".into(), None),
                ("j2".into(), Some("no host is live".into())),
            ],
        },
    );
    assert_eq!(set.outcome, Ok(Output::Count(2)));
    assert_eq!(waiting_reason(&conn, "j1"), None);
    assert_eq!(
        waiting_reason(&conn, "j2").as_deref(),
        Some("no host is live")
    );
    lease(&conn, "h1", "j2", "t1", 100);
    assert_eq!(
        waiting_reason(&conn, "j2"),
        None,
        "a leased job waits for nothing"
    );
    let late = run(
        &conn,
        Command::SetWaitingReasons {
            reasons: vec![("j2".into(), Some("stale".into()))],
        },
    );
    assert_eq!(
        late.outcome,
        Ok(Output::Count(0)),
        "only queued jobs take one"
    );
}

#[test]
fn queue_timeouts_fail_jobs_still_queued_and_start_over_on_requeue() {
    let conn = db();
    run(&conn, host("h1"));
    let spec = serde_json::json!({"kind": "shell", "command": "echo", "queue_timeout_ms": 10});
    enqueue_with(&conn, "j1", spec.clone(), None);
    enqueue_with(&conn, "j2", spec, None);
    // Queued at 2 with 10 ms to wait: overdue from 12 on.
    let overdue = |now| {
        super::queue_overdue(&conn, now, 10)
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect::<Vec<_>>()
    };
    assert!(overdue(11).is_empty());
    assert_eq!(overdue(12), ["j1", "j2"]);
    lease(&conn, "h1", "j2", "t1", 100);
    assert_eq!(overdue(12), ["j1"], "a leased job is not waiting");
    let fail = |now| Command::FailQueued {
        jobs: vec![
            ("j1".into(), "no live host offers capability gpu".into()),
            ("j2".into(), "no live host offers capability gpu".into()),
        ],
        now,
    };
    let early = run(&conn, fail(11));
    assert_eq!(early.outcome, Ok(Output::Count(0)), "not yet overdue");
    let failed = run(&conn, fail(12));
    assert_eq!(failed.outcome, Ok(Output::Count(1)));
    assert_eq!(failed.effects.finished, ["j1"]);
    let row = super::get(&conn, "j1").unwrap().unwrap();
    assert_eq!(row.job.status, JobStatus::Failed);
    assert_eq!(
        row.job.result.unwrap().error.as_deref(),
        Some("no live host offers capability gpu")
    );
    assert_eq!(status(&conn, "j2"), (JobStatus::Running, 1));
    // Its lease lost at 101, j2 waits in the queue again for 10 ms.
    run(&conn, Command::ExpireLeases { now: 101 });
    assert!(overdue(110).is_empty());
    assert_eq!(overdue(111), ["j2"]);
}

#[test]
fn keys_cancel_only_their_own_jobs() {
    let conn = db();
    enqueue(&conn, "j1", 1);
    let by_key = run(
        &conn,
        Command::CancelJob {
            job_id: "j1".into(),
            owner: Owner::ApiKey("k".into()),
            now: 3,
        },
    );
    assert!(matches!(by_key.outcome, Err(CommandError::NotFound(_))));
    let by_token = run(
        &conn,
        Command::CancelJob {
            job_id: "j1".into(),
            owner: Owner::Token,
            now: 3,
        },
    );
    assert_eq!(by_token.effects.finished, ["j1"]);
    let twice = run(
        &conn,
        Command::CancelJob {
            job_id: "j1".into(),
            owner: Owner::Token,
            now: 4,
        },
    );
    assert!(matches!(twice.outcome, Err(CommandError::Conflict(_))));
}
