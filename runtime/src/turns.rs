//! Turn-taking per artifact: work on one digest (a download, a compile) runs
//! one task at a time, while work on different digests runs in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use skyclaw_api::artifacts::Digest;
use tokio::sync::OwnedMutexGuard;

type Gate = Arc<tokio::sync::Mutex<()>>;

/// One lock per digest that someone is working on or waiting for.
#[derive(Default)]
pub(crate) struct Turns {
    gates: Mutex<HashMap<Digest, Gate>>,
}

/// The turn on one digest; the next waiter goes when it is dropped.
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    digest: Digest,
    guard: OwnedMutexGuard<()>,
}

impl Turns {
    /// Waits until no other task holds the turn on `digest`, then takes it.
    pub(crate) async fn take(&self, digest: &Digest) -> Turn<'_> {
        let gate = Arc::clone(self.lock().entry(digest.clone()).or_default());
        Turn {
            turns: self,
            digest: digest.clone(),
            guard: gate.lock_owned().await,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Gate>> {
        self.gates.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut gates = self.turns.lock();
        // Only the map and this turn hold the gate: nobody waits for it.
        if Arc::strong_count(OwnedMutexGuard::mutex(&self.guard)) == 2 {
            gates.remove(&self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_turn_per_digest_and_no_leftovers() {
        let turns = Turns::default();
        let a = Digest::from_sha256(&[1; 32]);
        let b = Digest::from_sha256(&[2; 32]);
        let first = turns.take(&a).await;
        // Another digest is not held up.
        let other = turns.take(&b).await;
        drop(other);
        let second = turns.take(&a);
        tokio::pin!(second);
        assert!(futures_poll_once(second.as_mut()).await.is_none());
        drop(first);
        drop(second.await);
        assert!(turns.lock().is_empty());
    }

    /// Polls a future once: `Some` if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = std::future::ready(()) => None,
        }
    }
}
