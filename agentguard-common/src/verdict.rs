//! Verdicts, backends and access bits, with their stable numbers.

stable_enum! {
    /// What happened to an action. Stable numbers: they are written into the audit log.
    pub enum Verdict: u8, from_u8 {
        /// The action was allowed by a rule (or no rule of its kind applies).
        Allowed = 1 => "allowed",
        /// The action was refused.
        Denied = 2 => "denied",
        /// The action would have been refused, but the agent is in audit mode.
        AuditDenied = 3 => "audit-denied",
        /// The process was killed (the fallback exec backend cannot refuse an exec).
        Killed = 4 => "killed",
        /// The action was refused because a budget was exhausted.
        Throttled = 5 => "throttled",
    }
}

stable_enum! {
    /// Which enforcement mechanism judged an action. Stable numbers.
    pub enum Backend: u8, from_u8 {
        /// cgroup sock_addr programs (connect4/6, sendmsg4/6).
        CgroupSockAddr = 1 => "cgroup-sock-addr",
        /// `tp_btf/sched_process_exec` + SIGKILL (fallback exec).
        TpBtfExec = 2 => "tp-btf",
        /// BPF LSM hooks.
        BpfLsm = 3 => "bpf-lsm",
        /// Landlock, applied by `agentguard run` (fallback files).
        Landlock = 4 => "landlock",
        /// Classic syscall tracepoints (fallback open budget).
        Tracepoint = 5 => "tracepoint",
        /// The daemon itself (freeze, thaw, kill, policy).
        Daemon = 6 => "daemon",
    }
}

/// Read access to a path.
pub const ACCESS_READ: u8 = 1;
/// Write access to a path (open for writing, create, delete, rename, link, truncate).
pub const ACCESS_WRITE: u8 = 2;
