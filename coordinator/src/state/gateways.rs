//! Gateways in the replicated state: registered and renewed by heartbeats
//! that carry the proposer's time, each owned by whoever registered it, and
//! forgotten once their TTL passes without one.

use rusqlite::{Connection, OptionalExtension, Row, params};
use skyclaw_api::Millis;
use skyclaw_api::gateways::{Gateway, MAX_GATEWAYS_PER_KEY};

use super::apply::CommandResult;
use super::command::{CommandError, Output, Owner};

/// Registers gateway `id` for `owner`, or renews it, until
/// [`Gateway::expiry`] of `now`. Gateways expired at `now` are deleted
/// first, so the table holds only live ones and needs no sweep of its own.
/// A key may renew only the gateways it registered (the token any), and
/// hold at most [`MAX_GATEWAYS_PER_KEY`].
pub(super) fn heartbeat(
    conn: &Connection,
    id: &str,
    public_url: &str,
    owner: &Owner,
    now: Millis,
) -> rusqlite::Result<CommandResult> {
    prune(conn, now)?;
    let owner_column = owner.as_column();
    match registered_by(conn, id)? {
        Some(holder) if *owner != Owner::Token && holder != owner_column => {
            return Ok(Err(CommandError::Forbidden(format!(
                "gateway {id} is registered by someone else; pick another id"
            ))));
        }
        None if *owner != Owner::Token && held_by(conn, &owner_column)? >= MAX_GATEWAYS_PER_KEY => {
            return Ok(Err(CommandError::Forbidden(format!(
                "an api key may hold at most {MAX_GATEWAYS_PER_KEY} live gateways; \
                 stop one or let it expire first"
            ))));
        }
        _ => {}
    }
    // A new leader's clock may be behind its predecessor's: a renewal never
    // moves a gateway's times back.
    conn.prepare_cached(
        "INSERT INTO gateways (id, public_url, owner, registered_at, last_seen, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET
             public_url = excluded.public_url,
             last_seen = MAX(last_seen, excluded.last_seen),
             expires_at = MAX(expires_at, excluded.expires_at)",
    )?
    .execute(params![
        id,
        public_url,
        owner_column,
        now,
        Gateway::expiry(now)
    ])?;
    let gateway = get(conn, id)?.expect("gateway written a moment ago");
    Ok(Ok(Output::Gateway(gateway)))
}

/// Forgets the gateways that are no longer live at `now`.
fn prune(conn: &Connection, now: Millis) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM gateways WHERE expires_at <= ?1")?
        .execute([now])
}

fn registered_by(conn: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT owner FROM gateways WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()
}

/// How many gateways `owner` (as stored) holds; after [`prune`], all live.
fn held_by(conn: &Connection, owner: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached("SELECT COUNT(*) FROM gateways WHERE owner = ?1")?
        .query_row([owner], |r| r.get(0))
}

// Reads, shared by `apply` and the HTTP handlers.

const GATEWAY_COLUMNS: &str = "id, public_url, registered_at, last_seen, expires_at";

fn gateway_row(row: &Row<'_>) -> rusqlite::Result<Gateway> {
    Ok(Gateway {
        id: row.get(0)?,
        public_url: row.get(1)?,
        registered_at: row.get(2)?,
        last_seen: row.get(3)?,
        expires_at: row.get(4)?,
    })
}

fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Gateway>> {
    conn.prepare_cached(&format!(
        "SELECT {GATEWAY_COLUMNS} FROM gateways WHERE id = ?1"
    ))?
    .query_row([id], gateway_row)
    .optional()
}

