//! The leader's placement duty: reads every service and the live hosts,
//! asks `scheduler::placement` for the plan, and proposes its steps (new
//! instances with ids drawn here, stops, ends of rollouts, waiting reasons).
//! Each step is applied before the next look, so a plan never repeats
//! itself; a step the state moved past answers a conflict, which is normal.

use rand::RngCore;
use skyclaw_api::now_ms;

use crate::cluster::ClusterError;
use crate::node::Node;
use crate::scheduler::placement::{self, Step};
use crate::state::{Command, services};

/// Looks once and proposes what the plan says.
pub async fn reconcile(node: &Node) -> Result<(), ClusterError> {
    let (services, orphans) = node
        .store
        .scan(|c| Ok((services::list(c, None)?, services::orphans(c)?)))
        .await?;
    if services.is_empty() {
        return Ok(());
    }
    let live = node.liveness.up_hosts();
    let plan = placement::plan(&services, &orphans, &live, now_ms());
    for step in plan.steps {
        let command = command(step);
        if let Err(refused) = node.propose(command, None).await?.outcome {
            tracing::debug!(reason = %refused, "placement step skipped");
        }
    }
    if !plan.waiting.is_empty() {
        let reasons = plan.waiting;
        node.propose(Command::SetServiceWaiting { reasons }, None)
            .await?;
    }
    Ok(())
}

fn command(step: Step) -> Command {
    let now = now_ms();
    match step {
        Step::Place {
            service,
            version,
            hosts,
        } => {
            tracing::info!(%service, version, ?hosts, "placing instances");
            Command::PlaceInstances {
                service,
                version,
                placements: hosts.into_iter().map(|h| (new_instance_id(), h)).collect(),
                now,
            }
        }
        Step::Stop { ids } => {
            tracing::info!(instances = ?ids, "stopping instances");
            Command::StopInstances { ids, now }
        }
        Step::Finish {
            service,
            version,
            status,
            reason,
        } => {
            tracing::info!(%service, version, status = status.as_str(), ?reason, "rollout ended");
            Command::FinishDeploy {
                service,
                version,
                status,
                reason,
                now,
            }
        }
    }
}

/// `i-` and 64 random bits, hex: unique among a service's instances for its life.
fn new_instance_id() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("i-{}", hex::encode(bytes))
}
