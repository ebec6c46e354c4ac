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

stable_enum! {
    /// What the tool gateway did with a request. Stable numbers: they are written into the
    /// audit log (`tool-call` records).
    pub enum ToolVerdict: u8, from_u8 {
        /// Forwarded to the upstream (whatever status it answered).
        Forwarded = 1 => "forwarded",
        /// Refused by the rules: not an agent, tool not granted, method or path not allowed (403).
        Denied = 2 => "denied",
        /// Over the tool's rate for the instance (429).
        Throttled = 3 => "throttled",
        /// Body over `max_body` (413).
        TooLarge = 4 => "too-large",
        /// The request carried the value of a secret the gateway holds (403).
        SecretInRequest = 5 => "secret-in-request",
        /// The tool's credential is not in the secret store (503).
        NoCredential = 6 => "no-credential",
        /// The upstream could not be reached or failed mid-response (502).
        UpstreamError = 7 => "upstream-error",
        /// The response carried the value of a secret; the stream was cut.
        SecretInResponse = 8 => "secret-in-response",
        /// Not a request the gateway serves (no `/tools/NAME/` prefix, unknown tool) (404).
        NotFound = 9 => "not-found",
    }
}

/// Read access to a path.
pub const ACCESS_READ: u8 = 1;
/// Write access to a path (open for writing, create, delete, rename, link, truncate).
pub const ACCESS_WRITE: u8 = 2;