/// The gateways live at `now` (the reader's clock: rows are pruned only
/// by heartbeats), by id, at most `limit`.
pub fn live(conn: &Connection, now: Millis, limit: usize) -> rusqlite::Result<Vec<Gateway>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {GATEWAY_COLUMNS} FROM gateways WHERE expires_at > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now, limit], gateway_row)?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use skyclaw_api::gateways::{GATEWAY_TTL_MS, Gateway, MAX_GATEWAYS_PER_KEY};

    use crate::state::testkit::*;
    use crate::state::{Command, CommandError, Output, Owner};

    fn key(id: &str) -> Owner {
        Owner::ApiKey(id.into())
    }

    fn beat(conn: &Connection, id: &str, owner: Owner, now: u64) -> Result<Gateway, CommandError> {
        let command = Command::GatewayHeartbeat {
            id: id.into(),
            public_url: format!("https://{id}.example.org"),
            owner,
            now,
        };
        match run(conn, command).outcome {
            Ok(Output::Gateway(gateway)) => Ok(gateway),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        }
    }

    fn live_ids(conn: &Connection, now: u64) -> Vec<String> {
        super::live(conn, now, 100)
            .unwrap()
            .into_iter()
            .map(|g| g.id)
            .collect()
    }

    #[test]
    fn a_heartbeat_registers_once_and_renews_after() {
        let conn = db();
        let first = beat(&conn, "g1", key("k1"), 1_000).unwrap();
        assert_eq!(
            (first.registered_at, first.last_seen, first.expires_at),
            (1_000, 1_000, 1_000 + GATEWAY_TTL_MS)
        );
        assert_eq!(first.public_url, "https://g1.example.org");
        let renewed = beat(&conn, "g1", key("k1"), 5_000).unwrap();
        assert_eq!(
            (renewed.registered_at, renewed.last_seen, renewed.expires_at),
            (1_000, 5_000, 5_000 + GATEWAY_TTL_MS)
        );
        // A proposer whose clock is behind never moves the times back.
        let late = beat(&conn, "g1", key("k1"), 4_000).unwrap();
        assert_eq!(late, renewed);
        assert_eq!(live_ids(&conn, 5_000), ["g1"]);
    }

    #[test]
    fn a_gateway_leaves_the_list_at_its_ttl_and_the_next_heartbeat_forgets_it() {
        let conn = db();
        beat(&conn, "old", key("k1"), 1_000).unwrap();
        let expiry = 1_000 + GATEWAY_TTL_MS;
        beat(&conn, "new", key("k2"), expiry - 1).unwrap();
        assert_eq!(live_ids(&conn, expiry - 1), ["new", "old"], "by id");
        assert_eq!(live_ids(&conn, expiry), ["new"], "expired, not yet pruned");
        let rows = |conn: &Connection| -> i64 {
            conn.query_row("SELECT COUNT(*) FROM gateways", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(rows(&conn), 2);
        beat(&conn, "new", key("k2"), expiry).unwrap();
        assert_eq!(rows(&conn), 1, "any heartbeat prunes the expired");
        // Registering again after expiry starts a new registration.
        let again = beat(&conn, "old", key("k1"), expiry + 5).unwrap();
        assert_eq!(again.registered_at, expiry + 5);
        assert!(super::live(&conn, expiry, 1).unwrap().len() == 1, "bounded");
    }

    #[test]
    fn a_key_renews_only_its_own_gateways() {
        let conn = db();
        beat(&conn, "g1", key("k1"), 1_000).unwrap();
        let taken = beat(&conn, "g1", key("k2"), 2_000).unwrap_err();
        assert!(
            matches!(&taken, CommandError::Forbidden(m) if m.contains("someone else")),
            "{taken:?}"
        );
        assert_eq!(super::get(&conn, "g1").unwrap().unwrap().last_seen, 1_000);
        // The token may renew any; the gateway stays its owner's.
        beat(&conn, "g1", Owner::Token, 3_000).unwrap();
        assert!(beat(&conn, "g1", key("k2"), 3_500).is_err());
        assert!(beat(&conn, "g1", key("k1"), 4_000).is_ok());
        // Once expired, the id is free for anyone.
        let later = 4_000 + GATEWAY_TTL_MS;
        assert_eq!(
            beat(&conn, "g1", key("k2"), later).unwrap().registered_at,
            later
        );
    }

    #[test]
    fn a_key_holds_a_bounded_number_of_live_gateways() {
        let conn = db();
        for n in 0..MAX_GATEWAYS_PER_KEY {
            beat(&conn, &format!("g{n}"), key("k1"), 1_000).unwrap();
        }
        let over = beat(&conn, "one-more", key("k1"), 1_000).unwrap_err();
        assert!(
            matches!(&over, CommandError::Forbidden(m) if m.contains("at most")),
            "{over:?}"
        );
        assert!(
            beat(&conn, "g0", key("k1"), 2_000).is_ok(),
            "renewing is not adding"
        );
        assert!(beat(&conn, "theirs", key("k2"), 2_000).is_ok(), "per key");
        assert!(
            beat(&conn, "ours", Owner::Token, 2_000).is_ok(),
            "the token is not capped"
        );
        // Once the others expire, the key may register again.
        let later = 1_000 + GATEWAY_TTL_MS;
        assert!(beat(&conn, "one-more", key("k1"), later).is_ok());
    }
}
