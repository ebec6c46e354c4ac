//! The programs in the object: their names, hooks and which enforcement group they belong to.

/// A set of programs that is loaded, attached and adopted as a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// cgroup sock_addr programs on the agentguard subtree (every backend).
    Network,
    /// `tp_btf/sched_process_exec` + SIGKILL (when BPF LSM is unavailable).
    ExecFallback,
    /// BPF LSM hooks: exec, files, namespaces, ptrace.
    Lsm,
}

impl Group {
    /// Name used in pin paths and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::ExecFallback => "exec-fallback",
            Self::Lsm => "lsm",
        }
    }
}

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A cgroup sock_addr attach point (the type comes from the program's section).
    SockAddr,
    /// A BTF tracepoint.
    TpBtf(&'static str),
    /// A BPF LSM hook.
    Lsm(&'static str),
}

/// One program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Function name in the object.
    pub name: &'static str,
    /// Its group.
    pub group: Group,
    /// Its hook.
    pub hook: Hook,
}

/// Every program agentguard loads.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "ag_connect4",
        group: Group::Network,
        hook: Hook::SockAddr,
    },
    Spec {
        name: "ag_connect6",
        group: Group::Network,
        hook: Hook::SockAddr,
    },
    Spec {
        name: "ag_sendmsg4",
        group: Group::Network,
        hook: Hook::SockAddr,
    },
    Spec {
        name: "ag_sendmsg6",
        group: Group::Network,
        hook: Hook::SockAddr,
    },
    Spec {
        name: "ag_exec_fallback",
        group: Group::ExecFallback,
        hook: Hook::TpBtf("sched_process_exec"),
    },
    Spec {
        name: "ag_bprm_check",
        group: Group::Lsm,
        hook: Hook::Lsm("bprm_check_security"),
    },
];

/// The programs of one group.
pub fn of(group: Group) -> impl Iterator<Item = &'static Spec> {
    SPECS.iter().filter(move |s| s.group == group)
}
