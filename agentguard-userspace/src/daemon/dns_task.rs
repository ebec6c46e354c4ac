//! The DNS names of the policy in force: looked up at start-up and at every apply, looked up
//! again in the background on their TTL (see [`crate::dns`]), and the policy re-applied through
//! the usual generation swap when the addresses of a name change.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::{Notify, watch};

use super::{Shared, apply};
use crate::{
    audit::record::Actor,
    dns::{
        NameCache, SystemResolver, Timing,
        cache::{self, Addresses},
        lookup, names,
    },
    policy::Policy,
};

/// The daemon's view of its DNS names.
pub struct DnsNames {
    cache: Mutex<NameCache>,
    resolver: Arc<SystemResolver>,
    /// The addresses the policy in force was compiled with, per name.
    in_force: Mutex<Addresses>,
    /// Wakes the background task when the set of names changed.
    wake: Notify,
}

impl DnsNames {
    /// No names yet.
    pub fn new(timing: Timing) -> Self {
        Self {
            cache: Mutex::new(NameCache::new(timing)),
            resolver: Arc::new(SystemResolver::default()),
            in_force: Mutex::new(Addresses::new()),
            wake: Notify::new(),
        }
    }

    /// Looks every name of `policy` up now; returns the warnings about names without an address.
    pub async fn refresh_policy(&self, policy: &Policy) -> Vec<String> {
        let wanted = names::policy_names(policy);
        if wanted.is_empty() {
            return Vec::new();
        }
        lookup::refresh(&self.resolver, &self.cache, &wanted).await;
        names::warnings(policy, &lookup::lock(&self.cache), Instant::now())
    }

    /// The addresses of every name of `policy` valid now.
    pub fn addresses_for(&self, policy: &Policy) -> Addresses {
        lookup::lock(&self.cache).addresses(&names::policy_names(policy), Instant::now())
    }

    /// Records the addresses the policy now in force was compiled with; the names it no longer
    /// uses are forgotten.
    pub fn set_in_force(&self, addrs: &Addresses) {
        let keep: BTreeSet<String> = addrs.keys().cloned().collect();
        {
            let mut c = lookup::lock(&self.cache);
            c.retain(&keep);
            let now = Instant::now();
            for name in &keep {
                c.track(name, now);
            }
        }
        *self
            .in_force
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = addrs.clone();
        self.wake.notify_one();
    }

    /// How the addresses valid now differ from those in force.
    fn changes(&self) -> Vec<cache::Change> {
        let in_force = self
            .in_force
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut c = lookup::lock(&self.cache);
        let now = Instant::now();
        c.expire(now);
        cache::changes(&in_force, &c.addresses(in_force.keys(), now))
    }

    fn timing(&self) -> Timing {
        *lookup::lock(&self.cache).timing()
    }
}

/// Looks names up when due and re-applies the policy when their addresses change, until
/// shutdown.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<Option<bool>>) {
    let dns = &shared.dns;
    let timing = dns.timing();
    let mut failed_applies = 0;
    loop {
        let due = lookup::lock(&dns.cache).due(Instant::now());
        if !due.is_empty() {
            let outcomes = tokio::select! {
                o = lookup::look_up_all(&dns.resolver, due, &timing) => o,
                _ = shutdown.changed() => break,
            };
            let mut c = lookup::lock(&dns.cache);
            let now = Instant::now();
            for (name, outcome) in outcomes {
                if let Err(e) = &outcome {
                    tracing::warn!(name, error = %e, "DNS name does not resolve; retrying with backoff");
                }
                c.record(&name, outcome, now);
            }
        }

        let changes = dns.changes();
        if !changes.is_empty() {
            let listed: Vec<String> = changes.iter().map(ToString::to_string).collect();
            let reason = format!("dns: {}", listed.join("; "));
            tracing::info!("{reason}: re-applying the policy");
            match apply::reapply_current(&shared, Actor::Daemon { reason }).await {
                Ok(a) => {
                    failed_applies = 0;
                    tracing::info!(digest = %a.digest, generation = a.generation, "policy re-applied");
                }
                Err(e) => {
                    // The previous addresses stay in force; try again later, not in a loop.
                    failed_applies += 1;
                    let wait = timing.retry_after(failed_applies);
                    tracing::error!(error = %e, ?wait, "cannot re-apply the policy for changed DNS names");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        _ = shutdown.changed() => break,
                    }
                }
            }
        }

        let next = lookup::lock(&dns.cache).next_wakeup();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = dns.wake.notified() => {}
            _ = shutdown.changed() => break,
        }
    }
}
