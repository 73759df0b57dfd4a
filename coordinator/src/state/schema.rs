//! The SQLite schema and its migrations, versioned with `PRAGMA user_version`.

use rusqlite::Connection;

/// The schema version this build writes. A database with a newer version was
/// written by a newer skyclaw and is refused rather than misread.
pub const SCHEMA_VERSION: i64 = 8;

const V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
INSERT INTO meta (key, value) VALUES ('applied_index', 0);

CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    status           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    spec             TEXT NOT NULL,
    owner            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    host_id          TEXT,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    result           TEXT
) STRICT;
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE INDEX jobs_running_by_host ON jobs (host_id) WHERE status = 'running';
CREATE INDEX jobs_running_by_expiry ON jobs (lease_expires_at) WHERE status = 'running';

CREATE TABLE hosts (
    id            TEXT PRIMARY KEY,
    registration  TEXT NOT NULL,
    status        TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE TABLE idempotency (
    principal    TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (principal, key)
) STRICT;
CREATE INDEX idempotency_by_age ON idempotency (created_at);
";

/// Version 2: the Raft state machine's own state (last applied log id and
/// membership), committed with the effects of the entries it describes.
const V2: &str = "
CREATE TABLE raft_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
";

/// Version 3: artifacts (their metadata; blobs live in files by digest), in
/// the order they were recorded.
const V3: &str = "
CREATE TABLE artifacts (
    seq        INTEGER PRIMARY KEY,
    digest     TEXT NOT NULL UNIQUE,
    size       INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
";

/// Version 4: why a queued job waits (set by the leader while no live host
/// can run it), and when a queued job with a queue timeout fails (NULL while
/// it is not queued, or has none). Earlier jobs get NULL in both.
const V4: &str = "
ALTER TABLE jobs ADD COLUMN waiting_reason TEXT;
ALTER TABLE jobs ADD COLUMN queue_timeout_ms INTEGER;
ALTER TABLE jobs ADD COLUMN queue_deadline INTEGER;
CREATE INDEX jobs_by_queue_deadline ON jobs (queue_deadline) WHERE queue_deadline IS NOT NULL;
";

/// Version 5: jobs by owner, so that an API key lists the jobs it submitted
/// without reading everyone's. Jobs the token submitted are left out: the
/// token lists every job, and submitting them need not pay for the index.
const V5: &str = "
CREATE INDEX jobs_by_owner ON jobs (owner, seq) WHERE owner != 'token';
";

/// Version 6: the encoding each idempotency record's outcome is written in
/// (`state::COMMAND_ENCODING`); records from before it are encoding 1.
const V6: &str = "
ALTER TABLE idempotency ADD COLUMN encoding INTEGER NOT NULL DEFAULT 1;
";

/// Version 7: services (a row per name, kept when removed so versions never
/// repeat), their versions' specs, their instances, and the indexes that
/// long-polls of assignments and endpoints watch.
const V7: &str = "
CREATE TABLE services (
    name             TEXT PRIMARY KEY,
    version          INTEGER NOT NULL,
    previous_version INTEGER,
    replicas         INTEGER NOT NULL,
    deploy           TEXT NOT NULL,
    waiting_reason   TEXT,
    owner            TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    deleted_at       INTEGER
) STRICT;
CREATE TABLE service_versions (
    service    TEXT NOT NULL,
    version    INTEGER NOT NULL,
    spec       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (service, version)
) STRICT;
CREATE TABLE instances (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    service    TEXT NOT NULL,
    version    INTEGER NOT NULL,
    host_id    TEXT NOT NULL,
    state      TEXT NOT NULL,
    endpoint   TEXT,
    restarts   INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX instances_by_service ON instances (service, seq);
CREATE INDEX instances_by_host ON instances (host_id, seq);
INSERT INTO meta (key, value) VALUES ('services_index', 0), ('endpoints_index', 0);
";

/// Version 8: gateways, each until its `expires_at` unless renewed, with
/// their owner (`Owner::as_column`); by expiry for pruning and by owner for
/// the per-key cap.
const V8: &str = "
CREATE TABLE gateways (
    id            TEXT PRIMARY KEY,
    public_url    TEXT NOT NULL,
    owner         TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX gateways_by_expiry ON gateways (expires_at);
CREATE INDEX gateways_by_owner ON gateways (owner);
";

/// Errors opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "database schema version {found} is newer than this build's {SCHEMA_VERSION}; upgrade skyclaw"
    )]
    TooNew { found: i64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Brings the database up to [`SCHEMA_VERSION`] in one transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { found });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    if found < 1 {
        tx.execute_batch(V1)?;
    }
    if found < 2 {
        tx.execute_batch(V2)?;
    }
    if found < 3 {
        tx.execute_batch(V3)?;
    }
    if found < 4 {
        tx.execute_batch(V4)?;
    }
    if found < 5 {
        tx.execute_batch(V5)?;
    }
    if found < 6 {
        tx.execute_batch(V6)?;
    }
    if found < 7 {
        tx.execute_batch(V7)?;
    }
    if found < 8 {
        tx.execute_batch(V8)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by the previous version keeps its jobs, which read
    /// as having no waiting reason and no queue deadline.
    #[test]
    fn version_3_jobs_survive_the_migration() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("{V1}{V2}{V3}PRAGMA user_version = 3;"))
            .unwrap();
        conn.execute(
            "INSERT INTO jobs (id, status, kind, spec, owner, attempts, max_attempts,
                               created_at, updated_at)
             VALUES ('j1', 'queued', 'shell', '{}', 'token', 0, 1, 5, 5)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let row: (Option<String>, Option<i64>, Option<i64>) = conn
            .query_row(
                "SELECT waiting_reason, queue_timeout_ms, queue_deadline FROM jobs WHERE id = 'j1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(row, (None, None, None));
    }

    /// The plan SQLite picks for the job list with the filters given.
    fn job_list_plan(by_status: bool, by_owner: bool) -> String {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let sql = super::super::jobs::page_sql(by_status, by_owner);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Unbound: the plan depends on which columns are compared, not on values.
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let details: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(nulls), |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        details.join("; ")
    }

    #[test]
    fn the_job_list_uses_an_index_for_each_filter() {
        let by_status = job_list_plan(true, false);
        assert!(by_status.contains("jobs_by_status"), "{by_status}");
        let by_owner = job_list_plan(false, true);
        assert!(by_owner.contains("jobs_by_owner"), "{by_owner}");
    }

    #[test]
    fn migrates_once_and_refuses_newer() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(SchemaError::TooNew { .. })
        ));
    }
}
