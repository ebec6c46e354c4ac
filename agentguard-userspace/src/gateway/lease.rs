//! Credential leases: one per (agent instance, tool), taken on the instance's first request,
//! valid for the tool's `lease_ttl`, ended early when the instance is frozen, killed or ends.
//!
//! With the embedded store the credential itself is a long-lived value the gateway holds; the
//! lease is what the gateway will use it for: requests are forwarded only under a live lease, and
//! every request's log record names the lease (never the value), so one instance's use of a
//! credential can be told apart from another's and cut off at once.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// A live lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Random id, hex (what the log shows).
    pub id: String,
    /// When it ends.
    pub expires: Instant,
}

/// Leases by (instance cgroup id, tool).
#[derive(Debug, Default)]
pub struct Leases {
    live: HashMap<(u64, String), Lease>,
}

/// A fresh lease id: 16 random bytes, hex.
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Uniqueness matters, secrecy does not: fall back to the clock and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (t ^ u128::from(n)).to_le_bytes();
    }
    hex::encode(b)
}

impl Leases {
    /// The live lease of `cgroup_id` for `tool`, taking a new one when there is none or it
    /// expired; the flag says whether it is new.
    pub fn get_or_take(
        &mut self,
        cgroup_id: u64,
        tool: &str,
        ttl: Duration,
        now: Instant,
    ) -> (Lease, bool) {
        let key = (cgroup_id, tool.to_owned());
        if let Some(l) = self.live.get(&key).filter(|l| l.expires > now) {
            return (l.clone(), false);
        }
        let lease = Lease {
            id: new_id(),
            expires: now + ttl,
        };
        self.live.insert(key, lease.clone());
        (lease, true)
    }

    /// Ends every lease of these instances; returns the ids ended.
    pub fn revoke(&mut self, cgroup_ids: &[u64]) -> Vec<String> {
        let mut ended = Vec::new();
        self.live.retain(|(id, _), l| {
            let gone = cgroup_ids.contains(id);
            if gone {
                ended.push(l.id.clone());
            }
            !gone
        });
        ended.sort();
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_reused_until_they_expire_or_are_revoked() {
        let mut l = Leases::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let (a, new) = l.get_or_take(7, "t", ttl, t0);
        assert!(new);
        let (b, new) = l.get_or_take(7, "t", ttl, t0 + Duration::from_secs(1));
        assert!(!new);
        assert_eq!(a, b);
        let (c, _) = l.get_or_take(8, "t", ttl, t0);
        assert_ne!(a.id, c.id);
        let (d, new) = l.get_or_take(7, "t", ttl, t0 + Duration::from_secs(61));
        assert!(new);
        assert_ne!(a.id, d.id);
        assert_eq!(l.revoke(&[7]), vec![d.id.clone()]);
        let (e, new) = l.get_or_take(7, "t", ttl, t0 + Duration::from_secs(62));
        assert!(new);
        assert_ne!(e.id, d.id);
    }
}
