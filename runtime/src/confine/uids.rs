//! The job uids of a root host: handed out round-robin from the host's
//! range, each to one running job at a time, and checked against the
//! machine's accounts.

use std::collections::BTreeSet;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::sync::{Arc, Mutex};

use super::UidRange;

/// Files that list the machine's accounts and groups; an id named there is
/// someone's, and a job must never run as it.
const ACCOUNT_FILES: &[&str] = &["/etc/passwd", "/etc/group"];

/// The range and which of its ids running jobs hold.
#[derive(Debug)]
pub(crate) struct UidPool {
    range: UidRange,
    state: Mutex<State>,
    /// Held while the host runs: see [`claim`].
    _claim: UnixListener,
}

#[derive(Debug)]
struct State {
    /// Where the next search starts: ids are taken in turn, so an id comes
    /// back into use only after the whole range has been, and a job never
    /// meets what the last job under its id left behind moments ago.
    next: u32,
    in_use: BTreeSet<u32>,
}

impl UidPool {
    pub(crate) fn new(range: UidRange, claim: UnixListener) -> UidPool {
        UidPool {
            range,
            state: Mutex::new(State {
                next: range.first,
                in_use: BTreeSet::new(),
            }),
            _claim: claim,
        }
    }

    pub(crate) fn range(&self) -> UidRange {
        self.range
    }

    /// A free id, held until the returned guard drops; `None` when running
    /// jobs hold them all.
    pub(crate) fn take(self: &Arc<Self>) -> Option<JobUid> {
        let mut state = self.state.lock().expect("uid pool lock");
        let len = self.range.count();
        let mut candidate = state.next;
        for _ in 0..len {
            let following = if candidate == self.range.last {
                self.range.first
            } else {
                candidate + 1
            };
            if state.in_use.insert(candidate) {
                state.next = following;
                return Some(JobUid {
                    id: candidate,
                    pool: Arc::clone(self),
                });
            }
            candidate = following;
        }
        None
    }

    fn give_back(&self, id: u32) {
        self.state.lock().expect("uid pool lock").in_use.remove(&id);
    }
}

/// One job's uid (also its gid), given back when dropped.
#[derive(Debug)]
pub(crate) struct JobUid {
    id: u32,
    pool: Arc<UidPool>,
}

impl JobUid {
    pub(crate) fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for JobUid {
    fn drop(&mut self) {
        self.pool.give_back(self.id);
    }
}

/// Claims `range` for this process on this machine, by binding an abstract
/// socket named after it (released by the kernel when the process ends, even
/// by `kill -9`): two hosts with the same range would hand one uid to two
/// jobs, and each would kill the other's jobs as leftovers when it starts.
pub(crate) fn claim(range: UidRange) -> io::Result<UnixListener> {
    let name = format!("skyclaw-job-uids-{range}");
    let address = SocketAddr::from_abstract_name(name.as_bytes())?;
    UnixListener::bind_addr(&address).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => io::Error::new(
            e.kind(),
            "another process on this machine (another host) uses this range",
        ),
        _ => e,
    })
}

/// The first account or group (as `user NAME (uid N)`) whose id lies in
/// `range`, if any.
pub(crate) fn account_in(range: UidRange) -> Option<String> {
    ACCOUNT_FILES.iter().find_map(|file| {
        let content = std::fs::read_to_string(file).ok()?;
        first_in(&content, range).map(|(name, id)| format!("{name} (id {id}, in {file})"))
    })
}

/// The first `name:x:id:...` line of an account file with its id in `range`.
fn first_in(content: &str, range: UidRange) -> Option<(String, u32)> {
    content.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        range.contains(id).then(|| (name.to_string(), id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_round_and_are_never_held_twice() {
        let range = UidRange {
            first: 10,
            last: 12,
        };
        let pool = Arc::new(UidPool::new(range, claim(range).unwrap()));
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!((a.id(), b.id()), (10, 11));
        drop(a);
        let c = pool.take().unwrap();
        assert_eq!(c.id(), 12, "the next id in turn, not the one just freed");
        let d = pool.take().unwrap();
        assert_eq!(d.id(), 10, "wraps around to a free id");
        assert!(pool.take().is_none(), "every id is held");
        drop(b);
        assert_eq!(pool.take().unwrap().id(), 11);
    }

    #[test]
    fn a_range_is_claimed_by_one_process_at_a_time() {
        let range = UidRange {
            first: 20,
            last: 29,
        };
        let held = claim(range).unwrap();
        let err = claim(range).unwrap_err().to_string();
        assert!(err.contains("another host"), "{err}");
        drop(held);
        claim(range).unwrap();
    }

    #[test]
    fn accounts_inside_the_range_are_found() {
        let passwd = "root:x:0:0::/root:/bin/sh\nweird\nsvc:x:150:150::/:/bin/false\n";
        let range = UidRange {
            first: 100,
            last: 200,
        };
        assert_eq!(first_in(passwd, range), Some(("svc".to_string(), 150)));
        let none = UidRange {
            first: 300,
            last: 400,
        };
        assert_eq!(first_in(passwd, none), None);
    }
}
