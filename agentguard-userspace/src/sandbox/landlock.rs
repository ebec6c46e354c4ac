//! The Landlock domain for the fallback file backend.
//!
//! Every filesystem access right the running kernel's Landlock ABI knows is handled (so anything
//! not granted is refused with EACCES), plus signal and abstract-socket scoping. Read prefixes
//! get read rights including execute (the exec allowlist in the kernel stays the authority on
//! what may run, and scripts need execute on themselves), write prefixes get every write right,
//! allowed binaries and their ELF loader get read + execute.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, RestrictionStatus,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::elf;
use crate::{
    control::proto::LandlockSpec,
    policy::{Agent, Located, PathRule, runtime},
};

/// The newest ABI this build knows; older kernels get the subset they support.
const ABI_TARGET: ABI = ABI::V9;

/// Landlock errors.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The ruleset could not be built or applied.
    #[error("landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// The kernel applied nothing.
    #[error("landlock is not enforced by this kernel, so file rules cannot be applied")]
    NotEnforced,
}

/// The outcome, for the operator.
#[derive(Debug)]
pub struct Applied {
    /// Fully or partially enforced.
    pub status: RestrictionStatus,
    /// Paths that did not exist and were skipped.
    pub skipped: Vec<PathBuf>,
}

fn rule(path: &Path, access: landlock::BitFlags<AccessFs>) -> Option<PathBeneath<PathFd>> {
    let fd = PathFd::new(path).ok()?;
    let access = if path.is_dir() {
        access
    } else {
        access & AccessFs::from_file(ABI_TARGET)
    };
    Some(PathBeneath::new(fd, access))
}

impl LandlockSpec {
    /// The domain `agentguard run` applies for agent `a` (whose files are restricted), with its
    /// private temp directory `tmp_dir` granted for read and write.
    pub fn of_agent(a: &Agent, tmp_dir: Option<&Path>) -> Self {
        // Baseline entries a distribution does not have are simply not granted. The private
        // temp directory is granted exactly: Landlock rules are per process, so per instance.
        let prefixes = |rules: &[Located<PathRule>]| {
            rules
                .iter()
                .filter_map(|r| match &r.value {
                    PathRule::Prefix(p) if runtime::is_builtin(p) && !p.exists() => None,
                    PathRule::Prefix(p) => Some(p.clone()),
                    PathRule::ProcSelf => None,
                })
                .chain(tmp_dir.map(Path::to_path_buf))
                .collect()
        };
        Self {
            read: prefixes(&a.read),
            write: prefixes(&a.write),
            exec: a.exec.iter().map(|e| e.value.clone()).collect(),
            proc_self: a
                .read
                .iter()
                .chain(&a.write)
                .any(|r| r.value == PathRule::ProcSelf),
        }
    }
}

/// Applies the rules to the calling thread (call while single-threaded, right before exec, so
/// the whole agent inherits them). `pid` is the launcher's pid, which the agent keeps after
/// exec: its `/proc/<pid>` is "the agent's own /proc".
pub fn apply(spec: &LandlockSpec, pid: u32) -> Result<Applied, LandlockError> {
    let read = AccessFs::from_read(ABI_TARGET);
    let write = AccessFs::from_write(ABI_TARGET);
    let exec = AccessFs::ReadFile | AccessFs::Execute;
    let mut wanted: Vec<(PathBuf, landlock::BitFlags<AccessFs>)> = Vec::new();
    wanted.extend(spec.read.iter().map(|p| (p.clone(), read)));
    wanted.extend(spec.write.iter().map(|p| (p.clone(), write)));
    for bin in &spec.exec {
        wanted.push((bin.clone(), exec));
        if let Some(loader) = elf::interpreter(bin) {
            wanted.push((loader, exec));
        }
    }
    if spec.proc_self {
        wanted.push((PathBuf::from(format!("/proc/{pid}")), read));
    }
    let mut skipped = Vec::new();
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI_TARGET))?
        .scope(Scope::from_all(ABI_TARGET))?
        .create()?
        // The agent is exec'd after this: Landlock's default logs refusals only until then
        // (same-exec), which would hide every refusal of the agent itself from the audit
        // records the daemon turns into log entries (ABI 7; dropped on older kernels).
        .log_new_exec(true)?;
    for (path, access) in wanted {
        match rule(&path, access) {
            Some(r) => created = created.add_rule(r)?,
            None => skipped.push(path),
        }
    }
    let status = created.restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(LandlockError::NotEnforced);
    }
    Ok(Applied { status, skipped })
}
