//! `agentguard credential checkout NAME` / `return NAME`: credentials for tools the gateway
//! cannot front (a database, an SSH host, a non-HTTP protocol), handed to the agent itself.
//!
//! Who asks is the caller's cgroup, read by the agent socket from the kernel (`SO_PEERCRED`,
//! `/proc/PID/cgroup`, checked against pid reuse with a pidfd) before any request is read;
//! nothing in the request names an agent, an instance or a lease. An instance may check out
//! only the secrets its agent's `credentials` grants (a sub-agent's list is a subset of its
//! parent's, enforced by `policy check`). A lease id is no capability: returning or checking
//! out again goes by the caller's cgroup, so knowing another instance's lease id gives nothing.
//!
//! Unlike a gateway credential, a checked-out value is in the agent's hands: ending the lease
//! (return, TTL, freeze, kill, instance end) ends what the log attributes to the instance and
//! what the daemon will hand out under it, not the value's validity upstream, unless the secret
//! is a Vault dynamic secret (`--vault-dynamic`): then each checkout gets a credential of its
//! own from Vault, and the end of the lease revokes it at Vault (see docs/gateway.md).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    dynamic,
    lease::{Dynamic, Held, Lease, Table},
};
use crate::{
    audit::record::{Body, CredentialUse},
    cgroup::Instance,
    control::{
        peer::Peer,
        proto::{Reply, SecretValue},
    },
    daemon::Shared,
};

/// A live checkout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    /// Id, expiry, and the credential issued for this checkout alone (a Vault dynamic
    /// secret), if any.
    pub lease: Lease,
    /// Full agent name (for the revocation record, after the instance is gone).
    pub agent: String,
    /// Instance path.
    pub instance: String,
}

/// Checkouts by (instance cgroup id, secret name).
pub type Checkouts = Table<Checkout>;

impl Held for Checkout {
    fn lease(&self) -> &Lease {
        &self.lease
    }
    fn lease_mut(&mut self) -> &mut Lease {
        &mut self.lease
    }
}

/// A checkout ended by the daemon.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended {
    /// Instance cgroup id.
    pub cgroup_id: u64,
    /// Secret name.
    pub name: String,
    /// The checkout.
    pub checkout: Checkout,
}

impl Checkouts {
    /// The live checkout of `name` by the instance, or a new one (holding `dynamic`, when
    /// given); the flag says whether new. A `dynamic` credential not used is kept for
    /// revocation.
    pub fn take(
        &mut self,
        inst: &Instance,
        name: &str,
        ttl: Duration,
        now: Instant,
        dynamic: Option<Dynamic>,
    ) -> (Checkout, bool) {
        self.get_or_make(inst.id, name, ttl, now, dynamic, |lease| Checkout {
            lease,
            agent: inst.agent.clone(),
            instance: inst.name.clone(),
        })
    }

    /// Ends the instance's checkout of `name`; `None` when it holds no live one (an expired
    /// one is dropped as well).
    pub fn give_back(&mut self, cgroup_id: u64, name: &str, now: Instant) -> Option<Checkout> {
        self.end_one(cgroup_id, name, now, "return")
    }

    /// Ends every checkout of these instances.
    pub fn revoke(&mut self, cgroup_ids: &[u64], why: &str) -> Vec<Ended> {
        self.end_instances(cgroup_ids, why)
            .into_iter()
            .map(|((cgroup_id, name), checkout)| Ended {
                cgroup_id,
                name,
                checkout,
            })
            .collect()
    }
}

fn record(inst: &Instance, pid: u32, name: &str, action: &str) -> CredentialUse {
    CredentialUse {
        agent: inst.agent.clone(),
        instance: inst.name.clone(),
        cgroup_id: inst.id,
        pid,
        name: name.to_owned(),
        action: action.to_owned(),
        lease: String::new(),
        ttl_s: 0,
        reason: String::new(),
    }
}

/// Logs a refusal and returns its message.
fn refused(shared: &Shared, inst: &Instance, pid: u32, name: &str, reason: String) -> String {
    shared.log(Body::Credential(CredentialUse {
        reason: reason.clone(),
        ..record(inst, pid, name, "refused")
    }));
    reason
}

/// `credential checkout NAME` from a process of `caller`.
pub async fn checkout(
    shared: &Arc<Shared>,
    peer: &Peer,
    caller: &Instance,
    name: &str,
) -> Result<Reply, String> {
    let ttl = {
        let st = shared.lock_state();
        st.policy
            .agent(&caller.agent)
            .filter(|a| a.credentials.iter().any(|c| c.value == name))
            .map(|a| a.credential_ttl)
    };
    let Some(ttl) = ttl else {
        return Err(refused(
            shared,
            caller,
            peer.pid,
            name,
            format!(
                "agent {:?} is not granted credential {name:?} (policy `credentials`)",
                caller.agent
            ),
        ));
    };
    if shared.is_dynamic(name) {
        return checkout_dynamic(shared, peer, caller, name, ttl).await;
    }
    let value = match shared.secret_value(name).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Err(refused(
                shared,
                caller,
                peer.pid,
                name,
                format!("credential {name:?} is not set (agentguard secret set, or Vault)"),
            ));
        }
        Err(e) => {
            return Err(refused(
                shared,
                caller,
                peer.pid,
                name,
                format!("credential {name:?} cannot be read: {e}"),
            ));
        }
    };
    let now = Instant::now();
    let (c, _new) = shared
        .gateway
        .checkouts()
        .take(caller, name, ttl, now, None);
    Ok(reply(shared, peer, caller, name, c, value, now))
}

