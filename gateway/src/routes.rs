//! The routing table: which services exist and their endpoints, rebuilt from
//! each endpoint set the coordinators publish (keeping what the gateway
//! learnt of endpoints that stay), and the round-robin choice among a
//! service's usable endpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use http::Uri;
use skyclaw_api::services::Endpoints;
use tokio::time::Instant;

use crate::budget::RetryBudget;
use crate::metrics::ServiceStats;
use crate::upstream::Upstream;

/// One service's endpoints.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub endpoints: Vec<Arc<Upstream>>,
    cursor: AtomicUsize,
    pub stats: Arc<ServiceStats>,
    pub budget: Arc<RetryBudget>,
}

impl Service {
    /// The next endpoint round-robin that is usable, not draining and not in
    /// `tried`; a draining one only when no other is left (an old version
    /// still serving while a rollout starts the new one).
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.contains(i));
        let mut draining = None;
        for i in candidates {
            let endpoint = &self.endpoints[i];
            if !endpoint.usable() {
                continue;
            }
            if !endpoint.draining() {
                return Some(i);
            }
            draining.get_or_insert(i);
        }
        draining
    }

    /// Whether one more endpoint may be ejected: at most the configured
    /// share of the service's endpoints is out at once, but one always may.
    pub fn may_eject(&self, max_percent: u32) -> bool {
        let n = self.endpoints.len();
        let out = self.endpoints.iter().filter(|e| e.ejected()).count();
        let allowed = (n * max_percent as usize / 100).max(1);
        out < allowed
    }
}

/// What a service keeps across snapshots.
type Kept = (Arc<ServiceStats>, Arc<RetryBudget>);

/// Every service, as of one endpoint set.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub index: u64,
    pub services: HashMap<String, Arc<Service>>,
}

/// The table the request path reads and discovery replaces.
#[derive(Debug, Default)]
pub struct Routes {
    current: RwLock<Arc<Snapshot>>,
    /// Stats and budgets by service name, kept across snapshots (and across
    /// a service's brief absence), so counters never go backwards.
    kept: Mutex<HashMap<String, Kept>>,
    freshness: Mutex<Freshness>,
}

/// Whether the table reflects what the coordinators say now.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    /// No endpoint set has been received yet.
    pub never_updated: bool,
    /// Since when no coordinator has answered, while routing on the last set.
    pub stale_since: Option<Instant>,
    pub last_error: Option<String>,
}

impl Routes {
    pub fn new() -> Routes {
        Routes {
            freshness: Mutex::new(Freshness {
                never_updated: true,
                ..Freshness::default()
            }),
            ..Routes::default()
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("routes lock").clone()
    }

    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        self.current
            .read()
            .expect("routes lock")
            .services
            .get(name)
            .cloned()
    }

    pub fn freshness(&self) -> Freshness {
        self.freshness.lock().expect("freshness lock").clone()
    }

    /// No coordinator answered: keep routing on what is known.
    pub fn mark_stale(&self, error: String, now: Instant) {
        let mut f = self.freshness.lock().expect("freshness lock");
        f.stale_since.get_or_insert(now);
        f.last_error = Some(error);
    }

