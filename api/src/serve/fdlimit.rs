//! The process's open-file limit (`RLIMIT_NOFILE`): every node raises its soft
//! limit to the hard limit at start, and listeners fit their connection cap
//! under it.

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft open-file limit to the hard limit and returns the soft
/// limit now in force. The hard limit is left alone: raising it needs
/// `CAP_SYS_RESOURCE`, which a node should not have.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(soft.max(hard))
}

/// The soft open-file limit in force.
pub fn nofile_limit() -> io::Result<u64> {
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}
