//! Helpers the state modules' unit tests share: an in-memory database, and
//! proposals of the common commands.

use rusqlite::Connection;
use skyclaw_api::hosts::{Outcome, RegisterHost};
use skyclaw_api::jobs::{JobResult, JobStatus};

use super::apply::{Applied, CommandResult, apply};
use super::command::{Command, Output, Owner, Proposal};
use super::jobs;
use super::schema::migrate;

pub fn db() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    migrate(&mut conn).unwrap();
    conn
}

pub fn run(conn: &Connection, command: Command) -> Applied {
    apply(conn, &Proposal::new(command)).unwrap()
}

pub fn host(id: &str) -> Command {
    incarnation(id, "first")
}

/// A registration of host `id` by the daemon incarnation `incarnation`.
pub fn incarnation(id: &str, incarnation: &str) -> Command {
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
            services: None,
        },
        now: 1,
    }
}

pub fn enqueue(conn: &Connection, id: &str, max_attempts: u32) {
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

pub fn lease(conn: &Connection, host: &str, job: &str, token: &str, expires_at: u64) -> usize {
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

pub fn status(conn: &Connection, job: &str) -> (JobStatus, u32) {
    let row = jobs::get(conn, job).unwrap().unwrap();
    (row.job.status, row.job.attempts)
}

pub fn complete(conn: &Connection, job: &str, token: &str) -> CommandResult {
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

pub fn enqueue_with(conn: &Connection, id: &str, spec: serde_json::Value, reason: Option<&str>) {
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

pub fn waiting_reason(conn: &Connection, job: &str) -> Option<String> {
    jobs::get(conn, job).unwrap().unwrap().job.waiting_reason
}
