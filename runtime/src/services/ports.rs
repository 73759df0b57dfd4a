//! The ports a host gives its service instances: a range the owner opened
//! (`--service-ports START-END`), handed out one per instance and taken back
//! when the instance stops.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// An inclusive range of TCP ports, written `START-END`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// How many ports the range holds (never zero).
    pub fn count(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<PortRange, String> {
        let bad = || format!("{s:?} is not a port range (expected START-END, such as 20000-20999)");
        let (first, last) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

/// The ports of a range not held by an instance. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Ports {
    range: PortRange,
    held: Arc<Mutex<BTreeSet<u16>>>,
}

/// A port an instance holds; back in the range when dropped.
#[derive(Debug)]
pub(crate) struct HeldPort {
    port: u16,
    held: Arc<Mutex<BTreeSet<u16>>>,
}

impl HeldPort {
    pub(crate) fn get(&self) -> u16 {
        self.port
    }
}

impl Drop for HeldPort {
    fn drop(&mut self) {
        self.held.lock().expect("port lock").remove(&self.port);
    }
}

impl Ports {
    pub(crate) fn new(range: PortRange) -> Ports {
        Ports {
            range,
            held: Arc::default(),
        }
    }

    pub(crate) fn range(&self) -> PortRange {
        self.range
    }

    /// A port no instance holds and nothing else on the machine listens on
    /// now (checked by binding it on every address): something else may
    /// take it before the instance binds, and the instance then gets another
    /// one when it restarts. `None` when every port of the range is taken.
    pub(crate) fn take(&self) -> Option<HeldPort> {
        let mut held = self.held.lock().expect("port lock");
        // Start past the last port given out, so a port just freed (perhaps
        // still in TIME_WAIT, or held by a process not yet gone) rests.
        let after = held.last().copied().unwrap_or(self.range.last);
        let ordered = (after.saturating_add(1)..=self.range.last).chain(self.range.first..=after);
        for port in ordered {
            if port < self.range.first || held.contains(&port) || !is_free(port) {
                continue;
            }
            held.insert(port);
            return Some(HeldPort {
                port,
                held: Arc::clone(&self.held),
            });
        }
        None
    }
}

/// True when nothing listens on `port` of any address now.
fn is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        let range: PortRange = "20000-20009".parse().unwrap();
        assert_eq!(range.count(), 10);
        assert_eq!(range.to_string(), "20000-20009");
        for bad in ["", "5", "10-5", "0-10", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ports_are_held_once_and_skip_busy_ones() {
        // A range of one port, kept busy by a listener at first.
        let busy = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let ports = Ports::new(PortRange {
            first: port,
            last: port,
        });
        assert!(
            ports.take().is_none(),
            "a port something listens on is skipped"
        );
        drop(busy);
        let taken = ports.take().expect("the port, once free");
        assert_eq!(taken.get(), port);
        assert!(
            ports.take().is_none(),
            "a held port is not handed out twice"
        );
        drop(taken);
        assert_eq!(ports.take().map(|p| p.get()), Some(port));
    }
}
