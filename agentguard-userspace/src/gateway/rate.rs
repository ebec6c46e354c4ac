//! Per-instance request budgets: a token bucket per (instance, tool) holding `count` requests,
//! refilled at `count` per interval (the tool's `rate`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::policy::throttle::Rate;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets by (instance cgroup id, tool).
#[derive(Debug, Default)]
pub struct Buckets {
    buckets: HashMap<(u64, String), Bucket>,
}

impl Buckets {
    /// Takes one request from the bucket; `Err(wait)` when empty, with the time until one
    /// request's worth has refilled.
    pub fn take(
        &mut self,
        cgroup_id: u64,
        tool: &str,
        rate: Rate,
        now: Instant,
    ) -> Result<(), Duration> {
        #[expect(clippy::cast_precision_loss, reason = "counts are at most 1e9")]
        let cap = rate.count as f64;
        #[expect(clippy::cast_precision_loss, reason = "intervals are at most an hour")]
        let per_token = rate.per_ns as f64 / cap;
        let b = self
            .buckets
            .entry((cgroup_id, tool.to_owned()))
            .or_insert(Bucket {
                tokens: cap,
                at: now,
            });
        #[expect(
            clippy::cast_precision_loss,
            reason = "nanoseconds since the last request"
        )]
        let refill = now.saturating_duration_since(b.at).as_nanos() as f64 / per_token;
        b.tokens = (b.tokens + refill).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let missing_ns = (1.0 - b.tokens) * per_token;
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "positive and at most an hour of nanoseconds"
            )]
            Err(Duration::from_nanos(missing_ns.ceil() as u64))
        }
    }

    /// Forgets the buckets of instances that ended.
    pub fn forget(&mut self, cgroup_ids: &[u64]) {
        self.buckets.retain(|(id, _), _| !cgroup_ids.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_request_in_a_minute_waits() {
        let mut b = Buckets::default();
        let rate: Rate = "10/min".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(b.take(1, "t", rate, t0).is_ok(), "request {i}");
        }
        let wait = b.take(1, "t", rate, t0).err().unwrap_or_default();
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        // Another instance has its own bucket.
        assert!(b.take(2, "t", rate, t0).is_ok());
        assert!(b.take(1, "t", rate, t0 + Duration::from_secs(6)).is_ok());
    }
}
