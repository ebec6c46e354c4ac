//! Applying a policy: validate in full, resolve, compile for the inactive generation, write,
//! flip, log. A policy that fails any stage changes nothing.

use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;

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
pub fn resolve(
    policy: &Policy,
    names: Addresses,
    private_tmp: &std::path::Path,
    agent_socket: &std::path::Path,
    gateway: Option<std::net::SocketAddr>,
) -> Result<(Resolved, Vec<String>), ApplyError> {
    let binaries = resolve::binaries(policy)
        .map_err(|d| ApplyError::Policy(policy::PolicyError::Invalid(d)))?;
    let resolved = Resolved {
        binaries,
        names,
        resolvers: resolve::system_resolvers(),
        private_tmp: Some(private_tmp.to_owned()),
        agent_socket: Some(agent_socket.to_owned()),
        gateway,
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
    let started = std::time::Instant::now();
    let policy = policy::parse(origin, text)?;
    tracing::debug!(parse_us = started.elapsed().as_micros(), "policy parsed");
    apply_policy(shared, policy, by).await
}

/// Applies a validated policy.
pub async fn apply_policy(
    shared: &Arc<Shared>,
    policy: Policy,
    by: Actor,
) -> Result<Applied, ApplyError> {
    // One apply at a time: the next one must not reuse a generation programs may still read.
    // The guard lives on in the purge of the old generation, after the reply.
    let serial = Arc::clone(&shared.apply_lock).lock_owned().await;
    // Under the lock, so a DNS re-apply cannot forget this policy's names in between.
    let dns_warnings = shared.dns.refresh_policy(&policy).await;
    let started = std::time::Instant::now();
    let applied = install(shared, serial, policy, by, dns_warnings).await;
    shared.metrics.policy_applied_in(started.elapsed());
    applied
}

/// Re-applies the policy in force with the addresses its DNS names have now.
pub async fn reapply_current(shared: &Arc<Shared>, by: Actor) -> Result<Applied, ApplyError> {
    let serial = Arc::clone(&shared.apply_lock).lock_owned().await;
    let policy = shared.lock_state().policy.clone();
    install(shared, serial, policy, by, Vec::new()).await
}

/// Compiles `policy` into the inactive generation and flips to it; `serial` is the apply lock,
/// held until the old generation is purged, after this returns.
async fn install(
    shared: &Arc<Shared>,
    serial: OwnedMutexGuard<()>,
    policy: Policy,
    by: Actor,
    dns_warnings: Vec<String>,
) -> Result<Applied, ApplyError> {
    let started = std::time::Instant::now();
    let (resolved, mut warnings) = resolve(
        &policy,
        shared.dns.addresses_for(&policy),
        shared.private_tmp.root(),
        &shared.agent_socket,
        shared.gateway_addr,
    )?;
    warnings.extend(dns_warnings);
    let exec_paths = super::binwatch::paths_of(policy.exec_paths());
    let (old, applied) = {
        let mut st = shared.lock_state();
        let generation = st.maps.inactive_generation()?;
        let compiled = compile::compile(&policy, generation, &resolved);
        let compiled_at = started.elapsed();
        let old = st.maps.write_and_flip(&compiled)?;
        tracing::info!(
            generation,
            rules = compiled.rules.len(),
            resolve_and_compile_us = compiled_at.as_micros(),
            write_us = (started.elapsed() - compiled_at).as_micros(),
            "policy generation written and in force"
        );
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
    // The new rules are in force: reply now, and remove the old generation once the programs
    // running at the flip (they run for microseconds) are done with it. The next apply waits
    // for that (it holds `serial`), so it never writes a generation still being read.
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        tokio::time::sleep(GRACE).await;
        let purged = tokio::task::spawn_blocking(move || {
            let mut st = shared.lock_state();
            let st = &mut *st;
            let written = st.compiled[usize::from(old & 1)].as_ref();
            st.maps.purge_if_inactive(old, written)
        })
        .await;
        match purged {
            Ok(Ok(())) => {}
            // The entries stay unused (they carry the inactive generation) and the next write
            // of that generation removes them first.
            Ok(Err(e)) => tracing::warn!("removing the previous policy generation: {e}"),
            Err(e) => tracing::warn!("removing the previous policy generation: {e}"),
        }
        drop(serial);
    });
    Ok(applied)
}
