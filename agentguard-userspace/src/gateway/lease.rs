//! Credential leases: one per (agent instance, tool), taken on the instance's first request,
//! valid for the tool's `lease_ttl`, ended early when the instance is frozen, killed or ends.
//!
//! With the embedded store the credential itself is a long-lived value the gateway holds; the
//! lease is what the gateway will use it for: requests are forwarded only under a live lease, and
//! every request's log record names the lease (never the value), so one instance's use of a
//! credential can be told apart from another's and cut off at once.
//!
//! With a Vault dynamic secret the lease holds a credential of its own ([`Dynamic`]), issued for
//! it alone; every way a lease ends (expiry, replacement, revocation) hands that credential to
//! [`Leases::drain_ended`], for the daemon to revoke at Vault.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::secrets::vault::Issued;

/// A live lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Random id, hex (what the log shows).
    pub id: String,
    /// When it ends.
    pub expires: Instant,
    /// The credential issued for this lease alone (a Vault dynamic secret), if any.
    pub dynamic: Option<Dynamic>,
}

/// A credential Vault issued for one lease, with what its records name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dynamic {
    /// The secret's name.
    pub name: String,
    /// Full agent name.
    pub agent: String,
    /// Instance path.
    pub instance: String,
    /// The value and Vault's lease.
    pub issued: Issued,
}

/// A dynamic credential whose lease ended, to be revoked at Vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicEnded {
    /// The instance's cgroup id.
    pub cgroup_id: u64,
    /// Our lease's id.
    pub lease: String,
    /// The credential.
    pub dynamic: Dynamic,
    /// Why the lease ended: `expired`, `return`, `freeze`, `kill`, `instance ended`, `unused`
    /// (issued for a lease another request of the instance took first), `shutdown`.
    pub why: String,
}

/// Keeps `lease`'s dynamic credential, if any, for revocation.
fn ended_into(
    ended: &mut Vec<DynamicEnded>,
    cgroup_id: u64,
    lease: &str,
    dynamic: Option<Dynamic>,
    why: &str,
) {
    if let Some(dynamic) = dynamic {
        ended.push(DynamicEnded {
            cgroup_id,
            lease: lease.to_owned(),
            dynamic,
            why: why.to_owned(),
        });
    }
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

/// What a lease table holds: a [`Lease`], perhaps with more about its holder. Gateway leases
/// are bare leases; credential checkouts ([`super::checkout::Checkout`]) also name the instance.
pub trait Held: Clone {
    /// The lease.
    fn lease(&self) -> &Lease;
    /// The lease, to take its Vault credential out for revocation.
    fn lease_mut(&mut self) -> &mut Lease;
}

/// Live leases by (instance cgroup id, key: a tool or a secret name), and the Vault
/// credentials of those that ended since [`Table::drain_ended`]: every way a lease ends
/// (expiry, replacement, return, revocation, shutdown) hands its credential over exactly once.
#[derive(Debug)]
pub struct Table<T> {
    live: HashMap<(u64, String), T>,
    ended: Vec<DynamicEnded>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            live: HashMap::new(),
            ended: Vec::new(),
        }
    }
}

/// Leases by (instance cgroup id, tool).
pub type Leases = Table<Lease>;

impl<T: Held> Table<T> {
    /// The live lease of `cgroup_id` for `key`, if any.
    pub fn live(&self, cgroup_id: u64, key: &str, now: Instant) -> Option<T> {
        self.live
            .get(&(cgroup_id, key.to_owned()))
            .filter(|l| l.lease().expires > now)
            .cloned()
    }

