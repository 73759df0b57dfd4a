//! Health of an instance: probing its health path over HTTP, and turning
//! probe results into healthy or unhealthy with the service's thresholds.

use std::net::SocketAddr;
use std::time::Duration;

use skyclaw_api::services::HealthCheck;

/// Probes instances' health paths; one per host, sharing its connections.
#[derive(Debug, Clone)]
pub(crate) struct Prober {
    client: reqwest::Client,
}

impl Prober {
    pub(crate) fn new() -> Result<Prober, String> {
        let client = reqwest::Client::builder()
            // Probes go to this machine's own instances, never through a proxy.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the health prober: {e}"))?;
        Ok(Prober { client })
    }

    /// `GET http://{addr}{path}`: `Ok` for a 2xx answer within `timeout`,
    /// else why not.
    pub(crate) async fn probe(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let url = format!("http://{addr}{path}");
        let answer = self
            .client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("health probe GET {path} failed: {}", without_url(&e)))?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("health probe GET {path} answered {status}"))
        }
    }
}

/// reqwest's error without the URL it names (the port is the host's
/// business, the path is named already), with its cause.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Consecutive probe results against the thresholds.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    successes: u32,
    failures: u32,
    healthy: bool,
}

impl Verdict {
    /// Not healthy until `healthy_threshold` probes in a row pass.
    pub(crate) fn new(check: &HealthCheck) -> Verdict {
        Verdict {
            healthy_threshold: check.healthy_threshold.max(1),
            unhealthy_threshold: check.unhealthy_threshold.max(1),
            successes: 0,
            failures: 0,
            healthy: false,
        }
    }

    /// Counts one probe; `Some(healthy)` when the verdict changed.
    pub(crate) fn observe(&mut self, passed: bool) -> Option<bool> {
        if passed {
            self.successes += 1;
            self.failures = 0;
            if !self.healthy && self.successes >= self.healthy_threshold {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.healthy && self.failures >= self.unhealthy_threshold {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_the_verdict() {
        let check = HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheck::default()
        };
        let mut verdict = Verdict::new(&check);
        assert_eq!(verdict.observe(true), None);
        assert_eq!(verdict.observe(false), None, "a failure resets the count");
        assert_eq!(verdict.observe(true), None);
        assert_eq!(verdict.observe(true), Some(true));
        assert_eq!(verdict.observe(false), None);
        assert_eq!(verdict.observe(false), None);
        assert_eq!(verdict.observe(true), None, "a pass resets the failures");
        for _ in 0..2 {
            assert_eq!(verdict.observe(false), None);
        }
        assert_eq!(verdict.observe(false), Some(false));
    }
}