/// Logs a checkout and answers it.
fn reply(
    shared: &Shared,
    peer: &Peer,
    caller: &Instance,
    name: &str,
    c: Checkout,
    value: String,
    now: Instant,
) -> Reply {
    let ttl_s = c.lease.expires.saturating_duration_since(now).as_secs();
    shared.log(Body::Credential(CredentialUse {
        lease: c.lease.id.clone(),
        ttl_s,
        ..record(caller, peer.pid, name, "checkout")
    }));
    Reply::Credential {
        name: name.to_owned(),
        value: SecretValue(value),
        lease: c.lease.id,
        ttl_s,
    }
}

/// The checkout of a Vault dynamic secret: the live checkout's own credential, or a new one
/// issued by Vault for a new checkout.
async fn checkout_dynamic(
    shared: &Arc<Shared>,
    peer: &Peer,
    caller: &Instance,
    name: &str,
    ttl: Duration,
) -> Result<Reply, String> {
    let holder = dynamic::Holder {
        cgroup_id: caller.id,
        agent: &caller.agent,
        instance: &caller.name,
        key: name,
    };
    let made = dynamic::leased(
        shared,
        &shared.gateway.checkouts,
        &holder,
        name,
        ttl,
        |lease| Checkout {
            lease,
            agent: caller.agent.clone(),
            instance: caller.name.clone(),
        },
    )
    .await;
    let (c, value) = match made {
        Ok(x) => x,
        Err(e) => {
            return Err(refused(
                shared,
                caller,
                peer.pid,
                name,
                format!("credential {name:?} cannot be issued by Vault: {e}"),
            ));
        }
    };
    Ok(reply(shared, peer, caller, name, c, value, Instant::now()))
}

/// `credential return NAME` from a process of `caller`.
pub fn give_back(
    shared: &Arc<Shared>,
    peer: &Peer,
    caller: &Instance,
    name: &str,
) -> Result<Reply, String> {
    let Some(c) = shared
        .gateway
        .checkouts()
        .give_back(caller.id, name, Instant::now())
    else {
        return Err(format!(
            "instance {} holds no live lease on credential {name:?}",
            caller.name
        ));
    };
    shared.gateway.wake_revoker();
    shared.log(Body::Credential(CredentialUse {
        lease: c.lease.id.clone(),
        ..record(caller, peer.pid, name, "return")
    }));
    Ok(Reply::CredentialReturned { lease: c.lease.id })
}

/// Logs the checkouts a freeze, kill or instance end revoked.
pub fn log_revoked(shared: &Shared, ended: Vec<Ended>, why: &str) {
    for e in ended {
        shared.log(Body::Credential(CredentialUse {
            agent: e.checkout.agent,
            instance: e.checkout.instance,
            cgroup_id: e.cgroup_id,
            pid: 0,
            name: e.name,
            action: "revoke".to_owned(),
            lease: e.checkout.lease.id,
            ttl_s: 0,
            reason: why.to_owned(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: u64) -> Instance {
        Instance {
            id,
            agent: "buyer".into(),
            name: format!("buyer/{id}"),
            path: std::path::PathBuf::from(format!("/sys/fs/cgroup/agentguard/buyer/{id}")),
            parent: None,
            root_instance: id,
        }
    }

    #[test]
    fn checkouts_are_per_instance_and_end_on_return_or_revoke() {
        let mut c = Checkouts::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let (a, new) = c.take(&inst(1), "db", ttl, t0, None);
        assert!(new);
        let (again, new) = c.take(&inst(1), "db", ttl, t0 + Duration::from_secs(1), None);
        assert!(!new);
        assert_eq!(a, again);
        // Another instance's lease is its own; returning goes by the caller's instance.
        let (b, _) = c.take(&inst(2), "db", ttl, t0, None);
        assert_ne!(a.lease.id, b.lease.id);
        assert_eq!(c.give_back(1, "db", t0), Some(a.clone()));
        assert_eq!(c.give_back(1, "db", t0), None, "a second return");
        let (fresh, new) = c.take(&inst(1), "db", ttl, t0, None);
        assert!(new);
        assert_ne!(
            fresh.lease.id, a.lease.id,
            "a checkout after return is a new lease"
        );
        // Expired: nothing to return.
        assert_eq!(c.give_back(2, "db", t0 + ttl), None);
        let ended = c.revoke(&[1], "kill");
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].checkout.lease.id, fresh.lease.id);
        assert!(c.revoke(&[1], "kill").is_empty());
    }
}
