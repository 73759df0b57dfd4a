//! `apply`: the one deterministic function that turns a proposal into SQLite
//! writes. It runs inside the caller's transaction; the caller commits it
//! together with the applied index, so a crash never applies a proposal twice.

use rusqlite::{Connection, OptionalExtension, params};
use skyclaw_api::Millis;
use skyclaw_api::apikeys::Scope;
use skyclaw_api::artifacts::{ArtifactKind, Digest};
use skyclaw_api::hosts::{HeldLease, HostStatus, Outcome, RegisterHost};
use skyclaw_api::jobs::{Job, JobResult, JobSpec, JobStatus};

use super::command::{
    COMMAND_ENCODING, Command, CommandError, Granted, IdempotencyRecord, Leases, Output, Owner,
    Proposal,
};
use super::read::{self, JobRow};

/// What applying one proposal produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub outcome: Result<Output, CommandError>,
    /// True when the outcome was recorded earlier under the same idempotency key
    /// and nothing was applied now.
    pub replayed: bool,
    pub effects: Effects,
}

/// What changed, so the node can wake waiters once the batch is durable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Jobs became claimable.
    pub jobs_queued: bool,
    /// Jobs that reached a terminal status.
    pub finished: Vec<String>,
}

impl Effects {
    pub fn merge(&mut self, other: Effects) {
        self.jobs_queued |= other.jobs_queued;
        self.finished.extend(other.finished);
    }
}

/// A command's answer: its output, or why it was refused.
type CommandResult = Result<Output, CommandError>;

/// Applies one proposal. `Err` is a storage fault (the batch must be abandoned);
/// a refused command is `Ok` with an `Err` outcome and writes nothing but its
/// idempotency record.
pub fn apply(conn: &Connection, proposal: &Proposal) -> rusqlite::Result<Applied> {
    if let Some(record) = &proposal.idempotency
        && let Some(outcome) = read::recorded_outcome(conn, record)?
    {
        return Ok(Applied {
            outcome,
            replayed: true,
            effects: Effects::default(),
        });
    }
    savepoint(conn, "SAVEPOINT command")?;
    let mut effects = Effects::default();
    let outcome = match apply_command(conn, &proposal.command, &mut effects) {
        Ok(outcome) => outcome,
        Err(e) => {
            savepoint(conn, "ROLLBACK TO command")?;
            savepoint(conn, "RELEASE command")?;
            return Err(e);
        }
    };
    if outcome.is_err() {
        savepoint(conn, "ROLLBACK TO command")?;
        effects = Effects::default();
    }
    savepoint(conn, "RELEASE command")?;
    if let Some(record) = &proposal.idempotency {
        remember(conn, record, &outcome)?;
    }
    Ok(Applied {
        outcome,
        replayed: false,
        effects,
    })
}

/// Runs a savepoint statement; prepared once, as it runs for every command.
fn savepoint(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn remember(
    conn: &Connection,
    record: &IdempotencyRecord,
    outcome: &CommandResult,
) -> rusqlite::Result<()> {
    let outcome = serde_json::to_string(outcome).expect("outcomes serialise");
    conn.prepare_cached(
        "INSERT INTO idempotency (principal, key, request_hash, outcome, created_at, encoding)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        record.principal,
        record.key,
        record.request_hash,
        outcome,
        record.now,
        COMMAND_ENCODING
    ])?;
    Ok(())
}