    /// Replaces the table with `endpoints`. Endpoints that stay (same
    /// instance, same URL, same health path) keep their state; the new ones
    /// are returned, for probing.
    pub fn update(&self, endpoints: &Endpoints) -> Vec<Arc<Upstream>> {
        let old = self.snapshot();
        let mut kept = self.kept.lock().expect("kept lock");
        let mut fresh = Vec::new();
        let mut services = HashMap::with_capacity(endpoints.services.len());
        for listed in &endpoints.services {
            let previous = old.services.get(&listed.name);
            let mut upstreams = Vec::with_capacity(listed.endpoints.len());
            for endpoint in &listed.endpoints {
                let Some(authority) = base(&endpoint.url) else {
                    tracing::warn!(url = %endpoint.url, service = %listed.name, "skipping an endpoint whose URL is not http://host:port");
                    continue;
                };
                let same = previous.and_then(|s| {
                    s.endpoints.iter().find(|u| {
                        u.instance_id == endpoint.instance_id
                            && u.authority == authority
                            && u.health_path == listed.health_path
                    })
                });
                let upstream = match same {
                    Some(u) => {
                        u.set_draining(endpoint.draining);
                        u.clone()
                    }
                    None => {
                        let u = Arc::new(Upstream::new(
                            endpoint.instance_id.clone(),
                            authority,
                            listed.health_path.clone(),
                            endpoint.draining,
                        ));
                        fresh.push(u.clone());
                        u
                    }
                };
                upstreams.push(upstream);
            }
            let (stats, budget) = kept
                .entry(listed.name.clone())
                .or_insert_with(|| {
                    (
                        Arc::new(ServiceStats::default()),
                        Arc::new(RetryBudget::new()),
                    )
                })
                .clone();
            let cursor = previous.map_or(0, |s| s.cursor.load(Ordering::Relaxed));
            services.insert(
                listed.name.clone(),
                Arc::new(Service {
                    name: listed.name.clone(),
                    endpoints: upstreams,
                    cursor: AtomicUsize::new(cursor),
                    stats,
                    budget,
                }),
            );
        }
        drop(kept);
        *self.current.write().expect("routes lock") = Arc::new(Snapshot {
            index: endpoints.index,
            services,
        });
        let mut f = self.freshness.lock().expect("freshness lock");
        *f = Freshness::default();
        fresh
    }
}

/// The authority of an endpoint URL (`http://127.0.0.1:20001`); hosts
/// serve their instances in the clear on their own address, so any other
/// scheme is refused.
fn base(url: &str) -> Option<http::uri::Authority> {
    let uri: Uri = url.parse().ok()?;
    let parts = uri.into_parts();
    if parts.scheme? != http::uri::Scheme::HTTP {
        return None;
    }
    parts.authority
}

/// Which service a request is for, and the path to send it with: borrowed
/// from the request, so that routing one copies nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub service: &'a str,
    /// The path the endpoint gets (the `/s/<service>` prefix gone).
    path: &'a str,
    query: Option<&'a str>,
}

impl Target<'_> {
    /// The request target the endpoint gets: path and query.
    pub fn upstream_uri(&self) -> Result<Uri, http::uri::InvalidUri> {
        match self.query {
            Some(query) => {
                let mut target = String::with_capacity(self.path.len() + 1 + query.len());
                target.push_str(self.path);
                target.push('?');
                target.push_str(query);
                Uri::try_from(target)
            }
            None => Uri::try_from(self.path),
        }
    }
}

/// Why a request names no service.
#[derive(Debug, PartialEq, Eq)]
pub struct NoService;

