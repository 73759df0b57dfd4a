//! Why the host daemon could not start or keep running.

use std::path::PathBuf;

use skyclaw_api::ClientError;

/// A failure that stops [`crate::run`]. Errors about single jobs never end up
/// here: they are reported to the coordinator as the job's result.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration cannot be honoured.
    #[error("invalid host configuration: {0}")]
    Config(String),
    /// The coordinator client could not be built (bad URL).
    #[error(transparent)]
    Client(ClientError),
    /// The data directory or a file in it could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    DataDir {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The `host-id` file holds something that is not a host id.
    #[error("{} does not hold a valid host id: {content:?}", path.display())]
    BadHostId { path: PathBuf, content: String },
    /// A coordinator answered the registration with a refusal that retrying
    /// cannot fix (such as a wrong token).
    #[error("registration refused: {0}")]
    Register(ClientError),
    /// Native jobs were asked for, and this machine does not let the host
    /// confine them (namespaces or the user switch are refused).
    #[error(
        "cannot confine native jobs on this machine ({0}): they need PID, mount and IPC \
         namespaces (as root, or user namespaces for --allow-same-user-jobs); run the host \
         where the kernel allows them, or with --sandbox-only"
    )]
    Confine(String),
    /// The WASI engine cannot be built with this configuration.
    #[error("cannot start the WASI engine: {0}")]
    Wasi(String),
}
