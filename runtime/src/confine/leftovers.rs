//! What a previous run of a root host may have left: processes under its job
//! uids, found in `/proc` and killed before the host takes new work, so that
//! a job never goes on running while the coordinators hand it out again.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::UidRange;

/// Passes over `/proc` at most: a leftover that forks while it is being
/// killed is found on the next pass, and a fork bomb under its process cap
/// runs out of room long before this.
const MAX_PASSES: usize = 20;

/// Kills every process whose real, effective, saved or file-system uid lies
/// in `range`, pass after pass until one finds none; returns how many were
/// killed. Blocking.
pub(crate) fn kill_all(range: UidRange) -> usize {
    let mut killed = 0;
    for _ in 0..MAX_PASSES {
        let found = processes_of(range);
        if found.is_empty() {
            if killed > 0 {
                info!(
                    killed,
                    "killed processes a previous run of this host left behind"
                );
            }
            return killed;
        }
        for pid in found {
            match kill(pid, Signal::SIGKILL) {
                Ok(()) => killed += 1,
                Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    warn!(pid = pid.as_raw(), error = %e, "cannot kill a leftover job process")
                }
            }
        }
    }
    warn!(killed, "leftover job processes keep appearing; going on");
    killed
}

/// Live processes (zombies aside: they are dead, only unreaped) under `range`.
fn processes_of(range: UidRange) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|status| is_live_under(&status, range))
        })
        .map(Pid::from_raw)
        .collect()
}

/// Whether a `/proc/PID/status` text is of a live process with a uid in `range`.
fn is_live_under(status: &str, range: UidRange) -> bool {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    let zombie = field("State:").is_some_and(|state| state.starts_with('Z'));
    let owned = field("Uid:").is_some_and(|uids| {
        uids.split_whitespace()
            .filter_map(|id| id.parse::<u32>().ok())
            .any(|id| range.contains(id))
    });
    owned && !zombie
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_for_uids_and_state() {
        let range = UidRange {
            first: 1000,
            last: 1999,
        };
        let running = "Name:\tsleep\nState:\tS (sleeping)\nUid:\t1500\t1500\t1500\t1500\n";
        assert!(is_live_under(running, range));
        let zombie = "Name:\tsleep\nState:\tZ (zombie)\nUid:\t1500\t1500\t1500\t1500\n";
        assert!(!is_live_under(zombie, range));
        let other = "Name:\tsshd\nState:\tS (sleeping)\nUid:\t0\t0\t0\t0\n";
        assert!(!is_live_under(other, range));
    }
}
