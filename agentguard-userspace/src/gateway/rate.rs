//! Per-instance request budgets: a token bucket per (instance, tool) holding `count` requests,
//! refilled at `count` per interval (the tool's `rate`), and one per (instance, tool, MCP tool)
//! for an MCP tool's `mcp_tools` entries with a `rate` of their own. The instance is the
//! top-level one: its sub-agents spend from its buckets (see `request::Caller`).

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

/// Buckets by (top-level instance cgroup id, tool, MCP tool name or "" for the tool's own
/// `rate`).
#[derive(Debug, Default)]
pub struct Buckets {
    buckets: HashMap<(u64, String, String), Bucket>,
}

/// Nanoseconds per token of a rate, and the bucket's capacity.
fn shape(rate: Rate) -> (f64, f64) {
    #[expect(clippy::cast_precision_loss, reason = "counts are at most 1e9")]
    let cap = rate.count as f64;
    #[expect(clippy::cast_precision_loss, reason = "intervals are at most an hour")]
    let per_token = rate.per_ns as f64 / cap;
    (per_token, cap)
}

impl Buckets {
    /// Takes one request from the tool's bucket; `Err(wait)` when empty, with the time until
    /// one request's worth has refilled.
    pub fn take(
        &mut self,
        cgroup_id: u64,
        tool: &str,
        rate: Rate,
        now: Instant,
    ) -> Result<(), Duration> {
        self.take_all(cgroup_id, tool, &[("", rate, 1)], now)
            .map_err(|(_, wait)| wait)
    }

    /// Takes `n` calls from each named MCP tool's bucket of `tool`, all or nothing (a batch is
    /// forwarded whole or not at all). `Err` names the MCP tools whose buckets are short and
    /// the longest time until all of them have refilled enough.
    pub fn take_all(
        &mut self,
        cgroup_id: u64,
        tool: &str,
        takes: &[(&str, Rate, u64)],
        now: Instant,
    ) -> Result<(), (Vec<String>, Duration)> {
        let mut short = Vec::new();
        let mut wait = Duration::ZERO;
        for &(name, rate, n) in takes {
            let (per_token, cap) = shape(rate);
            let b = self
                .buckets
                .entry((cgroup_id, tool.to_owned(), name.to_owned()))
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
            #[expect(clippy::cast_precision_loss, reason = "calls in one batch")]
            let want = n as f64;
            if b.tokens < want {
                let missing_ns = (want - b.tokens) * per_token;
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "positive and at most a batch's worth of hours of nanoseconds"
                )]
                let w = Duration::from_nanos(missing_ns.ceil() as u64);
                wait = wait.max(w);
                short.push(name.to_owned());
            }
        }
        if !short.is_empty() {
            return Err((short, wait));
        }
        for &(name, _, n) in takes {
            if let Some(b) = self
                .buckets
                .get_mut(&(cgroup_id, tool.to_owned(), name.to_owned()))
            {
                #[expect(clippy::cast_precision_loss, reason = "calls in one batch")]
                let want = n as f64;
                b.tokens -= want;
            }
        }
        Ok(())
    }

    /// Forgets the buckets of instances that ended.
    pub fn forget(&mut self, cgroup_ids: &[u64]) {
        self.buckets
            .retain(|(id, _, _), _| !cgroup_ids.contains(id));
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

    #[test]
    fn mcp_tool_budgets_are_separate_and_a_batch_takes_all_or_nothing() {
        let mut b = Buckets::default();
        let hourly: Rate = "3/h".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let t0 = Instant::now();
        // The tool's own bucket is not an MCP tool's.
        assert!(b.take(1, "m", hourly, t0).is_ok());
        assert!(b.take_all(1, "m", &[("search", hourly, 2)], t0).is_ok());
        // One search left: a batch of two searches and a quote takes nothing.
        let (short, wait) = b
            .take_all(1, "m", &[("search", hourly, 2), ("quote", hourly, 1)], t0)
            .err()
            .unwrap_or_default();
        assert_eq!(short, ["search"]);
        assert!(wait > Duration::from_secs(1000), "{wait:?}");
        assert!(b.take_all(1, "m", &[("quote", hourly, 3)], t0).is_ok());
        assert!(b.take_all(1, "m", &[("search", hourly, 1)], t0).is_ok());
        assert!(b.take_all(1, "m", &[("search", hourly, 1)], t0).is_err());
        // Another instance, another tool: their own buckets.
        assert!(b.take_all(2, "m", &[("search", hourly, 1)], t0).is_ok());
        assert!(b.take_all(1, "n", &[("search", hourly, 1)], t0).is_ok());
        b.forget(&[1]);
        assert!(b.take_all(1, "m", &[("search", hourly, 3)], t0).is_ok());
    }
}
