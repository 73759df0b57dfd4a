//! Reporting a job's end to the coordinators, retried through outages under
//! one idempotency key so that a completion is applied once however often it
//! is sent.

use std::time::Duration;

use skyclaw_api::hosts::Complete;
use skyclaw_api::{Client, ClientError, ErrorCode};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;

/// How long a completion is retried while no coordinator takes it: long enough
/// to ride out a coordinator restart or a leader election. Past it the lease
/// has long expired and the job has been requeued anyway.
pub const REPORT_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// First pause before retrying a completion.
const REPORT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between retries: a restarted coordinator hears from us soon.
const REPORT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// True when the request may not have been answered, or the answer says
/// nothing about the request: sending it again (with the same key) is right.
pub(crate) fn is_retryable(error: &ClientError) -> bool {
    error.is_transient() || answer_was_lost(error)
}

/// True when no coordinator's answer arrived: the request may have been applied.
pub(crate) fn answer_was_lost(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Unavailable { .. } | ClientError::Decode { .. }
    )
}

/// Sends the completion until a coordinator takes or refuses it, or `deadline`
/// passes.
pub(crate) async fn report(client: &Client, job_id: &str, complete: &Complete, deadline: Instant) {
    let key = format!("complete-{job_id}-{}", complete.lease_token);
    let mut backoff = Backoff::new(REPORT_BACKOFF_MIN, REPORT_BACKOFF_MAX);
    let mut attempt = 1u32;
    loop {
        let error = match client.complete_job(job_id, complete, &key).await {
            Ok(job) => {
                info!(job_id, status = %job.status, attempt, "job reported");
                return;
            }
            Err(e) => e,
        };
        match error.code() {
            Some(ErrorCode::StaleLease | ErrorCode::Conflict) => {
                info!(job_id, error = %error, "completion refused: the job was cancelled or leased elsewhere; dropping it");
                return;
            }
            _ if !is_retryable(&error) => {
                error!(job_id, error = %error, "completion refused; dropping it");
                return;
            }
            _ => {}
        }
        let delay = backoff.next_delay();
        if Instant::now() + delay > deadline {
            error!(job_id, attempt, error = %error, "cannot report job before the deadline; giving up");
            return;
        }
        if attempt == 1 {
            warn!(job_id, error = %error, "cannot report job yet; retrying");
        } else {
            debug!(job_id, attempt, error = %error, "cannot report job yet; retrying");
        }
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}
