//! The coordinator's HTTP API: routes, and the layers every route shares
//! (forwarding to the leader, body limits, timeout, tracing, JSON 404/405).
//! Artifact transfers have limits of their own instead of the body limit and
//! the request timeout.

mod apikeys;
mod artifacts;
pub mod auth;
mod extract;
mod forward;
mod gateways;
mod hosts;
mod jobs;
mod logs;
mod network;
mod raft;
mod services;
mod system;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware;
use axum::routing::{MethodFilter, MethodRouter, on};
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::error::ApiError;
use crate::node::Node;

/// Longest any request may take, artifact transfers aside. Long-polls cap
/// their own waits well below it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest an artifact upload may go without sending more of its body: a big
/// upload takes as long as it keeps moving, a stalled one is dropped.
const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest completion body: a job's result carries up to two output streams
/// of the host's `--max-output-bytes` (at most
/// [`skyclaw_api::jobs::MAX_OUTPUT_BYTES_LIMIT`] each), which JSON escaping
/// can double, and a batch carries many small results.
pub const COMPLETION_BODY_LIMIT: usize =
    4 * skyclaw_api::jobs::MAX_OUTPUT_BYTES_LIMIT + 1024 * 1024;

/// Who may call a route. Each handler's extractors enforce it
/// ([`auth::ClusterToken`], [`auth::Principal`]); the route table states it,
/// so that the tests probe the router's own list rather than a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health and metrics.
    Open,
    /// The cluster token only: hosts, peers and administration.
    Token,
    /// The token, or an API key with the route's scope.
    TokenOrKey,
}

/// One route the coordinator serves.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    /// The path pattern, with `{name}` for each parameter.
    pub path: &'static str,
    pub access: Access,
}

/// Which layers a route sits under.
enum Group {
    /// The body limit and the request timeout.
    Api,
    /// Raft RPC between coordinators: the Raft body limit and the timeout.
    Raft,
    /// Artifact blobs: streamed without a body limit (uploads enforce the
    /// artifact size limit themselves) or a request timeout, but dropped
    /// when the body stalls.
    Transfer,
}

struct Entry {
    route: Route,
    group: Group,
    handler: MethodRouter<Arc<Node>>,
}

fn entry<H, T>(
    group: Group,
    method: Method,
    path: &'static str,
    access: Access,
    handler: H,
) -> Entry
where
    H: Handler<T, Arc<Node>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
    Entry {
        route: Route {
            method,
            path,
            access,
        },
        group,
        handler: on(filter, handler),
    }
}

impl Entry {
    /// Gives the route a body limit of its own instead of the group's.
    fn body_limit(mut self, bytes: usize) -> Entry {
        self.handler = self.handler.layer(DefaultBodyLimit::max(bytes));
        self
    }
}

