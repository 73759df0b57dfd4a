//! Skyclaw's wire protocol: the JSON types every node speaks, the error envelope,
//! the auth and idempotency header names, what a coordinator URL looks like,
//! the client every node and the CLI use to reach coordinators, and the HTTP
//! serving every node's listeners share.
//!
//! This is the only crate that the coordinator, the host runtime and the CLI
//! share; nothing else in it does IO except [`client`], [`service_client`],
//! [`datadir`], [`serve`] and [`artifacts::digest_file`].

pub mod apikeys;
pub mod artifacts;
pub mod client;
pub mod datadir;
pub mod error;
pub mod gateways;
pub mod headers;
pub mod hosts;
pub mod jobs;
pub mod network;
pub mod retry;
pub mod serve;
pub mod service_client;
pub mod services;
pub mod url;

pub use client::{Client, ClientError, Credentials};
pub use error::{ErrorBody, ErrorCode, ErrorEnvelope};

/// Milliseconds since the Unix epoch, the unit of every timestamp on the wire.
pub type Millis = u64;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}
