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
            },
        }
    }

    /// Whether BPF LSM enforces here.
    pub fn lsm(&self) -> bool {
        self.exec == ExecBackend::BpfLsm
    }
}

impl fmt::Display for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exec = match self.exec {
            ExecBackend::BpfLsm => "bpf-lsm",
            ExecBackend::TpBtfKill => "tp-btf+sigkill",
        };
        let file = match self.file {
            FileBackend::BpfLsm => "bpf-lsm".to_owned(),
            FileBackend::Landlock => format!("landlock(abi {})", self.landlock_abi.unwrap_or(0)),
            FileBackend::Unenforced => "none".to_owned(),
        };
        write!(f, "network={} exec={exec} file={file}", self.network)
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
        Ok(())
    } else {
        Err(format!(
            "the bpf LSM is not active (active: {}; boot with lsm=...,bpf)",
            lsms.join(",")
        ))
    }
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
}
