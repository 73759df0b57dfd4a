//! Reporting jobs' ends to the coordinators: completions that finish close
//! together go in one request, and are retried through outages; each carries
//! its lease, so it is applied once however often it is sent.

use std::time::Duration;

use skyclaw_api::hosts::{Complete, CompleteMany, Completion, MAX_COMPLETE_BATCH};
use skyclaw_api::{Client, ClientError, ErrorBody, ErrorCode};
use tokio::sync::{mpsc, oneshot};
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
/// Output bytes one batch carries before the rest waits for the next: keeps
/// each request far below the coordinators' body limit (a completion that is
/// larger on its own goes alone).
const BATCH_OUTPUT_BYTES: usize = 512 * 1024;

/// True when the request may not have been answered, or the answer says
/// nothing about the request: sending it again is right.
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

/// A completion waiting to be sent, and the job task waiting for it.
struct Pending {
    completion: Completion,
    deadline: Instant,
    settled: oneshot::Sender<()>,
}

/// Hands completions to the task that sends them; cheap to clone.
#[derive(Clone)]
pub(crate) struct Reporter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Reporter {
    /// Starts the sending task for `host_id`; it ends once every
    /// [`Reporter`] is dropped and the queue is empty.
    pub(crate) fn start(
        client: Client,
        host_id: String,
    ) -> (Reporter, tokio::task::JoinHandle<()>) {
        let (queue, pending) = mpsc::unbounded_channel();
        let task = tokio::spawn(send_loop(client, host_id, pending));
        (Reporter { queue }, task)
    }

    /// Reports a job's end; resolves once a coordinator recorded or refused
    /// it, or [`REPORT_DEADLINE`] passed.
    pub(crate) async fn report(&self, job_id: &str, complete: Complete) {
        let (settled, wait) = oneshot::channel();
        let pending = Pending {
            completion: Completion {
                job_id: job_id.to_string(),
                complete,
            },
            deadline: Instant::now() + REPORT_DEADLINE,
            settled,
        };
        if self.queue.send(pending).is_ok() {
            let _ = wait.await;
        }
    }
}

/// Sends what is queued, a batch at a time, retrying what is not settled.
async fn send_loop(client: Client, host_id: String, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let mut waiting: Vec<Pending> = Vec::new();
    let mut backoff = Backoff::new(REPORT_BACKOFF_MIN, REPORT_BACKOFF_MAX);
    loop {
        if waiting.is_empty() && queue.recv_many(&mut waiting, MAX_COMPLETE_BATCH).await == 0 {
            return;
        }
        while waiting.len() < MAX_COMPLETE_BATCH {
            match queue.try_recv() {
                Ok(pending) => waiting.push(pending),
                Err(_) => break,
            }
        }
        let batch = take_batch(&mut waiting);
        let retry = send_batch(&client, &host_id, batch).await;
        if retry.is_empty() {
            backoff.reset();
            continue;
        }
        let delay = backoff.next_delay();
        let now = Instant::now();
        for pending in retry {
            if now + delay > pending.deadline {
                error!(job_id = %pending.completion.job_id, "cannot report job before the deadline; giving up");
            } else {
                waiting.push(pending);
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// The oldest completions, as many as fit one request.
fn take_batch(waiting: &mut Vec<Pending>) -> Vec<Pending> {
    let mut bytes = 0;
    let mut count = 0;
    for pending in waiting.iter() {
        let result = &pending.completion.complete.result;
        bytes += result.stdout.len() + result.stderr.len();
        if count == MAX_COMPLETE_BATCH || (count > 0 && bytes > BATCH_OUTPUT_BYTES) {
            break;
        }
        count += 1;
    }
    waiting.drain(..count).collect()
}

/// Sends one batch; returns the completions to send again.
async fn send_batch(client: &Client, host_id: &str, batch: Vec<Pending>) -> Vec<Pending> {
    let request = CompleteMany {
        completions: batch.iter().map(|p| p.completion.clone()).collect(),
    };
    match client.complete_many(host_id, &request).await {
        Ok(answer) => {
            let mut retry = Vec::new();
            for (pending, result) in batch.into_iter().zip(answer.results) {
                match result.error {
                    None => {
                        debug!(job_id = %result.job_id, "job reported");
                        let _ = pending.settled.send(());
                    }
                    Some(error) if is_transient_code(&error) => {
                        debug!(job_id = %result.job_id, error = %error.message, "cannot report job yet; retrying");
                        retry.push(pending);
                    }
                    Some(error) => {
                        settle_refused(&result.job_id, &error);
                        let _ = pending.settled.send(());
                    }
                }
            }
            retry
        }
        Err(e) if is_retryable(&e) => {
            warn!(jobs = batch.len(), error = %e, "cannot report jobs yet; retrying");
            batch
        }
        Err(e) => {
            error!(jobs = batch.len(), error = %e, "completions refused; dropping them");
            Vec::new()
        }
    }
}

/// Codes that say nothing about the completion itself: a later try may land.
fn is_transient_code(error: &ErrorBody) -> bool {
    matches!(
        error.code,
        ErrorCode::Unavailable | ErrorCode::NoQuorum | ErrorCode::Timeout | ErrorCode::Internal
    )
}

fn settle_refused(job_id: &str, error: &ErrorBody) {
    match error.code {
        ErrorCode::StaleLease | ErrorCode::Conflict => info!(
            job_id,
            error = %error.message,
            "completion refused: the job was cancelled or leased elsewhere; dropping it"
        ),
        _ => error!(job_id, error = %error.message, "completion refused; dropping it"),
    }
}
