//! Jobs in the replicated state: enqueueing, why queued ones wait, queue
//! timeouts, leasing, renewing, completing, cancelling, and leases lost with
//! their host or expired.

use rusqlite::{Connection, OptionalExtension, Row, params};
use skyclaw_api::Millis;
use skyclaw_api::hosts::{HeldLease, HostStatus, Outcome};
use skyclaw_api::jobs::{Job, JobResult, JobSpec, JobStatus};

use super::apply::{CommandResult, Effects};
use super::command::{CommandError, Granted, Leases, Output, Owner};
use super::hosts;
use super::read::corrupt;

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
    let up = hosts::get(conn, host_id)?.is_some_and(|h| h.status == HostStatus::Up);
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
    let Some(job) = lease_state(conn, job_id)? else {
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
    let row = get(conn, job_id)?;
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
    let rows = expired_leases(conn, now)?;
    for row in &rows {
        let host = row.job.host_id.as_deref().unwrap_or("?");
        let reason = format!("lease expired: host {host} stopped renewing it");
        lose_lease(conn, row, &reason, now, effects)?;
    }
    Ok(Ok(Output::Count(rows.len() as u64)))
}

// Reads, shared by `apply` and the HTTP handlers.

/// A job with the columns only the coordinator sees.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub job: Job,
    pub owner: String,
    pub lease_token: Option<String>,
}

const JOB_COLUMNS: &str = "id, status, spec, attempts, host_id, created_at, updated_at, result, \
     owner, lease_token, waiting_reason";

fn job_row(row: &Row<'_>) -> rusqlite::Result<JobRow> {
    let status: String = row.get(1)?;
    let spec: String = row.get(2)?;
    let result: Option<String> = row.get(7)?;
    Ok(JobRow {
        job: Job {
            id: row.get(0)?,
            status: status.parse().map_err(|e: String| corrupt(1, e))?,
            spec: serde_json::from_str::<JobSpec>(&spec).map_err(|e| corrupt(2, e))?,
            attempts: row.get(3)?,
            host_id: row.get(4)?,
            created_at: row.get(5)?,
            updated_at: row.get(6)?,
            result: result
                .map(|r| serde_json::from_str(&r))
                .transpose()
                .map_err(|e| corrupt(7, e))?,
            waiting_reason: row.get(10)?,
        },
        owner: row.get(8)?,
        lease_token: row.get(9)?,
    })
}

pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<JobRow>> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row([id], job_row)
        .optional()
}

/// What ending a job's lease needs to know of it; cheaper than [`get`],
/// which decodes the spec and result.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseState {
    pub status: JobStatus,
    pub lease_token: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
}

pub fn lease_state(conn: &Connection, id: &str) -> rusqlite::Result<Option<LeaseState>> {
    conn.prepare_cached(
        "SELECT status, lease_token, attempts, max_attempts FROM jobs WHERE id = ?1",
    )?
    .query_row([id], |row| {
        let status: String = row.get(0)?;
        Ok(LeaseState {
            status: status.parse().map_err(|e: String| corrupt(0, e))?,
            lease_token: row.get(1)?,
            attempts: row.get(2)?,
            max_attempts: row.get(3)?,
        })
    })
    .optional()
}

/// Jobs oldest first, optionally of one status and owner, after a given job id.
pub fn page(
    conn: &Connection,
    status: Option<JobStatus>,
    owner: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> rusqlite::Result<Vec<JobRow>> {
    let after_seq: i64 = match after {
        Some(id) => conn
            .prepare_cached("SELECT seq FROM jobs WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?
            .unwrap_or(i64::MAX),
        None => 0,
    };
    let status = status.map(|s| s.as_str());
    let mut params: Vec<(&str, &dyn rusqlite::ToSql)> =
        vec![(":after", &after_seq), (":limit", &limit)];
    if let Some(status) = &status {
        params.push((":status", status));
    }
    if let Some(owner) = &owner {
        params.push((":owner", owner));
    }
    let mut stmt = conn.prepare_cached(&page_sql(status.is_some(), owner.is_some()))?;
    let rows = stmt.query_map(params.as_slice(), job_row)?;
    rows.collect()
}

/// The job list's query with only the filters given, so that SQLite can use
/// the index on each (`(:status IS NULL OR status = :status)` rules indexes
/// out).
pub(super) fn page_sql(by_status: bool, by_owner: bool) -> String {
    let mut filters = vec!["seq > :after"];
    if by_status {
        filters.push("status = :status");
    }
    if by_owner {
        // The second term lets SQLite use `jobs_by_owner`, which leaves out
        // the token's jobs; a key's owner is never the token.
        filters.push("owner = :owner AND owner != 'token'");
    }
    format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE {} ORDER BY seq LIMIT :limit",
        filters.join(" AND ")
    )
}

/// Queued jobs oldest first, after queue position `after_seq`, with their positions.
pub fn queued(
    conn: &Connection,
    after_seq: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, Job)>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS}, seq FROM jobs WHERE status = 'queued' AND seq > ?1 ORDER BY seq LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![after_seq, limit as i64], |row| {
        Ok((row.get(11)?, job_row(row)?.job))
    })?;
    rows.collect()
}

/// Up to `limit` queued jobs whose queue deadline is not after `now`, oldest
/// deadline first.
pub fn queue_overdue(conn: &Connection, now: u64, limit: usize) -> rusqlite::Result<Vec<Job>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE queue_deadline <= ?1 ORDER BY queue_deadline LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![now, limit as i64], |row| Ok(job_row(row)?.job))?;
    rows.collect()
}

/// Running jobs whose lease ended before `now`.
pub fn expired_leases(conn: &Connection, now: u64) -> rusqlite::Result<Vec<JobRow>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'running' AND lease_expires_at < ?1 ORDER BY seq"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([now], job_row)?;
    rows.collect()
}

pub fn running_of_host(conn: &Connection, host_id: &str) -> rusqlite::Result<Vec<JobRow>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'running' AND host_id = ?1 ORDER BY seq"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([host_id], job_row)?;
    rows.collect()
}

/// How many jobs each host holds now.
pub fn running_counts(conn: &Connection) -> rusqlite::Result<Vec<(String, u32)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT host_id, COUNT(*) FROM jobs WHERE status = 'running' GROUP BY host_id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Job counts by status, for /metrics.
pub fn counts(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests;