fn apply_command(
    conn: &Connection,
    command: &Command,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    match command {
        Command::RegisterHost { host, now } => register_host(conn, host, *now, effects),
        Command::HostDown {
            host_id,
            incarnation,
            now,
        } => host_down(conn, host_id, incarnation, *now, effects),
        Command::EnqueueJob {
            id,
            spec,
            owner,
            now,
            waiting_reason,
        } => enqueue_job(
            conn,
            Enqueue {
                id,
                spec,
                owner,
                now: *now,
                waiting_reason: waiting_reason.as_deref(),
            },
            effects,
        ),
        Command::SetWaitingReasons { reasons } => set_waiting_reasons(conn, reasons),
        Command::FailQueued { jobs, now } => fail_queued(conn, jobs, *now, effects),
        Command::LeaseJobs {
            host_id,
            leases,
            expires_at,
            now,
        } => lease_jobs(conn, host_id, leases, *expires_at, *now),
        Command::RenewLeases {
            host_id,
            leases,
            expires_at,
        } => renew_leases(conn, host_id, leases, *expires_at),
        Command::CompleteJob {
            job_id,
            lease_token,
            outcome,
            result,
            now,
        } => complete_job(conn, job_id, lease_token, *outcome, result, *now, effects),
        Command::CancelJob { job_id, owner, now } => cancel_job(conn, job_id, owner, *now, effects),
        Command::ExpireLeases { now } => expire_leases(conn, *now, effects),
        Command::CreateApiKey {
            id,
            name,
            scopes,
            key_hash,
            now,
        } => create_api_key(conn, id, name, scopes, key_hash, *now),
        Command::RevokeApiKey { id, now } => revoke_api_key(conn, id, *now),
        Command::PruneIdempotency { before } => {
            let n = conn
                .prepare_cached("DELETE FROM idempotency WHERE created_at < ?1")?
                .execute([before])?;
            Ok(Ok(Output::Count(n as u64)))
        }
        Command::AddArtifact {
            digest,
            size,
            kind,
            now,
        } => add_artifact(conn, digest, *size, *kind, *now),
    }
}

fn register_host(
    conn: &Connection,
    host: &RegisterHost,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    // The same running daemon registering again (it lost touch, or a leader
    // change made a coordinator forget it) keeps its jobs. Any other
    // registration is a restart: the jobs it ran are gone with the process.
    let same_daemon = !host.incarnation.is_empty()
        && read::host(conn, &host.host_id)?.is_some_and(|known| {
            known.status == HostStatus::Up && known.registration.incarnation == host.incarnation
        });
    if !same_daemon {
        let reason = format!("host {} restarted while running the job", host.host_id);
        for row in read::running_jobs_of_host(conn, &host.host_id)? {
            lose_lease(conn, &row, &reason, now, effects)?;
        }
    }
    conn.prepare_cached(
        "INSERT INTO hosts (id, registration, status, registered_at, updated_at)
         VALUES (?1, ?2, 'up', ?3, ?3)
         ON CONFLICT (id) DO UPDATE SET registration = ?2, status = 'up', updated_at = ?3",
    )?
    .execute(params![
        host.host_id,
        serde_json::to_string(host).expect("wire types serialise"),
        now
    ])?;
    Ok(Ok(Output::Done))
}

fn host_down(
    conn: &Connection,
    host_id: &str,
    incarnation: &str,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let registered = read::host(conn, host_id)?.map(|h| h.registration.incarnation);
    if !incarnation.is_empty() && registered.is_some_and(|known| known != incarnation) {
        return Ok(Err(CommandError::NotFound(format!(
            "host {host_id} registered as another incarnation since it was found silent"
        ))));
    }
    let changed = conn
        .prepare_cached(
            "UPDATE hosts SET status = 'down', updated_at = ?2 WHERE id = ?1 AND status = 'up'",
        )?
        .execute(params![host_id, now])?;
    if changed == 0 {
        return Ok(Err(CommandError::NotFound(format!(
            "no host {host_id} is up"
        ))));
    }
    let reason = format!("host {host_id} stopped heartbeating");
    let rows = read::running_jobs_of_host(conn, host_id)?;
    for row in &rows {
        lose_lease(conn, row, &reason, now, effects)?;
    }
    Ok(Ok(Output::Count(rows.len() as u64)))
}

/// A running job whose host is gone: queued again while attempts remain,
/// failed with the reason once they are spent.
fn lose_lease(
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
struct Enqueue<'a> {
    id: &'a str,
    spec: &'a JobSpec,
    owner: &'a Owner,
    now: Millis,
    waiting_reason: Option<&'a str>,
}

