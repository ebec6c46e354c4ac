//! Parts of agentguard's confinement applied by the generator to itself, without the daemon or
//! its BPF programs, so the bench can price each alone: the agent's Landlock domain (the
//! kernel's cost of file rules) and agentguard's seccomp filter. Also the host's audit state,
//! which decides at fork whether a new task gets syscall-audit work.

use std::path::Path;

use agentguard::{
    control::proto::LandlockSpec,
    daemon::landlock_audit::NEVER_RULES,
    sandbox::{landlock, seccomp},
    sys::audit::Control,
};
use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// Applies the Landlock domain `agentguard run` would give `agent` of the policy file to this
/// (single-threaded) process: the same read prefixes, binaries and `/proc/self` grant.
pub fn landlock(policy: &Path, agent: &str) -> Result<()> {
    let policy = agentguard::policy::load(policy)
        .with_context(|| format!("cannot load {}", policy.display()))?;
    let a = policy
        .agent(agent)
        .with_context(|| format!("no agent {agent} in the policy"))?;
    // As the daemon computes it (no private temp directory: the bench agent has none).
    let spec = LandlockSpec::of_agent(a, None);
    landlock::apply(&spec, std::process::id()).context("cannot apply the Landlock domain")?;
    Ok(())
}

/// Installs the seccomp filter `agentguard run` gives an agent that is granted nothing back.
pub fn seccomp() -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("prctl(PR_SET_NO_NEW_PRIVS)")?;
    seccomp::install(&seccomp::filters(&[])?)?;
    Ok(())
}

/// `audit status`: `{"enabled": N}`.
pub fn audit_status() -> Result<Value> {
    let status = Control::open()?.status()?;
    Ok(json!({ "enabled": status.enabled }))
}

/// `audit set ENABLED never-rules|no-never-rules`: audit on or off, with or without the
/// daemon's task rules that exclude non-agents from syscall auditing (both idempotent, so the
/// bench can move between the daemon's state and the state it found).
pub fn audit_set(enabled: u32, never_rules: bool) -> Result<Value> {
    let mut c = Control::open()?;
    for rule in NEVER_RULES {
        // Adding a rule that exists, or deleting one that does not, fails: the state is then
        // already the one asked for.
        let _ = if never_rules {
            c.add_rule(rule)
        } else {
            c.delete_rule(rule)
        };
    }
    c.set_enabled(enabled)?;
    audit_status()
}
