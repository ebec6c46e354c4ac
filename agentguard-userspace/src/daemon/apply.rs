//! Applying a policy: validate in full, resolve, compile for the inactive generation, write,
//! flip, log. A policy that fails any stage changes nothing.

use std::sync::Arc;

use crate::{
    audit::record::{Actor, Body},
    dns::cache::Addresses,
    ebpf::maps::GRACE,
    policy::{
        self, Policy, compile,
        resolve::{self, Resolved},
    },
};

use super::Shared;

/// What an apply did.
#[derive(Debug)]
pub struct Applied {
    /// blake3 of the policy, hex.
    pub digest: String,
    /// Generation written.
    pub generation: u8,
    /// Rules compiled.
    pub rules: usize,
    /// Non-fatal notes.
    pub warnings: Vec<String>,
}

/// Why an apply was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// Writing the maps failed; the previous policy stays in force.
    #[error("writing the kernel maps failed, the previous policy stays in force: {0}")]
    Maps(#[from] crate::ebpf::maps::MapsError),
}

/// Everything outside the policy file that compile needs; `names` are the addresses of its DNS
/// names (see [`super::dns_task`]).
pub fn resolve(policy: &Policy, names: Addresses) -> Result<(Resolved, Vec<String>), ApplyError> {
    let binaries = resolve::binaries(policy)
        .map_err(|d| ApplyError::Policy(policy::PolicyError::Invalid(d)))?;
    let resolved = Resolved {
        binaries,
        names,
        resolvers: resolve::system_resolvers(),
    };
    Ok((resolved, policy.weakenings()))
}

/// Validates `text` and applies it; logs the result with `by`.
pub async fn apply_text(
    shared: &Arc<Shared>,
    origin: &str,
    text: &str,
    by: Actor,
) -> Result<Applied, ApplyError> {
    let policy = policy::parse(origin, text)?;
    apply_policy(shared, policy, by).await
}

/// Applies a validated policy.
pub async fn apply_policy(
    shared: &Arc<Shared>,
    policy: Policy,
    by: Actor,
) -> Result<Applied, ApplyError> {
    // One apply at a time: the next one must not reuse a generation programs may still read.
    let _serial = shared.apply_lock.lock().await;
    // Under the lock, so a DNS re-apply cannot forget this policy's names in between.
    let dns_warnings = shared.dns.refresh_policy(&policy).await;
    let started = std::time::Instant::now();
    let applied = install(shared, policy, by, dns_warnings).await;
    shared.metrics.policy_applied_in(started.elapsed());
    applied
}

/// Re-applies the policy in force with the addresses its DNS names have now.
pub async fn reapply_current(shared: &Arc<Shared>, by: Actor) -> Result<Applied, ApplyError> {
    let _serial = shared.apply_lock.lock().await;
    let policy = shared.lock_state().policy.clone();
    install(shared, policy, by, Vec::new()).await
}

/// Compiles `policy` into the inactive generation and flips to it; the caller holds the apply
/// lock.
async fn install(
    shared: &Arc<Shared>,
    policy: Policy,
    by: Actor,
    dns_warnings: Vec<String>,
) -> Result<Applied, ApplyError> {
    let (resolved, mut warnings) = resolve(&policy, shared.dns.addresses_for(&policy))?;
    warnings.extend(dns_warnings);
    let exec_paths = super::binwatch::paths_of(policy.exec_paths());
    let (old, applied) = {
        let mut st = shared.lock_state();
        let generation = st.maps.inactive_generation()?;
        let compiled = compile::compile(&policy, generation, &resolved);
        let old = st.maps.write_and_flip(&compiled)?;
        let applied = Applied {
            digest: policy.digest_hex(),
            generation,
            rules: compiled.rules.len(),
            warnings,
        };
        shared.log(Body::PolicyApplied {
            digest: applied.digest.clone(),
            origin: policy.origin.clone(),
            by,
            generation,
            agents: u32::try_from(policy.agents.len()).unwrap_or(u32::MAX),
            rules: u32::try_from(compiled.rules.len()).unwrap_or(u32::MAX),
        });
        st.compiled[usize::from(generation)] = Some(compiled);
        let _ = shared.exec_paths.send(exec_paths);
        st.binaries = resolved.binaries;
        st.policy = policy;
        (old, applied)
    };
    shared.dns.set_in_force(&resolved.names);
    super::notify::status(&format!(
        "enforcing policy {} (generation {})",
        applied.digest, applied.generation
    ));
    // Programs running now may still hold the old generation; they finish within microseconds.
    tokio::time::sleep(GRACE).await;
    let mut st = shared.lock_state();
    st.maps.purge_if_inactive(old)?;
    Ok(applied)
}