    /// The live lease of `cgroup_id` for `key`, or a new one (holding `dynamic`, wrapped by
    /// `make`) when there is none or it expired; the flag says whether it is new. A
    /// `dynamic` credential not used (a live lease was there) is kept for revocation.
    pub(super) fn get_or_make(
        &mut self,
        cgroup_id: u64,
        key: &str,
        ttl: Duration,
        now: Instant,
        dynamic: Option<Dynamic>,
        make: impl FnOnce(Lease) -> T,
    ) -> (T, bool) {
        let key = (cgroup_id, key.to_owned());
        if let Some(l) = self.live.get(&key).filter(|l| l.lease().expires > now) {
            let l = l.clone();
            ended_into(&mut self.ended, cgroup_id, &l.lease().id, dynamic, "unused");
            return (l, false);
        }
        let lease = make(Lease {
            id: new_id(),
            expires: now + ttl,
            dynamic,
        });
        if let Some(mut old) = self.live.insert(key, lease.clone()) {
            let dynamic = old.lease_mut().dynamic.take();
            ended_into(
                &mut self.ended,
                cgroup_id,
                &old.lease().id,
                dynamic,
                "expired",
            );
        }
        (lease, true)
    }

    /// Ends the lease of `cgroup_id` for `key`, if any: `why` when still live, `expired` if
    /// not. Returns it when it was live.
    pub(super) fn end_one(
        &mut self,
        cgroup_id: u64,
        key: &str,
        now: Instant,
        why: &str,
    ) -> Option<T> {
        let mut l = self.live.remove(&(cgroup_id, key.to_owned()))?;
        let live = l.lease().expires > now;
        let dynamic = l.lease_mut().dynamic.take();
        let why = if live { why } else { "expired" };
        ended_into(&mut self.ended, cgroup_id, &l.lease().id, dynamic, why);
        live.then_some(l)
    }

    /// Ends every lease of these instances, in lease id order, with their keys.
    pub(super) fn end_instances(
        &mut self,
        cgroup_ids: &[u64],
        why: &str,
    ) -> Vec<((u64, String), T)> {
        let keys: Vec<(u64, String)> = self
            .live
            .keys()
            .filter(|(id, _)| cgroup_ids.contains(id))
            .cloned()
            .collect();
        let mut gone: Vec<((u64, String), T)> = keys
            .into_iter()
            .filter_map(|k| {
                let mut l = self.live.remove(&k)?;
                let dynamic = l.lease_mut().dynamic.take();
                ended_into(&mut self.ended, k.0, &l.lease().id, dynamic, why);
                Some((k, l))
            })
            .collect();
        gone.sort_by(|a, b| a.1.lease().id.cmp(&b.1.lease().id));
        gone
    }

    /// Drops the leases that expired by `now`.
    pub fn sweep(&mut self, now: Instant) {
        let ended = &mut self.ended;
        self.live.retain(|(id, _), l| {
            let live = l.lease().expires > now;
            if !live {
                let dynamic = l.lease_mut().dynamic.take();
                ended_into(ended, *id, &l.lease().id, dynamic, "expired");
            }
            live
        });
    }

    /// Every dynamic credential not yet revoked: all are searched for in requests, whichever
    /// instance holds them.
    pub fn dynamic_values(&self, out: &mut Vec<String>) {
        out.extend(
            self.live
                .values()
                .filter_map(|l| l.lease().dynamic.as_ref().map(|d| d.issued.value.clone())),
        );
    }

    /// Every dynamic credential of a live lease, ended with `why` (at shutdown).
    pub fn end_all(&mut self, why: &str) {
        for ((id, _), mut l) in std::mem::take(&mut self.live) {
            let dynamic = l.lease_mut().dynamic.take();
            ended_into(&mut self.ended, id, &l.lease().id, dynamic, why);
        }
    }

    /// The dynamic credentials whose leases ended since the last call.
    pub fn drain_ended(&mut self) -> Vec<DynamicEnded> {
        std::mem::take(&mut self.ended)
    }
}

impl Held for Lease {
    fn lease(&self) -> &Lease {
        self
    }
    fn lease_mut(&mut self) -> &mut Lease {
        self
    }
}

impl Leases {
    /// The live lease of `cgroup_id` for `tool`, taking a new one (holding `dynamic`, when
    /// given) when there is none or it expired; the flag says whether it is new.
    pub fn get_or_take(
        &mut self,
        cgroup_id: u64,
        tool: &str,
        ttl: Duration,
        now: Instant,
        dynamic: Option<Dynamic>,
    ) -> (Lease, bool) {
        self.get_or_make(cgroup_id, tool, ttl, now, dynamic, |lease| lease)
    }

