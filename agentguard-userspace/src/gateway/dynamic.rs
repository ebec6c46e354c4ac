//! Vault dynamic secrets (`--vault-dynamic`): a credential of its own for every agentguard lease
//! (a gateway lease of one instance on one tool, or one instance's checkout), issued by Vault
//! when the lease is taken and revoked at Vault when it ends.
//!
//! The lease tables ([`super::lease::Leases`], [`super::checkout::Checkouts`]) hand every
//! ended lease's credential over, however it ended; [`run`] revokes them at Vault
//! (`PUT /v1/sys/leases/revoke`). A refused or unanswered revocation is retried (after 1, 5 and
//! 30 seconds, or at once, one last time, when the daemon stops); after the last try the credential is left to Vault's own `lease_duration`,
//! which is at least the lease's TTL, and a `vault-lease` record `revoke-failed` names the
//! Vault lease for an operator to revoke by hand (`vault lease revoke ID`).
//!
//! Why the Vault lease id is logged: it is no credential (using it to renew or revoke takes a
//! token with rights on `sys/leases`), and it is what ties our records to Vault's audit log and
//! what an operator needs when a revocation failed.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    lease::{Dynamic, DynamicEnded, Held, Lease, Table},
    lock,
};
use crate::{
    audit::record::{Body, VaultLease},
    daemon::Shared,
};

/// Waits before the retries of a failed revocation.
static RETRIES: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];
/// How often expired leases are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A fresh credential for dynamic secret `name`, for one lease of `instance`; `ttl` shortened to
/// Vault's `lease_duration`. `Err`: the reason to refuse.
pub async fn issue(
    shared: &Shared,
    agent: &str,
    instance: &str,
    name: &str,
    ttl: Duration,
) -> Result<(Dynamic, Duration), String> {
    let Some(vault) = shared.vault() else {
        return Err(format!(
            "{name:?} is a Vault dynamic secret but no Vault is configured"
        ));
    };
    let issued = vault.issue(name).await.map_err(|e| {
        tracing::warn!(secret = %name, %instance, error = %e, "Vault issued no dynamic credential");
        e.to_string()
    })?;
    let ttl = if issued.lease_duration.is_zero() {
        ttl
    } else {
        ttl.min(issued.lease_duration)
    };
    Ok((
        Dynamic {
            name: name.to_owned(),
            agent: agent.to_owned(),
            instance: instance.to_owned(),
            issued,
        },
        ttl,
    ))
}

/// Whose lease a dynamic credential is for: one instance's, on `key` (a tool for a gateway
/// lease, a secret name for a checkout).
pub struct Holder<'a> {
    /// The instance's cgroup id.
    pub cgroup_id: u64,
    /// Full agent name.
    pub agent: &'a str,
    /// Instance path.
    pub instance: &'a str,
    /// The lease table's key.
    pub key: &'a str,
}

/// `table`'s live lease of `holder`, or a new one (wrapped by `make`) holding a credential
/// Vault issued for it alone, logged as `issued`; with the credential's value. A credential
/// issued while another request of the instance took the lease first goes back unused.
pub async fn leased<T: Held>(
    shared: &Shared,
    table: &Mutex<Table<T>>,
    holder: &Holder<'_>,
    secret: &str,
    ttl: Duration,
    make: impl FnOnce(Lease) -> T,
) -> Result<(T, String), String> {
    let live = lock(table).live(holder.cgroup_id, holder.key, Instant::now());
    let held = match live {
        Some(held) => held,
        None => {
            let (d, ttl) = issue(shared, holder.agent, holder.instance, secret, ttl).await?;
            let (held, new) = lock(table).get_or_make(
                holder.cgroup_id,
                holder.key,
                ttl,
                Instant::now(),
                Some(d.clone()),
                make,
            );
            if new {
                log_issued(shared, holder.cgroup_id, &held.lease().id, &d, ttl);
            } else {
                shared.gateway.wake_revoker();
            }
            held
        }
    };
    let value = held
        .lease()
        .dynamic
        .as_ref()
        .map(|d| d.issued.value.clone())
        .ok_or_else(|| format!("the lease on {:?} holds no Vault credential", holder.key))?;
    Ok((held, value))
}

fn record(cgroup_id: u64, lease: &str, d: &Dynamic, action: &str) -> VaultLease {
    VaultLease {
        agent: d.agent.clone(),
        instance: d.instance.clone(),
        cgroup_id,
        name: d.name.clone(),
        action: action.to_owned(),
        lease: lease.to_owned(),
        vault_lease: d.issued.lease_id.clone(),
        ttl_s: 0,
        reason: String::new(),
        error: String::new(),
    }
}

/// Logs a credential issued for a new lease.
fn log_issued(shared: &Shared, cgroup_id: u64, lease: &str, d: &Dynamic, ttl: Duration) {
    tracing::info!(lease, vault_lease = %d.issued.lease_id, secret = %d.name, instance = %d.instance, "Vault dynamic credential issued");
    shared.log(Body::VaultLease(VaultLease {
        ttl_s: ttl.as_secs(),
        ..record(cgroup_id, lease, d, "issued")
    }));
}

/// Revokes one ended credential at Vault, retrying; logs the outcome. At shutdown a retry
/// waiting its turn is tried at once, one last time, so every revocation ends in a record.
async fn revoke(
    shared: Arc<Shared>,
    ended: DynamicEnded,
    retries: &[Duration],
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let Some(vault) = shared.vault() else {
        return;
    };
    let mut waits = retries.iter();
    let error = loop {
        match vault.revoke(&ended.dynamic.issued.lease_id).await {
            Ok(()) => break None,
            Err(e) => {
                tracing::warn!(lease = %ended.lease, vault_lease = %ended.dynamic.issued.lease_id, error = %e, "cannot revoke a Vault lease");
                match waits.next() {
                    Some(w) => tokio::select! {
                        () = tokio::time::sleep(*w) => {}
                        _ = shutdown.wait_for(Option::is_some) => waits = [].iter(),
                    },
                    None => break Some(e.to_string()),
                }
            }
        }
    };
    let action = if error.is_some() {
        "revoke-failed"
    } else {
        "revoked"
    };
    shared.log(Body::VaultLease(VaultLease {
        reason: ended.why.clone(),
        error: error.unwrap_or_default(),
        ..record(ended.cgroup_id, &ended.lease, &ended.dynamic, action)
    }));
}

/// Revokes ended credentials at Vault until shutdown; then revokes every credential still
/// issued (the daemon keeps no lease across a restart), one try each, and waits for every
/// revocation still retrying so that none ends without its record.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<Option<bool>>) {
    let gw = &shared.gateway;
    let mut revoking = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = gw.dynamic_ended.notified() => {}
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.changed() => break,
        }
        gw.sweep(Instant::now());
        for ended in gw.drain_dynamic_ended() {
            revoking.spawn(revoke(shared.clone(), ended, &RETRIES, shutdown.clone()));
        }
        while revoking.try_join_next().is_some() {}
    }
    gw.end_all("shutdown");
    for ended in gw.drain_dynamic_ended() {
        revoking.spawn(revoke(shared.clone(), ended, &[], shutdown.clone()));
    }
    while revoking.join_next().await.is_some() {}
}