/// Finds the service a request names: the path prefix `/s/<service>/…`
/// first, else `Host: <service>.<domain>`. `host` and `domain` are
/// lowercase.
pub fn target<'a>(
    uri: &'a Uri,
    host: Option<&'a str>,
    domain: Option<&str>,
) -> Result<Target<'a>, NoService> {
    let path = uri.path();
    let query = uri.query();
    if let Some(rest) = path.strip_prefix(skyclaw_api::service_client::SERVICE_PATH_PREFIX) {
        let (service, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if service.is_empty() {
            return Err(NoService);
        }
        return Ok(Target {
            service,
            path: tail,
            query,
        });
    }
    let (Some(host), Some(domain)) = (host, domain) else {
        return Err(NoService);
    };
    let name = host_without_port(host);
    let service = name
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
        .filter(|label| !label.is_empty() && !label.contains('.'))
        .ok_or(NoService)?;
    Ok(Target {
        service,
        path,
        query,
    })
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use skyclaw_api::services::{Endpoint, ServiceEndpoints, ServiceKind};

    use super::*;

    #[test]
    fn targets_by_prefix_and_by_host() {
        let uri: Uri = "/s/ts-api/hello/x?a=1".parse().unwrap();
        let t = target(&uri, Some("gw.example.org"), Some("example.org")).unwrap();
        assert_eq!(t.service, "ts-api");
        assert_eq!(t.upstream_uri().unwrap(), "/hello/x?a=1");
        let bare: Uri = "/s/ts-api?a=1".parse().unwrap();
        assert_eq!(
            target(&bare, None, None).unwrap().upstream_uri().unwrap(),
            "/?a=1"
        );
        let uri: Uri = "/hello".parse().unwrap();
        let t = target(&uri, Some("ts-api.localhost:8788"), Some("localhost")).unwrap();
        assert_eq!(t.service, "ts-api");
        assert_eq!(t.upstream_uri().unwrap(), "/hello");
        assert_eq!(
            target(&uri, Some("localhost:8788"), Some("localhost")),
            Err(NoService)
        );
        assert_eq!(
            target(&uri, Some("a.b.localhost"), Some("localhost")),
            Err(NoService)
        );
        assert_eq!(
            target(&uri, Some("evil-localhost"), Some("localhost")),
            Err(NoService)
        );
        assert_eq!(target(&uri, Some("ts-api.localhost"), None), Err(NoService));
    }

    fn set(index: u64, urls: &[(&str, &str, bool)]) -> Endpoints {
        Endpoints {
            index,
            services: vec![ServiceEndpoints {
                name: "web".into(),
                kind: ServiceKind::Native,
                version: 1,
                health_path: "/health".into(),
                endpoints: urls
                    .iter()
                    .map(|(id, url, draining)| Endpoint {
                        instance_id: id.to_string(),
                        url: url.to_string(),
                        version: 1,
                        draining: *draining,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn updates_keep_the_state_of_endpoints_that_stay() {
        let routes = Routes::new();
        let fresh = routes.update(&set(
            1,
            &[
                ("a", "http://127.0.0.1:1", false),
                ("b", "http://127.0.0.1:2", false),
            ],
        ));
        assert_eq!(fresh.len(), 2);
        let a = routes.service("web").unwrap().endpoints[0].clone();
        let fresh = routes.update(&set(
            2,
            &[
                ("a", "http://127.0.0.1:1", true),
                ("c", "http://127.0.0.1:3", false),
            ],
        ));
        assert_eq!(fresh.len(), 1, "only c is new");
        let web = routes.service("web").unwrap();
        assert!(Arc::ptr_eq(&web.endpoints[0], &a));
        assert!(a.draining());
        assert_eq!(routes.snapshot().index, 2);
    }

    #[test]
    fn round_robin_skips_what_is_tried_and_prefers_what_does_not_drain() {
        let routes = Routes::new();
        routes.update(&set(
            1,
            &[
                ("a", "http://127.0.0.1:1", true),
                ("b", "http://127.0.0.1:2", false),
                ("c", "http://127.0.0.1:3", false),
            ],
        ));
        let web = routes.service("web").unwrap();
        let picks: Vec<_> = (0..4).map(|_| web.pick(&[]).unwrap()).collect();
        assert!(
            picks.iter().all(|&i| i != 0),
            "the draining one waits: {picks:?}"
        );
        assert!(picks.contains(&1) && picks.contains(&2));
        assert_eq!(web.pick(&[1, 2]), Some(0), "unless nothing else is left");
        assert_eq!(web.pick(&[0, 1, 2]), None);
    }

    #[test]
    fn at_most_the_share_is_ejected_but_one_always_may_be() {
        let routes = Routes::new();
        routes.update(&set(
            1,
            &[
                ("a", "http://127.0.0.1:1", false),
                ("b", "http://127.0.0.1:2", false),
                ("c", "http://127.0.0.1:3", false),
            ],
        ));
        let web = routes.service("web").unwrap();
        let o = crate::config::OutlierSettings::default();
        assert!(web.may_eject(50));
        web.endpoints[0].eject(&o, Instant::now());
        assert!(!web.may_eject(50), "one of three is the 50% share");
        assert!(web.may_eject(100));
    }
}
