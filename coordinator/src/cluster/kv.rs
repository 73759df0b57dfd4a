//! JSON values under string keys in a `(key, value)` SQLite table: how the Raft
//! log keeps its vote and the state machine its applied log id and membership.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

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
        .map(|v| serde_json::from_str(&v).map_err(decode_error))
        .transpose()
}

/// A stored JSON value that does not decode, as a SQLite conversion error.
pub fn decode_error(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
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
