//! The retry budget of one service: retries may add at most a share of its
//! recent requests (plus a few per second whatever the traffic), so when
//! every endpoint fails the gateway does not multiply the load by its retry
//! count. Counted over a sliding window of one-second buckets.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::config::RetrySettings;

/// Seconds of history the budget looks at.
pub const WINDOW_SECS: u64 = 10;

/// One second's counts, stamped with the second they belong to.
#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug)]
pub struct RetryBudget {
    epoch: Instant,
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl RetryBudget {
    pub fn new() -> RetryBudget {
        RetryBudget {
            epoch: Instant::now(),
            buckets: Default::default(),
        }
    }

    /// A request arrived.
    pub fn request(&self, now: Instant) {
        self.bucket(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits; if so it is counted. The retry is
    /// counted first and taken back if it did not fit, so racing callers
    /// never pass the budget together.
    pub fn try_retry(&self, settings: &RetrySettings, now: Instant) -> bool {
        let mine = self.bucket(now);
        mine.retries.fetch_add(1, Ordering::Relaxed);
        let second = self.second(now);
        let (mut requests, mut retries) = (0, 0);
        for bucket in &self.buckets {
            let at = bucket.second.load(Ordering::Relaxed);
            if at + WINDOW_SECS > second && at <= second {
                requests += bucket.requests.load(Ordering::Relaxed);
                retries += bucket.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = requests * u64::from(settings.budget_percent) / 100
            + u64::from(settings.min_retries_per_sec) * WINDOW_SECS;
        if retries > allowed {
            mine.retries.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn second(&self, now: Instant) -> u64 {
        // Seconds are counted from one, so a bucket's zero stamp means "never".
        now.duration_since(self.epoch).as_secs() + 1
    }

    /// The bucket of `now`'s second, emptied first if it held an older one.
    fn bucket(&self, now: Instant) -> &Bucket {
        let second = self.second(now);
        let bucket = &self.buckets[(second % WINDOW_SECS) as usize];
        let stamped = bucket.second.load(Ordering::Relaxed);
        if stamped != second
            && bucket
                .second
                .compare_exchange(stamped, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // Counts a racing thread adds between these stores land in the
            // new second or are lost: a budget needs no exact count.
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retries_stay_within_the_share_and_the_floor() {
        let settings = RetrySettings::default();
        let budget = RetryBudget::new();
        let now = Instant::now();
        for _ in 0..1000 {
            budget.request(now);
        }
        let granted = (0..1000)
            .filter(|_| budget.try_retry(&settings, now))
            .count() as u64;
        let floor = u64::from(settings.min_retries_per_sec) * WINDOW_SECS;
        assert_eq!(
            granted,
            1000 * u64::from(settings.budget_percent) / 100 + floor
        );
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let settings = RetrySettings {
            min_retries_per_sec: 0,
            ..RetrySettings::default()
        };
        let budget = RetryBudget::new();
        let now = Instant::now();
        for _ in 0..100 {
            budget.request(now);
        }
        assert!(budget.try_retry(&settings, now));
        let later = now + Duration::from_secs(WINDOW_SECS + 1);
        assert!(
            !budget.try_retry(&settings, later),
            "the requests have aged out"
        );
    }
}