/// Every route: the one list the router is built from.
fn table() -> Vec<Entry> {
    use crate::cluster::network::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
    use Access::{Open, Token, TokenOrKey};
    use Group::{Api, Raft, Transfer};
    vec![
        entry(Api, Method::GET, "/health", Open, system::health),
        entry(Api, Method::GET, "/metrics", Open, system::metrics),
        entry(Api, Method::GET, "/v1/hosts", Token, hosts::list),
        entry(
            Api,
            Method::POST,
            "/v1/hosts/register",
            Token,
            hosts::register,
        ),
        entry(
            Api,
            Method::POST,
            "/v1/hosts/{id}/heartbeat",
            Token,
            hosts::heartbeat,
        ),
        entry(
            Api,
            Method::POST,
            "/v1/hosts/{id}/claim",
            Token,
            hosts::claim,
        ),
        entry(
            Api,
            Method::POST,
            "/v1/hosts/{id}/complete",
            Token,
            hosts::complete_many,
        )
        .body_limit(COMPLETION_BODY_LIMIT),
        entry(
            Api,
            Method::GET,
            "/v1/hosts/{id}/assignments",
            Token,
            services::assignments,
        ),
        entry(
            Api,
            Method::POST,
            "/v1/hosts/{id}/instances",
            Token,
            services::report,
        ),
        entry(Api, Method::GET, "/v1/services", TokenOrKey, services::list),
        entry(
            Api,
            Method::PUT,
            "/v1/services/{name}",
            TokenOrKey,
            services::put,
        ),
        entry(
            Api,
            Method::GET,
            "/v1/services/{name}",
            TokenOrKey,
            services::get,
        ),
        entry(
            Api,
            Method::DELETE,
            "/v1/services/{name}",
            TokenOrKey,
            services::delete,
        ),
        entry(
            Api,
            Method::POST,
            "/v1/services/{name}/scale",
            TokenOrKey,
            services::scale,
        ),
        entry(
            Api,
            Method::GET,
            "/v1/services/{name}/logs",
            TokenOrKey,
            logs::logs,
        ),
        entry(
            Api,
            Method::GET,
            "/v1/endpoints",
            TokenOrKey,
            services::endpoints,
        ),
        entry(
            Api,
            Method::POST,
            "/v1/gateways/heartbeat",
            TokenOrKey,
            gateways::heartbeat,
        ),
        entry(Api, Method::GET, "/v1/gateways", TokenOrKey, gateways::list),
        entry(Api, Method::POST, "/v1/jobs", TokenOrKey, jobs::submit),
        entry(Api, Method::GET, "/v1/jobs", TokenOrKey, jobs::list),
        entry(Api, Method::GET, "/v1/jobs/{id}", TokenOrKey, jobs::get),
        entry(
            Api,
            Method::GET,
            "/v1/jobs/{id}/wait",
            TokenOrKey,
            jobs::wait,
        ),
        entry(
            Api,
            Method::POST,
            "/v1/jobs/{id}/cancel",
            TokenOrKey,
            jobs::cancel,
        ),
        entry(Api, Method::POST, "/v1/apikeys", Token, apikeys::create),
        entry(Api, Method::GET, "/v1/apikeys", Token, apikeys::list),
        entry(
            Api,
            Method::DELETE,
            "/v1/apikeys/{id}",
            Token,
            apikeys::revoke,
        ),
        entry(Api, Method::GET, "/v1/whoami", TokenOrKey, apikeys::whoami),
        entry(
            Api,
            Method::GET,
            "/v1/network/peers",
            TokenOrKey,
            network::peers,
        ),
        entry(
            Api,
            Method::DELETE,
            "/v1/network/peers/{id}",
            Token,
            network::remove,
        ),
        entry(Api, Method::POST, "/v1/network/join", Token, network::join),
        entry(
            Api,
            Method::GET,
            artifacts::ARTIFACTS_PATH,
            TokenOrKey,
            artifacts::list,
        ),
        entry(
            Api,
            Method::POST,
            artifacts::ARTIFACTS_PATH,
            Token,
            artifacts::record,
        ),
        entry(Raft, Method::POST, APPEND_PATH, Token, raft::append),
        entry(Raft, Method::POST, VOTE_PATH, Token, raft::vote),
        entry(Raft, Method::POST, SNAPSHOT_PATH, Token, raft::snapshot),
        entry(
            Transfer,
            Method::PUT,
            artifacts::BLOB_PATH,
            TokenOrKey,
            artifacts::upload,
        ),
        entry(
            Transfer,
            Method::GET,
            artifacts::BLOB_PATH,
            TokenOrKey,
            artifacts::download,
        ),
        entry(
            Transfer,
            Method::HEAD,
            artifacts::BLOB_PATH,
            TokenOrKey,
            artifacts::head,
        ),
    ]
}

/// Every route the coordinator serves, with who may call it.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|e| e.route).collect()
}

pub fn router(node: Arc<Node>, max_body_bytes: usize) -> Router {
    let (mut api, mut raft, mut transfers) = (Router::new(), Router::new(), Router::new());
    for Entry {
        route,
        group,
        handler,
    } in table()
    {
        let routes = match group {
            Group::Api => &mut api,
            Group::Raft => &mut raft,
            Group::Transfer => &mut transfers,
        };
        // Routes on one path with different methods merge.
        *routes = std::mem::take(routes).route(route.path, handler);
    }
    let api = api.layer(DefaultBodyLimit::max(max_body_bytes));
    let raft = raft.layer(DefaultBodyLimit::max(
        crate::cluster::network::RAFT_BODY_LIMIT,
    ));
    let transfers = transfers.layer(RequestBodyTimeoutLayer::new(UPLOAD_IDLE_TIMEOUT));
    api.merge(raft)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(request_timed_out))
                .timeout(REQUEST_TIMEOUT),
        )
        .merge(transfers)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            node.clone(),
            forward::to_leader,
        ))
        // 5xx answers (no quorum, a leader change) are expected during
        // failover; they are the caller's to report, not an error here.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .with_state(node)
}

/// The only error the layers below the timeout raise is the timeout itself.
async fn request_timed_out(_: tower::BoxError) -> ApiError {
    ApiError::Timeout(format!(
        "the request took longer than {} s",
        REQUEST_TIMEOUT.as_secs()
    ))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this route".into())
}
