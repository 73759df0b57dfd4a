//! Hosts in the replicated state: registrations (a new incarnation loses
//! the jobs the old one ran) and down verdicts, conditional on the
//! incarnation found silent.

use rusqlite::{Connection, OptionalExtension, Row, params};
use skyclaw_api::Millis;
use skyclaw_api::hosts::{HostStatus, RegisterHost};

use super::apply::{CommandResult, Effects};
use super::command::{CommandError, Output};
use super::read::corrupt;
use super::{jobs, services};

pub(super) fn register_host(
    conn: &Connection,
    host: &RegisterHost,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    // The same running daemon registering again (it lost touch, or a leader
    // change made a coordinator forget it) keeps its jobs. Any other
    // registration is a restart: the jobs it ran are gone with the process.
    let same_daemon = !host.incarnation.is_empty()
        && get(conn, &host.host_id)?.is_some_and(|known| {
            known.status == HostStatus::Up && known.registration.incarnation == host.incarnation
        });
    if !same_daemon {
        let reason = format!("host {} restarted while running the job", host.host_id);
        for row in jobs::running_of_host(conn, &host.host_id)? {
            jobs::lose_lease(conn, &row, &reason, now, effects)?;
        }
        let reason = format!("host {} restarted", host.host_id);
        services::lose_host_instances(conn, &host.host_id, &reason, now, effects)?;
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

pub(super) fn host_down(
    conn: &Connection,
    host_id: &str,
    incarnation: &str,
    now: Millis,
    effects: &mut Effects,
) -> rusqlite::Result<CommandResult> {
    let registered = get(conn, host_id)?.map(|h| h.registration.incarnation);
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
    let rows = jobs::running_of_host(conn, host_id)?;
    for row in &rows {
        jobs::lose_lease(conn, row, &reason, now, effects)?;
    }
    services::lose_host_instances(conn, host_id, &reason, now, effects)?;
    Ok(Ok(Output::Count(rows.len() as u64)))
}
// Reads, shared by `apply` and the HTTP handlers.

/// A host as stored; liveness and load are added by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    pub registration: RegisterHost,
    pub status: HostStatus,
    pub registered_at: u64,
    pub updated_at: u64,
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

pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<HostRow>> {
    conn.prepare_cached(
        "SELECT registration, status, registered_at, updated_at FROM hosts WHERE id = ?1",
    )?
    .query_row([id], host_row)
    .optional()
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<HostRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT registration, status, registered_at, updated_at FROM hosts ORDER BY registered_at, id",
    )?;
    let rows = stmt.query_map([], host_row)?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use skyclaw_api::hosts::HostStatus;
    use skyclaw_api::jobs::JobStatus;

    use crate::state::jobs;
    use crate::state::testkit::*;
    use crate::state::{Command, CommandError};

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
        let row = jobs::get(&conn, "j1").unwrap().unwrap();
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
        let host = super::get(&conn, "h1").unwrap().unwrap();
        assert_eq!(host.status, HostStatus::Up);
    }
}
