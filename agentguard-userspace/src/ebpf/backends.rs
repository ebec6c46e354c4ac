//! Which mechanism enforces each domain on this host, decided once at start-up from probes.

use std::{fmt, path::Path};

use serde::Serialize;

use crate::sys::mounts;

/// Who judges execs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecBackend {
    /// `bprm_check_security` refuses with EPERM before the exec commits.
    BpfLsm,
    /// `tp_btf/sched_process_exec` kills the process before the binary runs its own code.
    TpBtfKill,
}

/// Who judges file access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileBackend {
    /// `file_open` and `path_*` hooks, for every process of an agent.
    BpfLsm,
    /// A Landlock domain that `agentguard run` applies to itself before exec.
    Landlock,
    /// Nothing can enforce file rules here.
    Unenforced,
}

/// A program of the chosen backend that did not load, and what enforcement loses without it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MissingProgram {
    /// The program.
    pub program: &'static str,
    /// Where it would have attached, e.g. `lsm/userns_create`.
    pub hook: String,
    /// Why it did not load (the kernel's own words, shortened).
    pub reason: String,
    /// The guarantee that does not hold.
    pub loses: &'static str,
}

/// The enforcement decision for this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backends {
    /// Network: always cgroup sock_addr programs.
    pub network: &'static str,
    /// Exec.
    pub exec: ExecBackend,
    /// Files.
    pub file: FileBackend,
    /// Landlock ABI version, when Landlock is available.
    pub landlock_abi: Option<i32>,
    /// Why BPF LSM is not used, when it is not.
    pub lsm_unavailable: Option<String>,
    /// Programs of the chosen backend that did not load: enforcement holds without what each
    /// one names.
    pub missing: Vec<MissingProgram>,
    /// How the chosen backend differs on this kernel without losing a guarantee.
    pub notes: Vec<String>,
}

impl Backends {
    /// The decision given whether LSM programs load and what Landlock offers.
    pub fn decide(lsm: Result<(), String>, landlock_abi: Option<i32>) -> Self {
        match lsm {
            Ok(()) => Self {
                network: "cgroup-sock-addr",
                exec: ExecBackend::BpfLsm,
                file: FileBackend::BpfLsm,
                landlock_abi,
                lsm_unavailable: None,
                missing: Vec::new(),
                notes: Vec::new(),
            },
            Err(reason) => Self {
                network: "cgroup-sock-addr",
                exec: ExecBackend::TpBtfKill,
                file: if landlock_abi.is_some() {
                    FileBackend::Landlock
                } else {
                    FileBackend::Unenforced
                },
                landlock_abi,
                lsm_unavailable: Some(reason),
                missing: Vec::new(),
                notes: Vec::new(),
            },
        }
    }

    /// Whether BPF LSM enforces here.
    pub fn lsm(&self) -> bool {
        self.exec == ExecBackend::BpfLsm
    }
}

impl Backends {
    /// The exec backend's name as `doctor` and `status` show it.
    pub fn exec_name(&self) -> &'static str {
        match self.exec {
            ExecBackend::BpfLsm => "bpf-lsm",
            ExecBackend::TpBtfKill => "tp-btf+sigkill",
        }
    }

    /// The file backend's name as `doctor` and `status` show it.
    pub fn file_name(&self) -> String {
        match self.file {
            FileBackend::BpfLsm => "bpf-lsm".to_owned(),
            FileBackend::Landlock => format!("landlock(abi {})", self.landlock_abi.unwrap_or(0)),
            FileBackend::Unenforced => "none".to_owned(),
        }
    }
}

impl fmt::Display for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "network={} exec={} file={}",
            self.network,
            self.exec_name(),
            self.file_name()
        )?;
        // Loud on purpose: `status` and the log's start record show this string.
        for m in &self.missing {
            write!(f, "; NOT LOADED {} ({}): {}", m.program, m.hook, m.loses)?;
        }
        Ok(())
    }
}

/// The active LSMs (`/sys/kernel/security/lsm`), mounting securityfs when needed.
pub fn active_lsms() -> Result<Vec<String>, String> {
    let securityfs = Path::new("/sys/kernel/security");
    if !securityfs.join("lsm").exists() {
        mounts::ensure("securityfs", securityfs).map_err(|e| e.to_string())?;
    }
    let text = std::fs::read_to_string(securityfs.join("lsm"))
        .map_err(|e| format!("cannot read /sys/kernel/security/lsm: {e}"))?;
    Ok(text
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Whether `bpf` is among the active LSMs; the error says why not.
pub fn bpf_lsm_active() -> Result<(), String> {
    let lsms = active_lsms()?;
    if lsms.iter().any(|l| l == "bpf") {
        return Ok(());
    }
    // `capability` is always first and never named on the command line.
    let keep: Vec<&str> = lsms
        .iter()
        .map(String::as_str)
        .filter(|l| *l != "capability")
        .collect();
    Err(format!(
        "the bpf LSM is not active (active: {}): add bpf to the kernel command line, \
         e.g. lsm={},bpf (the kernel needs CONFIG_BPF_LSM=y)",
        lsms.join(","),
        keep.join(",")
    ))
}

/// The Landlock ABI version the kernel offers, or `None` when Landlock is unavailable.
pub fn landlock_abi() -> Option<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attribute pointer and size 0 this syscall only returns the ABI
    // version (or an error); it touches no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_without_lsm() {
        let b = Backends::decide(Err("no bpf lsm".into()), Some(7));
        assert_eq!(
            (b.exec, b.file),
            (ExecBackend::TpBtfKill, FileBackend::Landlock)
        );
        assert_eq!(
            b.to_string(),
            "network=cgroup-sock-addr exec=tp-btf+sigkill file=landlock(abi 7)"
        );
        let b = Backends::decide(Err("x".into()), None);
        assert_eq!(b.file, FileBackend::Unenforced);
        let b = Backends::decide(Ok(()), Some(6));
        assert!(b.lsm());
        assert_eq!(
            b.to_string(),
            "network=cgroup-sock-addr exec=bpf-lsm file=bpf-lsm"
        );
    }

    #[test]
    fn missing_programs_are_shown() {
        let mut b = Backends::decide(Ok(()), Some(2));
        b.missing.push(MissingProgram {
            program: "ag_userns_create",
            hook: "lsm/userns_create".into(),
            reason: "no such hook".into(),
            loses: "agents may create user namespaces",
        });
        assert!(b.lsm());
        assert_eq!(
            b.to_string(),
            "network=cgroup-sock-addr exec=bpf-lsm file=bpf-lsm; NOT LOADED ag_userns_create \
             (lsm/userns_create): agents may create user namespaces"
        );
    }
}
