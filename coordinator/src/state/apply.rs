//! `apply`: the one deterministic function that turns a proposal into SQLite
//! writes. It runs inside the caller's transaction; the caller commits it
//! together with the applied index, so a crash never applies a proposal twice.

use rusqlite::{Connection, params};

use super::command::{
    COMMAND_ENCODING, Command, CommandError, IdempotencyRecord, Output, Proposal,
};
use super::jobs::Enqueue;
use super::{apikeys, artifacts, gateways, hosts, jobs, read, services};

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
    /// Services or instances changed: assignment and endpoint long-polls look again.
    pub services_changed: bool,
}

impl Effects {
    pub fn merge(&mut self, other: Effects) {
        self.jobs_queued |= other.jobs_queued;
        self.finished.extend(other.finished);
        self.services_changed |= other.services_changed;
    }
}

/// A command's answer: its output, or why it was refused.
pub(super) type CommandResult = Result<Output, CommandError>;

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
        Command::RegisterHost { host, now } => hosts::register_host(conn, host, *now, effects),
        Command::HostDown {
            host_id,
            incarnation,
            now,
        } => hosts::host_down(conn, host_id, incarnation, *now, effects),
        Command::EnqueueJob {
            id,
            spec,
            owner,
            now,
            waiting_reason,
        } => jobs::enqueue_job(
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
        Command::SetWaitingReasons { reasons } => jobs::set_waiting_reasons(conn, reasons),
        Command::FailQueued { jobs, now } => jobs::fail_queued(conn, jobs, *now, effects),
        Command::LeaseJobs {
            host_id,
            leases,
            expires_at,
            now,
        } => jobs::lease_jobs(conn, host_id, leases, *expires_at, *now),
        Command::RenewLeases {
            host_id,
            leases,
            expires_at,
        } => jobs::renew_leases(conn, host_id, leases, *expires_at),
        Command::CompleteJob {
            job_id,
            lease_token,
            outcome,
            result,
            now,
        } => jobs::complete_job(conn, job_id, lease_token, *outcome, result, *now, effects),
        Command::CancelJob { job_id, owner, now } => {
            jobs::cancel_job(conn, job_id, owner, *now, effects)
        }
        Command::ExpireLeases { now } => jobs::expire_leases(conn, *now, effects),
        Command::CreateApiKey {
            id,
            name,
            scopes,
            key_hash,
            now,
        } => apikeys::create_api_key(conn, id, name, scopes, key_hash, *now),
        Command::RevokeApiKey { id, now } => apikeys::revoke_api_key(conn, id, *now),
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
        } => artifacts::add_artifact(conn, digest, *size, *kind, *now),
        Command::PutService {
            name,
            spec,
            owner,
            now,
        } => services::put_service(conn, name, spec, owner, *now, effects),
        Command::ScaleService {
            name,
            replicas,
            owner,
            now,
        } => services::scale_service(conn, name, *replicas, owner, *now, effects),
        Command::DeleteService { name, owner, now } => {
            services::delete_service(conn, name, owner, *now, effects)
        }
        Command::PlaceInstances {
            service,
            version,
            placements,
            now,
        } => services::place_instances(conn, service, *version, placements, *now, effects),
        Command::StopInstances { ids, now } => services::stop_instances(conn, ids, *now, effects),
        Command::ReportInstances {
            host_id,
            reports,
            now,
        } => services::report_instances(conn, host_id, reports, *now, effects),
        Command::FinishDeploy {
            service,
            version,
            status,
            reason,
            now,
        } => services::finish_deploy(
            conn,
            service,
            *version,
            *status,
            reason.as_deref(),
            *now,
            effects,
        ),
        Command::SetServiceWaiting { reasons } => services::set_waiting(conn, reasons, effects),
        Command::GatewayHeartbeat {
            id,
            public_url,
            owner,
            now,
        } => gateways::heartbeat(conn, id, public_url, owner, *now),
    }
}

#[cfg(test)]
mod tests {
    use crate::state::testkit::*;
    use crate::state::{
        COMMAND_ENCODING, Command, CommandError, IdempotencyRecord, Owner, Proposal, apply, jobs,
    };

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
            jobs::get(&conn, "j2").unwrap().is_none(),
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
}
