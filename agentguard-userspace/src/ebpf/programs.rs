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
    /// cgroup sock_addr programs judging AF_UNIX connects and sends (Linux >= 6.7), where the
    /// BPF LSM hooks do not judge them.
    UnixSockAddr,
}

impl Group {
    /// Name used in pin paths and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::ExecFallback => "exec-fallback",
            Self::Lsm => "lsm",
            Self::OpenBudget => "open-budget",
            Self::UnixSockAddr => "unix-sock-addr",
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
    /// Function name in the object; links are pinned under this name whichever variant loaded.
    pub name: &'static str,
    /// Its group.
    pub group: Group,
    /// Its hook.
    pub hook: Hook,
    /// A variant of the same program to load where the kernel's verifier refuses this one (the
    /// path hooks: Linux 6.1 does not allow `bpf_d_path` there, so the variant walks dentries).
    pub alternate: Option<&'static str>,
    /// What enforcement loses when neither variant loads, for a program the group can do
    /// without; `None` for one it cannot (then the whole group fails to load).
    pub optional: Option<&'static str>,
}

impl Spec {
    const fn new(name: &'static str, group: Group, hook: Hook) -> Self {
        Self {
            name,
            group,
            hook,
            alternate: None,
            optional: None,
        }
    }

    /// A BPF LSM program without which the LSM backend cannot stand.
    const fn lsm(name: &'static str, hook: &'static str) -> Self {
        Self::new(name, Group::Lsm, Hook::Lsm(hook))
    }

    /// A path hook, with its dentry-walk variant.
    const fn path(name: &'static str, walk: &'static str, hook: &'static str) -> Self {
        Self {
            alternate: Some(walk),
            ..Self::lsm(name, hook)
        }
    }

    /// A BPF LSM program whose absence `loses` one guarantee and leaves the rest standing.
    const fn hardening(name: &'static str, hook: &'static str, loses: &'static str) -> Self {
        Self {
            optional: Some(loses),
            ..Self::lsm(name, hook)
        }
    }

    /// The program names to try, in order.
    pub fn variants(&self) -> impl Iterator<Item = &'static str> + use<> {
        std::iter::once(self.name).chain(self.alternate)
    }

    /// The hook's name, for messages.
    pub fn hook_name(&self) -> String {
        match self.hook {
            Hook::SockAddr => "cgroup sock_addr".to_owned(),
            Hook::TpBtf(tp) => format!("tp_btf/{tp}"),
            Hook::Lsm(hook) => format!("lsm/{hook}"),
            Hook::TracePoint(category, name) => format!("tracepoint/{category}/{name}"),
        }
    }
}

/// What an agent can do when no AF_UNIX program judges.
pub const UNIX_UNJUDGED: &str =
    "AF_UNIX is not judged: agents may connect and send to any Unix socket their uid may open";

/// The programs that judge AF_UNIX, each a pair: connects and datagram sends.
pub const UNIX_LSM: [&str; 2] = ["ag_unix_stream_connect", "ag_unix_may_send"];

/// The cgroup hook of an AF_UNIX sock_addr program, for asking the kernel whether it has it
/// ([`super::hook_probe`]); `None` for every other program.
pub fn unix_sock_addr_hook(program: &str) -> Option<aya_obj::generated::bpf_attach_type> {
    use aya_obj::generated::bpf_attach_type::{BPF_CGROUP_UNIX_CONNECT, BPF_CGROUP_UNIX_SENDMSG};
    match program {
        "ag_connect_unix" => Some(BPF_CGROUP_UNIX_CONNECT),
        "ag_sendmsg_unix" => Some(BPF_CGROUP_UNIX_SENDMSG),
        _ => None,
    }
}

