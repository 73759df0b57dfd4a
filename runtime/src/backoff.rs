//! Capped exponential backoff with jitter, for retrying coordinators that are
//! down or busy without spinning and without every host retrying in step.

use std::time::Duration;

/// Delays that start at `min`, double on each failure up to `max`, and go back
/// to `min` after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        debug_assert!(min <= max && !min.is_zero());
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt: the current step less up to a
    /// quarter of it at random.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(1.0 - rand::random::<f64>() / 4.0)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(2000);
        let mut b = Backoff::new(min, max);
        let first = b.next_delay();
        assert!(first <= min && first >= min * 3 / 4, "{first:?}");
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= max));
        assert!(*delays.last().unwrap() >= max * 3 / 4);
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
