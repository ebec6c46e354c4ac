//! Verdicts, backends and access bits, with their stable numbers.

/// What happened to an action. Stable numbers: they are written into the audit log.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The action was allowed by a rule (or no rule of its kind applies).
    Allowed = 1,
    /// The action was refused.
    Denied = 2,
    /// The action would have been refused, but the agent is in audit mode.
    AuditDenied = 3,
    /// The process was killed (the fallback exec backend cannot refuse an exec).
    Killed = 4,
    /// The action was refused because a budget was exhausted.
    Throttled = 5,
}

impl Verdict {
    /// Decodes a number read from the kernel or the log.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Allowed),
            2 => Some(Self::Denied),
            3 => Some(Self::AuditDenied),
            4 => Some(Self::Killed),
            5 => Some(Self::Throttled),
            _ => None,
        }
    }
}

/// Which enforcement mechanism judged an action. Stable numbers.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// cgroup sock_addr programs (connect4/6, sendmsg4/6).
    CgroupSockAddr = 1,
    /// `tp_btf/sched_process_exec` + SIGKILL (fallback exec).
    TpBtfExec = 2,
    /// BPF LSM hooks.
    BpfLsm = 3,
    /// Landlock, applied by `agentguard run` (fallback files).
    Landlock = 4,
    /// Classic syscall tracepoints (fallback open budget).
    Tracepoint = 5,
    /// The daemon itself (freeze, thaw, kill, policy).
    Daemon = 6,
}

impl Backend {
    /// Decodes a number read from the kernel or the log.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::CgroupSockAddr),
            2 => Some(Self::TpBtfExec),
            3 => Some(Self::BpfLsm),
            4 => Some(Self::Landlock),
            5 => Some(Self::Tracepoint),
            6 => Some(Self::Daemon),
            _ => None,
        }
    }
}

/// Read access to a path.
pub const ACCESS_READ: u8 = 1;
/// Write access to a path (open for writing, create, delete, rename, link, truncate).
pub const ACCESS_WRITE: u8 = 2;