/// Every program agentguard loads.
///
/// Essential LSM programs are the exec and file rules (`bprm_check_security`, `file_open`, the
/// `path_*` write checks): without one of them the LSM backend would silently enforce less than
/// the Landlock fallback, so the whole group falls back instead. The namespace, mount and ptrace
/// hooks harden an agent's sandbox; one that does not load is reported with what it loses.
pub const SPECS: &[Spec] = &[
    Spec::new("ag_connect4", Group::Network, Hook::SockAddr),
    Spec::new("ag_connect6", Group::Network, Hook::SockAddr),
    Spec::new("ag_sendmsg4", Group::Network, Hook::SockAddr),
    Spec::new("ag_sendmsg6", Group::Network, Hook::SockAddr),
    Spec::new(
        "ag_exec_fallback",
        Group::ExecFallback,
        Hook::TpBtf("sched_process_exec"),
    ),
    Spec::lsm("ag_bprm_check", "bprm_check_security"),
    Spec::lsm("ag_file_open", "file_open"),
    Spec::path("ag_path_unlink", "ag_walk_unlink", "path_unlink"),
    Spec::path("ag_path_mkdir", "ag_walk_mkdir", "path_mkdir"),
    Spec::path("ag_path_rmdir", "ag_walk_rmdir", "path_rmdir"),
    Spec::path("ag_path_symlink", "ag_walk_symlink", "path_symlink"),
    Spec::path("ag_path_rename", "ag_walk_rename", "path_rename"),
    Spec::path("ag_path_link", "ag_walk_link", "path_link"),
    Spec::path("ag_path_truncate", "ag_walk_truncate", "path_truncate"),
    Spec::path("ag_path_chmod", "ag_walk_chmod", "path_chmod"),
    Spec::path("ag_path_chown", "ag_walk_chown", "path_chown"),
    Spec::hardening(
        "ag_userns_create",
        "userns_create",
        "agents may create user namespaces (the hook exists from Linux 6.1)",
    ),
    Spec::hardening(
        "ag_sb_mount",
        "sb_mount",
        "agents are not refused mount(2); only a capability they were granted allows it",
    ),
    Spec::hardening(
        "ag_move_mount",
        "move_mount",
        "agents are not refused move_mount(2); only a capability they were granted allows it",
    ),
    Spec::hardening(
        "ag_ptrace_access_check",
        "ptrace_access_check",
        "agents may ptrace processes outside their instance as far as the kernel's own ptrace rules allow",
    ),
    Spec::hardening(
        "ag_bpf",
        "bpf",
        "agents' bpf(2) calls are refused only by the seccomp filter `agentguard run` installs",
    ),
    Spec::hardening(
        "ag_task_kill",
        "task_kill",
        "agents may signal processes outside their instance as far as their uid allows",
    ),
    Spec::hardening(
        "ag_socket_create",
        "socket_create",
        "sockets no hook judges are refused only by the seccomp filter `agentguard run` installs",
    ),
    Spec::hardening(
        "ag_unix_stream_connect",
        "unix_stream_connect",
        UNIX_UNJUDGED,
    ),
    Spec::hardening("ag_unix_may_send", "unix_may_send", UNIX_UNJUDGED),
    Spec {
        optional: Some(UNIX_UNJUDGED),
        ..Spec::new("ag_connect_unix", Group::UnixSockAddr, Hook::SockAddr)
    },
    Spec {
        optional: Some(UNIX_UNJUDGED),
        ..Spec::new("ag_sendmsg_unix", Group::UnixSockAddr, Hook::SockAddr)
    },
    Spec::new(
        "ag_open_budget_openat",
        Group::OpenBudget,
        Hook::TracePoint("syscalls", "sys_enter_openat"),
    ),
    Spec::new(
        "ag_open_budget_openat2",
        Group::OpenBudget,
        Hook::TracePoint("syscalls", "sys_enter_openat2"),
    ),
    Spec::new(
        "ag_open_budget_open",
        Group::OpenBudget,
        Hook::TracePoint("syscalls", "sys_enter_open"),
    ),
];

/// The programs of one group.
pub fn of(group: Group) -> impl Iterator<Item = &'static Spec> {
    SPECS.iter().filter(move |s| s.group == group)
}

/// The spec named `name`.
pub fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_and_file_rules_are_essential() {
        for name in [
            "ag_bprm_check",
            "ag_file_open",
            "ag_path_unlink",
            "ag_path_rename",
        ] {
            assert_eq!(spec(name).and_then(|s| s.optional), None, "{name}");
        }
        assert!(spec("ag_userns_create").is_some_and(|s| s.optional.is_some()));
        assert_eq!(
            spec("ag_path_unlink").map(|s| s.variants().collect::<Vec<_>>()),
            Some(vec!["ag_path_unlink", "ag_walk_unlink"])
        );
    }
}
