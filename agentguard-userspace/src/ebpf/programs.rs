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
    /// Syscall tracepoints counting opens for budgets (when BPF LSM is unavailable).
    OpenBudget,
}

impl Group {
    /// Name used in pin paths and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::ExecFallback => "exec-fallback",
            Self::Lsm => "lsm",
            Self::OpenBudget => "open-budget",
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
    /// A classic tracepoint: category and name.
    TracePoint(&'static str, &'static str),
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
    Spec {
        name: "ag_file_open",
        group: Group::Lsm,
        hook: Hook::Lsm("file_open"),
    },
    Spec {
        name: "ag_path_unlink",
        group: Group::Lsm,
        hook: Hook::Lsm("path_unlink"),
    },
    Spec {
        name: "ag_path_mkdir",
        group: Group::Lsm,
        hook: Hook::Lsm("path_mkdir"),
    },
    Spec {
        name: "ag_path_rmdir",
        group: Group::Lsm,
        hook: Hook::Lsm("path_rmdir"),
    },
    Spec {
        name: "ag_path_symlink",
        group: Group::Lsm,
        hook: Hook::Lsm("path_symlink"),
    },
    Spec {
        name: "ag_path_rename",
        group: Group::Lsm,
        hook: Hook::Lsm("path_rename"),
    },
    Spec {
        name: "ag_path_link",
        group: Group::Lsm,
        hook: Hook::Lsm("path_link"),
    },
    Spec {
        name: "ag_path_truncate",
        group: Group::Lsm,
        hook: Hook::Lsm("path_truncate"),
    },
    Spec {
        name: "ag_path_chmod",
        group: Group::Lsm,
        hook: Hook::Lsm("path_chmod"),
    },
    Spec {
        name: "ag_path_chown",
        group: Group::Lsm,
        hook: Hook::Lsm("path_chown"),
    },
    Spec {
        name: "ag_userns_create",
        group: Group::Lsm,
        hook: Hook::Lsm("userns_create"),
    },
    Spec {
        name: "ag_sb_mount",
        group: Group::Lsm,
        hook: Hook::Lsm("sb_mount"),
    },
    Spec {
        name: "ag_move_mount",
        group: Group::Lsm,
        hook: Hook::Lsm("move_mount"),
    },
    Spec {
        name: "ag_ptrace_access_check",
        group: Group::Lsm,
        hook: Hook::Lsm("ptrace_access_check"),
    },
    Spec {
        name: "ag_bpf",
        group: Group::Lsm,
        hook: Hook::Lsm("bpf"),
    },
    Spec {
        name: "ag_task_kill",
        group: Group::Lsm,
        hook: Hook::Lsm("task_kill"),
    },
    Spec {
        name: "ag_socket_create",
        group: Group::Lsm,
        hook: Hook::Lsm("socket_create"),
    },
    Spec {
        name: "ag_open_budget_openat",
        group: Group::OpenBudget,
        hook: Hook::TracePoint("syscalls", "sys_enter_openat"),
    },
    Spec {
        name: "ag_open_budget_openat2",
        group: Group::OpenBudget,
        hook: Hook::TracePoint("syscalls", "sys_enter_openat2"),
    },
    Spec {
        name: "ag_open_budget_open",
        group: Group::OpenBudget,
        hook: Hook::TracePoint("syscalls", "sys_enter_open"),
    },
];

/// The programs of one group.
pub fn of(group: Group) -> impl Iterator<Item = &'static Spec> {
    SPECS.iter().filter(move |s| s.group == group)
}
