//! Hosts in the replicated state: registrations (a new incarnation loses
//! the jobs the old one ran) and down verdicts, conditional on the
//! incarnation found silent.

use rusqlite::{Connection, params};
use skyclaw_api::Millis;
use skyclaw_api::hosts::{HostStatus, RegisterHost};

use super::apply::{CommandResult, Effects};
use super::command::{CommandError, Output};
use super::jobs::lose_lease;
use super::read;

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

pub(super) fn host_down(
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
#[cfg(test)]
mod tests {
    use skyclaw_api::hosts::HostStatus;
    use skyclaw_api::jobs::JobStatus;

    use crate::state::read;
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
}
