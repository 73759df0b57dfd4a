//! JSON values under string keys in a `(key, value)` SQLite table: how the Raft
//! log keeps its vote and the state machine its applied log id and membership.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::corrupt;

/// The value under `key` in `table`, if any.
pub fn get<T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    key: &str,
) -> rusqlite::Result<Option<T>> {
    let value: Option<String> = conn
        .prepare_cached(&format!("SELECT value FROM {table} WHERE key = ?1"))?
        .query_row([key], |r| r.get(0))
        .optional()?;
    value
        .map(|v| serde_json::from_str(&v).map_err(|e| corrupt(0, e)))
        .transpose()
}

/// Sets `key` in `table` to `value`.
pub fn put(
    conn: &Connection,
    table: &str,
    key: &str,
    value: &impl Serialize,
) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO {table} (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = ?2"
    ))?
    .execute(params![
        key,
        serde_json::to_string(value).expect("raft types serialise")
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_does_not_decode_is_reported_corrupt() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO t VALUES ('k', '{not json');",
        )
        .unwrap();
        let err = get::<u64>(&conn, "t", "k").unwrap_err();
        assert!(
            matches!(err, rusqlite::Error::FromSqlConversionFailure(0, _, _)),
            "{err}"
        );
        put(&conn, "t", "k", &7u64).unwrap();
        assert_eq!(get::<u64>(&conn, "t", "k").unwrap(), Some(7));
    }
}