fn enqueue_job(
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

fn set_waiting_reasons(
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
fn fail_queued(
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

fn lease_jobs(
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

fn renew_leases(
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
fn complete_job(
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

fn cancel_job(
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

fn expire_leases(
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

fn create_api_key(
    conn: &Connection,
    id: &str,
    name: &str,
    scopes: &[Scope],
    key_hash: &str,
    now: Millis,
) -> rusqlite::Result<CommandResult> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO api_keys (id, name, scopes, key_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            id,
            name,
            serde_json::to_string(scopes).expect("scopes serialise"),
            key_hash,
            now
        ])?;
    if inserted == 0 {
        return Ok(Err(CommandError::Conflict(format!(
            "api key {id} exists already"
        ))));
    }
    let key = read::api_key(conn, id)?.expect("key inserted a moment ago");
    Ok(Ok(Output::ApiKey(key)))
}

fn revoke_api_key(conn: &Connection, id: &str, now: Millis) -> rusqlite::Result<CommandResult> {
    conn.prepare_cached(
        "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
    )?
    .execute(params![id, now])?;
    match read::api_key(conn, id)? {
        Some(key) => Ok(Ok(Output::ApiKey(key))),
        None => Ok(Err(CommandError::NotFound(format!("no api key {id}")))),
    }
}

/// Records an artifact once: the digest names the bytes, so a second record
/// of the same digest can only repeat the first.
fn add_artifact(
    conn: &Connection,
    digest: &Digest,
    size: u64,
    kind: ArtifactKind,
    now: Millis,
) -> rusqlite::Result<CommandResult> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO artifacts (digest, size, kind, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (digest) DO NOTHING",
        )?
        .execute(params![digest.as_str(), size, kind.as_str(), now])?;
    let info = read::artifact(conn, digest)?.expect("artifact recorded a moment ago");
    Ok(Ok(Output::Artifact {
        info,
        created: inserted == 1,
    }))
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use skyclaw_api::hosts::{HeldLease, HostStatus, Outcome, RegisterHost};
    use skyclaw_api::jobs::{JobResult, JobStatus};

    use super::*;
    use crate::state::schema::migrate;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn
    }

    fn run(conn: &Connection, command: Command) -> Applied {
        apply(conn, &Proposal::new(command)).unwrap()
    }

    fn host(id: &str) -> Command {
        incarnation(id, "first")
    }

    /// A registration of host `id` by the daemon incarnation `incarnation`.
    fn incarnation(id: &str, incarnation: &str) -> Command {
        Command::RegisterHost {
            host: RegisterHost {
                host_id: id.into(),
                incarnation: incarnation.into(),
                name: id.into(),
                capabilities: vec!["shell".into()],
                max_parallel: 2,
                allowed_commands: vec!["echo".into()],
                openclaw_version: None,
                version: "test".into(),
                sandbox_only: false,
                wasi: None,
            },
            now: 1,
        }
    }

    fn enqueue(conn: &Connection, id: &str, max_attempts: u32) {
        let spec = serde_json::from_value(serde_json::json!({
            "kind": "shell", "command": "echo", "max_attempts": max_attempts
        }))
        .unwrap();
        let applied = run(
            conn,
            Command::EnqueueJob {
                id: id.into(),
                spec,
                owner: Owner::Token,
                now: 2,
                waiting_reason: None,
            },
        );
        assert!(applied.effects.jobs_queued);
    }

    fn lease(conn: &Connection, host: &str, job: &str, token: &str, expires_at: u64) -> usize {
        match run(
            conn,
            Command::LeaseJobs {
                host_id: host.into(),
                leases: vec![(job.into(), token.into())],
                expires_at,
                now: 3,
            },
        )
        .outcome
        {
            Ok(Output::Leased(leases)) => leases.granted.len(),
            other => panic!("{other:?}"),
        }
    }

    fn status(conn: &Connection, job: &str) -> (JobStatus, u32) {
        let row = read::job(conn, job).unwrap().unwrap();
        (row.job.status, row.job.attempts)
    }

    fn complete(conn: &Connection, job: &str, token: &str) -> CommandResult {
        run(
            conn,
            Command::CompleteJob {
                job_id: job.into(),
                lease_token: token.into(),
                outcome: Outcome::Succeeded,
                result: JobResult::default(),
                now: 9,
            },
        )
        .outcome
    }

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
    fn a_daemon_registering_again_keeps_its_jobs_and_a_restart_loses_them() {
        let conn = db();
        run(&conn, host("h1"));
        enqueue(&conn, "j1", 1);
        lease(&conn, "h1", "j1", "t1", 100);
        run(&conn, host("h1"));
        assert_eq!(status(&conn, "j1"), (JobStatus::Running, 1), "same daemon");
        let restarted = run(&conn, incarnation("h1", "second"));
        assert_eq!(restarted.effects.finished, ["j1"]);
        let row = read::job(&conn, "j1").unwrap().unwrap();
        assert_eq!(row.job.status, JobStatus::Failed);
        let error = row.job.result.unwrap().error.unwrap();
        assert!(error.contains("restarted"), "{error}");
    }

    #[test]
    fn a_host_down_verdict_on_an_earlier_incarnation_changes_nothing() {
        let conn = db();
        run(&conn, host("h1"));
        run(&conn, incarnation("h1", "second"));
        enqueue(&conn, "j1", 1);
        lease(&conn, "h1", "j1", "t1", 100);
        let stale = Command::HostDown {
            host_id: "h1".into(),
            incarnation: "first".into(),
            now: 150,
        };
        assert!(matches!(
            run(&conn, stale).outcome,
            Err(CommandError::NotFound(_))
        ));
        assert_eq!(status(&conn, "j1"), (JobStatus::Running, 1));
        let host = read::host(&conn, "h1").unwrap().unwrap();
        assert_eq!(host.status, HostStatus::Up);
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
    fn idempotency_replays_and_refuses_other_requests() {
        let conn = db();
        let record = |hash: &str| IdempotencyRecord {
            principal: "token".into(),
            key: "k1".into(),
            request_hash: hash.into(),
            now: 1,
        };
        let proposal = |id: &str, hash: &str| {
            Proposal::new(Command::EnqueueJob {
                id: id.into(),
                spec: serde_json::from_str(r#"{"kind":"shell","command":"echo"}"#).unwrap(),
                owner: Owner::Token,
                now: 1,
                waiting_reason: None,
            })
            .with_idempotency(Some(record(hash)))
        };
        let first = apply(&conn, &proposal("j1", "h")).unwrap();
        let again = apply(&conn, &proposal("j2", "h")).unwrap();
        assert!(again.replayed);
        assert_eq!(first.outcome, again.outcome);
        assert!(
            read::job(&conn, "j2").unwrap().is_none(),
            "replay applies nothing"
        );
        let other = apply(&conn, &proposal("j3", "other")).unwrap();
        assert!(matches!(
            other.outcome,
            Err(CommandError::IdempotencyConflict(_))
        ));
    }

    #[test]
    fn an_outcome_recorded_by_a_newer_build_stops_apply_instead_of_replaying() {
        let conn = db();
        conn.execute(
            "INSERT INTO idempotency (principal, key, request_hash, outcome, created_at, encoding)
             VALUES ('token', 'k1', 'h', '{\"Ok\":\"from_the_future\"}', 1, ?1)",
            [COMMAND_ENCODING + 1],
        )
        .unwrap();
        let proposal = Proposal::new(Command::PruneIdempotency { before: 0 }).with_idempotency(
            Some(IdempotencyRecord {
                principal: "token".into(),
                key: "k1".into(),
                request_hash: "h".into(),
                now: 1,
            }),
        );
        let err = apply(&conn, &proposal).unwrap_err().to_string();
        assert!(err.contains("newer skyclaw"), "{err}");
    }

    #[test]
    fn artifacts_are_recorded_once() {
        let conn = db();
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let add = |size, kind, now| Command::AddArtifact {
            digest: digest.clone(),
            size,
            kind,
            now,
        };
        let first = run(&conn, add(10, ArtifactKind::WasmModule, 5)).outcome;
        let Ok(Output::Artifact { info, created }) = first else {
            panic!("{first:?}")
        };
        assert!(created);
        assert_eq!(
            (info.size, info.kind, info.created_at),
            (10, ArtifactKind::WasmModule, 5)
        );
        let again = run(&conn, add(10, ArtifactKind::WasmModule, 9)).outcome;
        assert_eq!(
            again,
            Ok(Output::Artifact {
                info: info.clone(),
                created: false
            }),
            "the first record stands"
        );
        let other: Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
        run(
            &conn,
            Command::AddArtifact {
                digest: other.clone(),
                size: 3,
                kind: ArtifactKind::Blob,
                now: 1,
            },
        );
        let listed: Vec<Digest> = read::artifacts(&conn)
            .unwrap()
            .into_iter()
            .map(|a| a.digest)
            .collect();
        assert_eq!(listed, [digest.clone(), other], "in the order recorded");
        assert_eq!(read::artifact(&conn, &digest).unwrap(), Some(info));
    }

    fn enqueue_with(conn: &Connection, id: &str, spec: serde_json::Value, reason: Option<&str>) {
        run(
            conn,
            Command::EnqueueJob {
                id: id.into(),
                spec: serde_json::from_value(spec).unwrap(),
                owner: Owner::Token,
                now: 2,
                waiting_reason: reason.map(String::from),
            },
        );
    }

    fn waiting_reason(conn: &Connection, job: &str) -> Option<String> {
        read::job(conn, job).unwrap().unwrap().job.waiting_reason
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
