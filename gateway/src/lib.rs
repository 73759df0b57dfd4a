//! The Skyclaw gateway: a reverse proxy anyone may run in front of the
//! network. It learns which service endpoints exist from the coordinators
//! (`discovery`), decides for itself which it uses (`upstream`: active
//! probes and passive ejection), balances round-robin over them
//! (`routes`), forwards each request (`proxy`, `forward`, `body`, `pool`,
//! `upgrade`), retries only where safe and within a budget (`budget`),
//! registers itself so clients can find it (`register`), and serves its
//! own `/health` and `/metrics` on a separate listener (`admin`,
//! `metrics`).

mod admin;
mod body;
mod budget;
mod config;
mod discovery;
mod forward;
mod metrics;
mod pool;
mod probe;
mod proxy;
mod register;
mod routes;
mod tls;
mod upgrade;
mod upstream;

use std::future::Future;
use std::sync::Arc;

use skyclaw_api::serve::{self, Protocols};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use budget::WINDOW_SECS as RETRY_BUDGET_WINDOW_SECS;
pub use config::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_SHUTDOWN_GRACE, GatewayConfig, OutlierSettings, ProbeSettings,
    RetrySettings, Timeouts, TlsFiles,
};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Client(#[from] skyclaw_api::ClientError),
}

/// Runs a gateway on `listener` (service traffic) and `admin` (`/health`,
/// `/metrics`) until `shutdown` resolves; then stops accepting, lets requests
/// in progress finish within the configured grace, and returns.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    config.validate()?;
    let tls = match &config.tls {
        Some(files) => Some(tls::acceptor(files).await?),
        None => None,
    };
    let client = skyclaw_api::Client::new(&config.coordinators, config.credentials.clone())?;
    let gateway = proxy::Gateway::new(&config, tls.is_some());
    let (stop, stopping) = watch::channel(false);

    let discovery = tokio::spawn(discovery::watch(
        client.clone(),
        gateway.routes.clone(),
        gateway.probes(),
        gateway.metrics.clone(),
        stopping.clone(),
    ));
    let registration = config.public_url.clone().map(|url| {
        tokio::spawn(register::heartbeat(
            client.clone(),
            url,
            gateway.metrics.clone(),
            stopping.clone(),
        ))
    });
    let admin_state = admin::Admin {
        routes: gateway.routes.clone(),
        metrics: gateway.metrics.clone(),
        listener_stats: gateway.listener_stats.clone(),
        pool: gateway.pool.stats(),
        public_url: config.public_url.clone(),
    };
    let admin_task = tokio::spawn(serve::serve(
        admin,
        admin::router(Arc::new(admin_state)),
        serve::Limits::default(),
        Arc::new(serve::Stats::default()),
        until_true(stopping.clone()),
    ));

    let protocols = Protocols {
        tls,
        http2_and_upgrades: true,
    };
    let listener_stats = gateway.listener_stats.clone();
    let limits = config.limits;
    let grace = config.shutdown_grace;
    let gateway = Arc::new(gateway);
    let mut serving = tokio::spawn(serve::serve_with(
        listener,
        move |peer| proxy::service(gateway.clone(), peer),
        limits,
        protocols,
        listener_stats,
        until_true(stopping.clone()),
    ));
    tokio::select! {
        () = shutdown => {}
        _ = &mut serving => {}
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "gateway stopping: draining requests in progress"
    );
    let _ = stop.send(true);
    if tokio::time::timeout(grace, &mut serving).await.is_err() {
        tracing::warn!("requests still in progress after the grace period; closing them");
        serving.abort();
    }
    discovery.abort();
    if let Some(task) = registration {
        task.abort();
    }
    let _ = admin_task.await;
    Ok(())
}

/// Resolves once `flag` turns true (or its sender is gone).
async fn until_true(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}
