//! Applying a policy: validate in full, resolve, compile for the inactive generation, write,
//! flip, log. A policy that fails any stage changes nothing.

use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;

use crate::{
    audit::record::{Actor, Body},
    dns::cache::Addresses,
    ebpf::maps,
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
    Maps(#[from] maps::MapsError),
    /// The open-budget tracepoints the policy needs could not be attached.
    #[error(
        "cannot attach the syscall tracepoints that count opens for open budgets, the previous policy stays in force: {0}"
    )]
    OpenHooks(#[from] crate::ebpf::loader::LoadError),
    /// A blocking task of the apply failed.
    #[error("the policy apply task failed, the previous policy stays in force: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Attaches or detaches the open-budget tracepoints off the runtime's workers (loading them the
/// first time runs the verifier).
async fn set_open_hooks(shared: &Arc<Shared>, wanted: bool) -> Result<(), ApplyError> {
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || shared.lock_programs().set_open_hooks(wanted)).await??;
    Ok(())
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
    let resolved_at = started.elapsed();
    let exec_paths = super::binwatch::paths_of(policy.exec_paths());
    // Compile and write off the runtime's workers and outside the state lock (ingest needs it
    // all the time): only this apply touches the inactive generation (`serial`), and programs
    // do not read it until the flip.
    let writer = shared.lock_state().maps.policy();
    let blocking_writer = Arc::clone(&writer);
    let (compiled, write_us, policy, resolved) = tokio::task::spawn_blocking(move || {
        let mut w = maps::lock(&blocking_writer);
        let generation = w.inactive_generation()?;
        let compiled = compile::compile(&policy, generation, &resolved);
        let t = std::time::Instant::now();
        w.write(&compiled)?;
        Ok::<_, ApplyError>((compiled, t.elapsed().as_micros(), policy, resolved))
    })
    .await??;
    let generation = compiled.generation;
    let written_at = started.elapsed();
    // Open budgets need their tracepoints before the generation that has them is in force.
    let hooks_before = shared.lock_programs().open_hooks_attached();
    if compiled.has_open_budget()
        && let Err(e) = set_open_hooks(shared, true).await
    {
        discard(&writer, generation).await;
        return Err(e);
    }
    let flipped = {
        let mut st = shared.lock_state();
        // One word: each program run sees the old rules or the new ones, never a mix.
        let flipped = maps::lock(&writer).flip(generation);
        flipped.map(|old| {
            let open_budget = compiled.has_open_budget();
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
            st.compiled[usize::from(generation)] = Some(Arc::new(compiled));
            let _ = shared.exec_paths.send(exec_paths);
            st.binaries = resolved.binaries.clone();
            st.policy = policy;
            (old, open_budget, applied)
        })
    };
    let (old, open_budget, applied) = match flipped {
        Ok(done) => done,
        Err(e) => {
            if hooks_before == Some(false) {
                let _ = set_open_hooks(shared, false).await;
            }
            discard(&writer, generation).await;
            return Err(e.into());
        }
    };
    let flipped_at = started.elapsed();
    if !open_budget && let Err(e) = set_open_hooks(shared, false).await {
        tracing::warn!("detaching the open-budget tracepoints: {e}");
    }
    tracing::info!(
        generation,
        rules = applied.rules,
        resolve_us = resolved_at.as_micros(),
        compile_us = (written_at - resolved_at)
            .as_micros()
            .saturating_sub(write_us),
        write_us,
        flip_us = (flipped_at - written_at).as_micros(),
        reply_us = started.elapsed().as_micros(),
        "policy generation written and in force"
    );
    shared.dns.set_in_force(&resolved.names);
    super::notify::status(&format!(
        "enforcing policy {} (generation {})",
        applied.digest, applied.generation
    ));
    // The new rules are in force: reply now, and remove the old generation once the programs
    // running at the flip are done with it (one RCU grace period, see `ebpf::quiesce`). The
    // next apply waits for that (it holds `serial`), so it never writes a generation still
    // being read.
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        // The state lock only for a reference to what was written; the deletes hold the
        // policy maps' lock alone, so ingest and the control socket carry on meanwhile.
        let written = shared.lock_state().compiled[usize::from(old & 1)].clone();
        let t = std::time::Instant::now();
        let purged = tokio::task::spawn_blocking(move || {
            let mut maps = maps::lock(&writer);
            maps.wait_for_readers();
            maps.purge_if_inactive(old, written.as_deref())
        })
        .await;
        match purged {
            Ok(Ok(())) => tracing::debug!(
                generation = old,
                took_us = t.elapsed().as_micros(),
                "previous policy generation removed"
            ),
            // The entries stay unused (they carry the inactive generation) and the next write
            // of that generation removes them first.
            Ok(Err(e)) => tracing::warn!("removing the previous policy generation: {e}"),
            Err(e) => tracing::warn!("removing the previous policy generation: {e}"),
        }
        drop(serial);
    });
    Ok(applied)
}

/// Removes a written generation that was never flipped to (fail closed: the previous policy
/// stays in force, and nothing of the refused one lingers).
async fn discard(writer: &Arc<std::sync::Mutex<maps::PolicyMaps>>, generation: u8) {
    let writer = Arc::clone(writer);
    let r = tokio::task::spawn_blocking(move || {
        maps::lock(&writer).purge_if_inactive(generation, None)
    })
    .await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::warn!(
            generation,
            "cannot remove a generation that was not put in force"
        );
    }
}
