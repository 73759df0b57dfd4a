//! Jobs in the replicated state: enqueueing, why queued ones wait, queue
//! timeouts, leasing, renewing, completing, cancelling, and leases lost with
//! their host or expired.

use rusqlite::{Connection, OptionalExtension, params};
use skyclaw_api::Millis;
use skyclaw_api::hosts::{HeldLease, HostStatus, Outcome};
use skyclaw_api::jobs::{Job, JobResult, JobSpec, JobStatus};

use super::apply::{CommandResult, Effects};
use super::command::{CommandError, Granted, Leases, Output, Owner};
use super::read::{self, JobRow};

/// A running job whose host is gone: queued again while attempts remain,
/// failed with the reason once they are spent.
pub(super) fn lose_lease(
    conn: &Connection,
    row: &JobRow,
    reason: &str,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<()> {
    let job = &row.job;
    let max_attempts = job.spec.max_attempts();
    if job.attempts < max_attempts {
        set_status(conn, &job.id, JobStatus::Queued, None, Token::Clear, now)?;
        effects.jobs_queued = true;
    } else {
        let result = JobResult::error(format!(
            "{reason}; gave up after {} of {max_attempts} attempts",
            job.attempts
        ));
        set_status(
            conn,
            &job.id,
            JobStatus::Failed,
            Some(&result),
            Token::Clear,
            now,
        )?;
        effects.finished.push(job.id.clone());
    }
    Ok(())
}

/// What becomes of a job's lease token when it leaves `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// Its host reported the end: the token stays, so the same report sent
    /// again is recognised as recorded.
    Keep,
    /// The lease was lost or the job cancelled: a report still under way is
    /// stale.
    Clear,
}

/// Moves a job out of `running` (or `queued`), ending its lease. A job
/// queued again has no waiting reason until the leader finds one, and its
/// queue timeout starts over.
fn set_status(
    conn: &Connection,
    id: &str,
    status: JobStatus,
    result: Option<&JobResult>,
    token: Token,
    now: Millis,
) -> rusqlite::Result<()> {
    let result = result.map(|r| serde_json::to_string(r).expect("wire types serialise"));
    conn.prepare_cached(
        "UPDATE jobs SET status = ?2, result = COALESCE(?3, result),
                lease_token = CASE WHEN ?4 THEN NULL ELSE lease_token END,
                lease_expires_at = NULL, updated_at = ?5, waiting_reason = NULL,
                queue_deadline = CASE WHEN ?2 = 'queued' THEN ?5 + queue_timeout_ms END
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        status.as_str(),
        result,
        token == Token::Clear,
        now
    ])?;
    Ok(())
}

/// What an `EnqueueJob` carries.
pub(super) struct Enqueue<'a> {
    pub(super) id: &'a str,
    pub(super) spec: &'a JobSpec,
    pub(super) owner: &'a Owner,
    pub(super) now: Millis,
    pub(super) waiting_reason: Option<&'a str>,
}

pub(super) fn enqueue_job(
    conn: &Connection,
    job: Enqueue<'_>,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let Enqueue {
        id,
        spec,
        owner,
        now,
        waiting_reason,
    } = job;
    let queue_timeout = spec.queue_timeout_ms();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO jobs (id, status, kind, spec, owner, attempts, max_attempts,
                               created_at, updated_at, waiting_reason, queue_timeout_ms,
                               queue_deadline)
             VALUES (?1, 'queued', ?2, ?3, ?4, 0, ?5, ?6, ?6, ?7, ?8, ?6 + ?8)
             ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            id,
            spec.kind(),
            serde_json::to_string(spec).expect("wire types serialise"),
            owner.as_column(),
            spec.max_attempts(),
            now,
            waiting_reason,
            queue_timeout,
        ])?;
    if inserted == 0 {
        return Ok(Err(CommandError::Conflict(format!(
            "job {id} exists already"
        ))));
    }
    effects.jobs_queued = true;
    Ok(Ok(Output::Job(Box::new(Job {
        id: id.to_string(),
        status: JobStatus::Queued,
        spec: spec.clone(),
        attempts: 0,
        host_id: None,
        created_at: now,
        updated_at: now,
        result: None,
        waiting_reason: waiting_reason.map(str::to_string),
    }))))
}

pub(super) fn set_waiting_reasons(
    conn: &Connection,
    reasons: &[(String, Option<String>)],
) -> rusqlite::Result<CommandResult> {
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs SET waiting_reason = ?2 WHERE id = ?1 AND status = 'queued'",
    )?;
    let mut changed = 0;
    for (id, reason) in reasons {
        changed += stmt.execute(params![id, reason])?;
    }
    Ok(Ok(Output::Count(changed as u64)))
}

/// Fails each named job that is still queued past its queue deadline; the
/// deadline is checked here, so a job leased or requeued since the proposer
/// looked is left alone.
pub(super) fn fail_queued(
    conn: &Connection,
    jobs: &[(String, String)],
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let mut overdue = conn.prepare_cached(
        "SELECT 1 FROM jobs WHERE id = ?1 AND status = 'queued' AND queue_deadline <= ?2",
    )?;
    let mut failed = 0;
    for (id, reason) in jobs {
        if overdue.exists(params![id, now])? {
            let result = JobResult::error(reason.clone());
            set_status(
                conn,
                id,
                JobStatus::Failed,
                Some(&result),
                Token::Clear,
                now,
            )?;
            effects.finished.push(id.clone());
            failed += 1;
        }
    }
    Ok(Ok(Output::Count(failed)))
}

