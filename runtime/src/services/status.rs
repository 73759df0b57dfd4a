//! An instance's state as its host reports it: every change is queued for the
//! coordinators at once, and the latest is what the supervisor shows in
//! `/metrics` and reports again when the host drains.

use std::sync::Mutex;

use skyclaw_api::services::{InstanceReport, InstanceState, MAX_LAST_ERROR_BYTES};

use super::reports::StateReports;

/// The state of one instance, as last reported.
pub(crate) struct Status {
    current: Mutex<InstanceReport>,
    reports: StateReports,
}

impl Status {
    /// A new instance: pending until its task reports otherwise.
    pub(crate) fn new(instance_id: &str, reports: StateReports) -> Status {
        Status {
            current: Mutex::new(InstanceReport {
                instance_id: instance_id.to_string(),
                state: InstanceState::Pending,
                endpoint: None,
                restarts: 0,
                last_error: None,
            }),
            reports,
        }
    }

    /// Changes the state and reports it, when it changed.
    pub(crate) fn set(&self, change: impl FnOnce(&mut InstanceReport)) {
        let mut current = self.current.lock().expect("status lock");
        let before = current.clone();
        change(&mut current);
        if let Some(error) = &mut current.last_error {
            truncate_at_char(error, MAX_LAST_ERROR_BYTES);
        }
        if *current != before {
            self.reports.report(current.clone());
        }
    }

    /// Moves to `state`; only a healthy instance keeps its endpoint.
    pub(crate) fn enter(&self, state: InstanceState, endpoint: Option<String>) {
        self.set(|r| {
            r.state = state;
            r.endpoint = endpoint;
        });
    }

    /// The instance cannot run: failed, with why.
    pub(crate) fn fail(&self, error: String) {
        self.set(|r| {
            r.state = InstanceState::Failed;
            r.endpoint = None;
            r.last_error = Some(error);
        });
    }

    pub(crate) fn snapshot(&self) -> InstanceReport {
        self.current.lock().expect("status lock").clone()
    }

    pub(crate) fn state(&self) -> InstanceState {
        self.current.lock().expect("status lock").state
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_at_a_character() {
        let mut text = "é".repeat(MAX_LAST_ERROR_BYTES);
        truncate_at_char(&mut text, MAX_LAST_ERROR_BYTES - 1);
        assert!(text.len() < MAX_LAST_ERROR_BYTES);
        assert!(text.chars().all(|c| c == 'é'));
    }
}
