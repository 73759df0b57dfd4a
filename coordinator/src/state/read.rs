//! Reads of the state tables, shared by `apply` and the HTTP handlers.

use rusqlite::{Connection, OptionalExtension, Row, params};
use skyclaw_api::apikeys::{ApiKey, Scope};
use skyclaw_api::artifacts::{ArtifactInfo, Digest};
use skyclaw_api::hosts::{HostStatus, RegisterHost};
use skyclaw_api::jobs::{Job, JobSpec, JobStatus};

use super::command::{CommandError, IdempotencyRecord, Output, check_encoding};

/// A job with the columns only the coordinator sees.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub job: Job,
    pub owner: String,
    pub lease_token: Option<String>,
}

/// A host as stored; liveness and load are added by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    pub registration: RegisterHost,
    pub status: HostStatus,
    pub registered_at: u64,
    pub updated_at: u64,
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

/// A stored value (JSON or text) in result column `column` that does not
/// decode: the database was damaged or hand-edited. The one way the state
/// tables and the Raft log's tables say so.
pub fn corrupt(column: usize, detail: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        detail.to_string().into(),
    )
}

pub fn job(conn: &Connection, id: &str) -> rusqlite::Result<Option<JobRow>> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row([id], job_row)
        .optional()
}

/// What ending a job's lease needs to know of it; cheaper than [`job`],
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
pub fn jobs_page(
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
    let mut stmt = conn.prepare_cached(&jobs_page_sql(status.is_some(), owner.is_some()))?;
    let rows = stmt.query_map(params.as_slice(), job_row)?;
    rows.collect()
}

/// The job list's query with only the filters given, so that SQLite can use
/// the index on each (`(:status IS NULL OR status = :status)` rules indexes
/// out).
pub(super) fn jobs_page_sql(by_status: bool, by_owner: bool) -> String {
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
pub fn queued_jobs(
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

pub fn running_jobs_of_host(conn: &Connection, host_id: &str) -> rusqlite::Result<Vec<JobRow>> {
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
pub fn job_counts(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

fn host_row(row: &Row<'_>) -> rusqlite::Result<HostRow> {
    let registration: String = row.get(0)?;
    let status: String = row.get(1)?;
    Ok(HostRow {
        registration: serde_json::from_str(&registration).map_err(|e| corrupt(0, e))?,
        status: if status == "up" {
            HostStatus::Up
        } else {
            HostStatus::Down
        },
        registered_at: row.get(2)?,
        updated_at: row.get(3)?,
    })
}

pub fn host(conn: &Connection, id: &str) -> rusqlite::Result<Option<HostRow>> {
    conn.prepare_cached(
        "SELECT registration, status, registered_at, updated_at FROM hosts WHERE id = ?1",
    )?
    .query_row([id], host_row)
    .optional()
}

pub fn hosts(conn: &Connection) -> rusqlite::Result<Vec<HostRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT registration, status, registered_at, updated_at FROM hosts ORDER BY registered_at, id",
    )?;
    let rows = stmt.query_map([], host_row)?;
    rows.collect()
}

fn key_row(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let scopes: String = row.get(2)?;
    Ok(ApiKey {
        id: row.get(0)?,
        name: row.get(1)?,
        scopes: serde_json::from_str::<Vec<Scope>>(&scopes).map_err(|e| corrupt(2, e))?,
        created_at: row.get(3)?,
        revoked_at: row.get(4)?,
    })
}

const KEY_COLUMNS: &str = "id, name, scopes, created_at, revoked_at";

pub fn api_key(conn: &Connection, id: &str) -> rusqlite::Result<Option<ApiKey>> {
    conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?
        .query_row([id], key_row)
        .optional()
}

/// The live (unrevoked) key whose secret hashes to `key_hash`.
pub fn api_key_by_hash(conn: &Connection, key_hash: &str) -> rusqlite::Result<Option<ApiKey>> {
    conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL"
    ))?
    .query_row([key_hash], key_row)
    .optional()
}

pub fn api_keys(conn: &Connection) -> rusqlite::Result<Vec<ApiKey>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([], key_row)?;
    rows.collect()
}

const ARTIFACT_COLUMNS: &str = "digest, size, kind, created_at";

fn artifact_row(row: &Row<'_>) -> rusqlite::Result<ArtifactInfo> {
    let digest: String = row.get(0)?;
    let kind: String = row.get(2)?;
    Ok(ArtifactInfo {
        digest: digest.parse().map_err(|e: String| corrupt(0, e))?,
        size: row.get(1)?,
        kind: kind.parse().map_err(|e: String| corrupt(2, e))?,
        created_at: row.get(3)?,
    })
}

pub fn artifact(conn: &Connection, digest: &Digest) -> rusqlite::Result<Option<ArtifactInfo>> {
    conn.prepare_cached(&format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE digest = ?1"
    ))?
    .query_row([digest.as_str()], artifact_row)
    .optional()
}

/// Every artifact, in the order they were recorded.
pub fn artifacts(conn: &Connection) -> rusqlite::Result<Vec<ArtifactInfo>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts ORDER BY seq"
    ))?;
    let rows = stmt.query_map([], artifact_row)?;
    rows.collect()
}

/// The stored request hash and outcome (JSON) of an idempotency key.
/// The outcome recorded under an idempotency key: `None` while the key is
/// unused, a conflict when it was used with another request. An outcome
/// written in a newer encoding than this build's is a fault, not misread.
pub fn recorded_outcome(
    conn: &Connection,
    record: &IdempotencyRecord,
) -> rusqlite::Result<Option<Result<Output, CommandError>>> {
    let stored = conn
        .prepare_cached(
            "SELECT request_hash, outcome, encoding FROM idempotency
             WHERE principal = ?1 AND key = ?2",
        )?
        .query_row([&record.principal, &record.key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
            ))
        })
        .optional()?;
    let Some((request_hash, outcome, encoding)) = stored else {
        return Ok(None);
    };
    if request_hash != record.request_hash {
        return Ok(Some(Err(CommandError::IdempotencyConflict(
            record.key.clone(),
        ))));
    }
    check_encoding(encoding).map_err(|e| corrupt(1, e))?;
    let outcome = serde_json::from_str(&outcome).map_err(|e| corrupt(1, e))?;
    Ok(Some(outcome))
}

pub fn applied_index(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = 'applied_index'")?
        .query_row([], |r| r.get(0))
}