pub(super) fn lease_jobs(
    conn: &Connection,
    host_id: &str,
    leases: &[(String, String)],
    expires_at: Millis,
    now: Millis,
) -> rusqlite::Result<CommandResult> {
    let up = read::host(conn, host_id)?.is_some_and(|h| h.status == HostStatus::Up);
    if !up {
        return Ok(Err(CommandError::HostNotRegistered(format!(
            "host {host_id} is not registered or was marked down; register again"
        ))));
    }
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, host_id = ?2,
                lease_token = ?3, lease_expires_at = ?4, updated_at = ?5,
                waiting_reason = NULL, queue_deadline = NULL
         WHERE id = ?1 AND status = 'queued'
         RETURNING attempts",
    )?;
    let mut granted = Vec::with_capacity(leases.len());
    for (job_id, token) in leases {
        let params = params![job_id, host_id, token, expires_at, now];
        // None: taken, cancelled or gone since the proposer looked.
        if let Some(attempts) = stmt.query_row(params, |r| r.get(0)).optional()? {
            granted.push(Granted {
                job_id: job_id.clone(),
                lease_token: token.clone(),
                attempts,
            });
        }
    }
    Ok(Ok(Output::Leased(Leases {
        host_id: host_id.to_string(),
        expires_at,
        granted_at: now,
        granted,
    })))
}

pub(super) fn renew_leases(
    conn: &Connection,
    host_id: &str,
    leases: &[HeldLease],
    expires_at: Millis,
) -> rusqlite::Result<CommandResult> {
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs SET lease_expires_at = MAX(lease_expires_at, ?4)
         WHERE id = ?1 AND status = 'running' AND host_id = ?2 AND lease_token = ?3",
    )?;
    let mut stop = Vec::new();
    for lease in leases {
        if stmt.execute(params![
            lease.job_id,
            host_id,
            lease.lease_token,
            expires_at
        ])? == 0
        {
            stop.push(lease.job_id.clone());
        }
    }
    Ok(Ok(Output::Stop(stop)))
}

/// Records the end of a job's current lease. A completion is idempotent by
/// its lease: the first one under a lease is recorded, and the same lease
/// reported again is answered as recorded, changing nothing.
pub(super) fn complete_job(
    conn: &Connection,
    job_id: &str,
    lease_token: &str,
    outcome: Outcome,
    result: &JobResult,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let Some(job) = read::lease_state(conn, job_id)? else {
        return Ok(Err(CommandError::NotFound(format!("no job {job_id}"))));
    };
    if job.lease_token.as_deref() != Some(lease_token) {
        return Ok(Err(CommandError::StaleLease(format!(
            "lease {lease_token} on job {job_id} is no longer current (the job is {})",
            job.status
        ))));
    }
    if job.status != JobStatus::Running {
        return Ok(Ok(Output::Done));
    }
    let (status, result) = match outcome {
        Outcome::Succeeded => (JobStatus::Succeeded, Some(result)),
        Outcome::Failed => (JobStatus::Failed, Some(result)),
        Outcome::Abandoned if job.attempts < job.max_attempts => (JobStatus::Queued, None),
        Outcome::Abandoned => (JobStatus::Failed, Some(result)),
    };
    set_status(conn, job_id, status, result, Token::Keep, now)?;
    if status == JobStatus::Queued {
        effects.jobs_queued = true;
    } else {
        effects.finished.push(job_id.to_string());
    }
    Ok(Ok(Output::Done))
}

pub(super) fn cancel_job(
    conn: &Connection,
    job_id: &str,
    owner: &Owner,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let row = read::job(conn, job_id)?;
    let Some(row) = row.filter(|r| *owner == Owner::Token || r.owner == owner.as_column()) else {
        return Ok(Err(CommandError::NotFound(format!("no job {job_id}"))));
    };
    if row.job.status.is_terminal() {
        return Ok(Err(CommandError::Conflict(format!(
            "job {job_id} {}",
            row.job.status.already()
        ))));
    }
    let result = JobResult::error(format!("cancelled while {}", row.job.status));
    set_status(
        conn,
        job_id,
        JobStatus::Cancelled,
        Some(&result),
        Token::Clear,
        now,
    )?;
    effects.finished.push(job_id.to_string());
    let mut job = row.job;
    job.status = JobStatus::Cancelled;
    job.result = Some(result);
    job.updated_at = now;
    Ok(Ok(Output::Job(Box::new(job))))
}

pub(super) fn expire_leases(
    conn: &Connection,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let rows = read::expired_leases(conn, now)?;
    for row in &rows {
        let host = row.job.host_id.as_deref().unwrap_or("?");
        let reason = format!("lease expired: host {host} stopped renewing it");
        lose_lease(conn, row, &reason, now, effects)?;
    }
    Ok(Ok(Output::Count(rows.len() as u64)))
}
#[cfg(test)]
mod tests {
    use skyclaw_api::hosts::{HeldLease, Outcome};
    use skyclaw_api::jobs::{JobResult, JobStatus};

    use crate::state::read;
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
        let row = read::job(&conn, "j1").unwrap().unwrap();
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
        let row = read::job(&conn, "j1").unwrap().unwrap();
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
            read::queue_overdue(&conn, now, 10)
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
        let row = read::job(&conn, "j1").unwrap().unwrap();
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
}