    /// Ends every lease of these instances; returns the ids ended.
    pub fn revoke(&mut self, cgroup_ids: &[u64], why: &str) -> Vec<String> {
        self.end_instances(cgroup_ids, why)
            .into_iter()
            .map(|(_, l)| l.id)
            .collect()
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
        let (a, new) = l.get_or_take(7, "t", ttl, t0, None);
        assert!(new);
        let (b, new) = l.get_or_take(7, "t", ttl, t0 + Duration::from_secs(1), None);
        assert!(!new);
        assert_eq!(a, b);
        let (c, _) = l.get_or_take(8, "t", ttl, t0, None);
        assert_ne!(a.id, c.id);
        let (d, new) = l.get_or_take(7, "t", ttl, t0 + Duration::from_secs(61), None);
        assert!(new);
        assert_ne!(a.id, d.id);
        assert_eq!(l.revoke(&[7], "freeze"), vec![d.id.clone()]);
        let (e, new) = l.get_or_take(7, "t", ttl, t0 + Duration::from_secs(62), None);
        assert!(new);
        assert_ne!(e.id, d.id);
        assert!(l.drain_ended().is_empty(), "nothing of Vault's to revoke");
    }

    fn dynamic(value: &str) -> Dynamic {
        Dynamic {
            name: "db".into(),
            agent: "buyer".into(),
            instance: "buyer/1".into(),
            issued: Issued {
                value: value.into(),
                lease_id: format!("database/creds/ro/{value}"),
                lease_duration: Duration::from_secs(60),
            },
        }
    }

    #[test]
    fn every_end_of_a_lease_hands_its_vault_credential_over_once() {
        let mut l = Leases::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let (a, _) = l.get_or_take(7, "t", ttl, t0, Some(dynamic("cred-a-123")));
        // A second credential for the same live lease is not used: revoked as `unused`.
        let (again, new) = l.get_or_take(7, "t", ttl, t0, Some(dynamic("cred-b-123")));
        assert!(!new);
        assert_eq!(again.id, a.id);
        let (c, _) = l.get_or_take(8, "t", ttl, t0, Some(dynamic("cred-c-123")));
        let mut values = Vec::new();
        l.dynamic_values(&mut values);
        values.sort();
        assert_eq!(values, ["cred-a-123", "cred-c-123"]);
        let ended = l.drain_ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (
                ended[0].dynamic.issued.value.as_str(),
                ended[0].why.as_str()
            ),
            ("cred-b-123", "unused")
        );
        // Revoked: instance 7's alone.
        l.revoke(&[7], "freeze");
        let ended = l.drain_ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].lease.as_str(), ended[0].why.as_str()),
            (a.id.as_str(), "freeze")
        );
        assert_eq!(ended[0].dynamic.issued.value, "cred-a-123");
        // Expired: swept (and so no longer searched for).
        l.sweep(t0 + ttl);
        let ended = l.drain_ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].lease.as_str(), ended[0].why.as_str()),
            (c.id.as_str(), "expired")
        );
        let mut values = Vec::new();
        l.dynamic_values(&mut values);
        assert!(values.is_empty());
        // Replaced after expiry without a sweep, and ended at shutdown.
        l.get_or_take(9, "t", ttl, t0, Some(dynamic("cred-d-123")));
        l.get_or_take(9, "t", ttl, t0 + ttl, Some(dynamic("cred-e-123")));
        l.end_all("shutdown");
        let whys: Vec<(String, String)> = l
            .drain_ended()
            .into_iter()
            .map(|e| (e.dynamic.issued.value, e.why))
            .collect();
        assert_eq!(
            whys,
            [
                ("cred-d-123".to_owned(), "expired".to_owned()),
                ("cred-e-123".to_owned(), "shutdown".to_owned())
            ]
        );
        assert!(l.drain_ended().is_empty());
    }
}
