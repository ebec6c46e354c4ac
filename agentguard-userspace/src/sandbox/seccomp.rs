//! The seccomp filter `agentguard run` installs on every agent: system calls an agent never
//! needs and that reach around agentguard (BPF objects, leaving the cgroup with
//! `clone3(CLONE_INTO_CGROUP)`, kernel keyrings, mounts, terminal injection) and sockets that no
//! agentguard hook judges (raw, packet, ICMP ping, SCTP, vsock, ...).
//!
//! Each refusal belongs to a named [`Group`]; a policy grants groups back with
//! `allow_syscalls`. Filters stack across `exec` and sub-agent launches: a sub-agent can never
//! regain what its parent's filter refuses.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A policy grants a group this build does not know.
    #[error("unknown syscall group {0:?} (known: {known})", known = group_names().join(", "))]
    UnknownGroup(String),
    /// This CPU architecture has no filter.
    #[error("no seccomp filter for the {0} architecture")]
    Arch(&'static str),
    /// seccompiler refused the rules (a bug in this table).
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// Installing the filter failed.
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// A set of refusals granted back together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// The name a policy uses in `allow_syscalls`.
    pub name: &'static str,
    /// Why agents are refused it.
    pub why: &'static str,
}

/// Every group, in the order the docs list them.
pub const GROUPS: [Group; 19] = [
    group(
        "bpf",
        "load, pin, get or detach BPF objects (agentguard's own programs)",
    ),
    group(
        "clone3",
        "clone3(CLONE_INTO_CGROUP) leaves the agent's cgroup; fails with ENOSYS so libc falls back to clone",
    ),
    group(
        "open_by_handle_at",
        "opens files by handle, around path-based rules",
    ),
    group(
        "perf_event_open",
        "kernel and other processes' performance data",
    ),
    group("kexec", "loads a new kernel"),
    group("kernel_modules", "loads kernel code"),
    group("keyring", "kernel keyrings (add_key, keyctl, request_key)"),
    group("userfaultfd", "a classic kernel exploitation aid"),
    group("ptrace", "traces other processes"),
    group("process_vm", "reads and writes other processes' memory"),
    group(
        "pidfd_getfd",
        "steals file descriptors from other processes",
    ),
    group("mount", "mount-family calls (new mount API included)"),
    group(
        "io_uring",
        "io_uring operations bypass seccomp (sockets among them)",
    ),
    group(
        "userns",
        "new user namespaces (unshare/clone with CLONE_NEWUSER)",
    ),
    group("tiocsti", "TIOCSTI pushes input into a terminal"),
    group("tioclinux", "TIOCLINUX reads and writes the console"),
    group(
        "raw_sockets",
        "SOCK_RAW and AF_PACKET sockets bypass the connect/sendmsg hooks",
    ),
    group(
        "ping_sockets",
        "ICMP ping sockets never run the cgroup sendmsg hooks",
    ),
    group(
        "other_sockets",
        "socket families and protocols agentguard does not judge (SCTP, vsock, TIPC, RDS, netlink other than route, ...)",
    ),
];

const fn group(name: &'static str, why: &'static str) -> Group {
    Group { name, why }
}

/// The names of [`GROUPS`].
pub fn group_names() -> Vec<&'static str> {
    GROUPS.iter().map(|g| g.name).collect()
}

/// Whether `name` is a group a policy may grant.
pub fn is_group(name: &str) -> bool {
    GROUPS.iter().any(|g| g.name == name)
}

// Argument values the rules compare against (<linux/socket.h>, <linux/in.h>, <asm/ioctls.h>).
const AF_UNIX: u64 = 1;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const AF_NETLINK: u64 = 16;
const AF_PACKET: u64 = 17;
const NETLINK_ROUTE: u64 = 0;
const SOCK_STREAM: u64 = 1;
const SOCK_DGRAM: u64 = 2;
const SOCK_RAW: u64 = 3;
/// `type` without SOCK_NONBLOCK and SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u64 = 0xf;
const IPPROTO_IP: u64 = 0;
const IPPROTO_ICMP: u64 = 1;
const IPPROTO_TCP: u64 = 6;
const IPPROTO_UDP: u64 = 17;
const IPPROTO_ICMPV6: u64 = 58;
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// One refusal: a syscall, optionally only with these argument conditions (all must hold).
struct Refusal {
    group: &'static str,
    syscall: libc::c_long,
    when: Vec<(u8, Op, u64)>,
}

fn always(group: &'static str, syscalls: &[libc::c_long]) -> Vec<Refusal> {
    syscalls
        .iter()
        .map(|&syscall| Refusal {
            group,
            syscall,
            when: Vec::new(),
        })
        .collect()
}

fn when(group: &'static str, syscall: libc::c_long, when: Vec<(u8, Op, u64)>) -> Refusal {
    Refusal {
        group,
        syscall,
        when,
    }
}

/// Every refusal answered with EPERM.
fn eperm_refusals() -> Vec<Refusal> {
    use libc::{
        SYS_add_key, SYS_bpf, SYS_clone, SYS_delete_module, SYS_finit_module, SYS_fsconfig,
        SYS_fsmount, SYS_fsopen, SYS_fspick, SYS_init_module, SYS_io_uring_enter,
        SYS_io_uring_register, SYS_io_uring_setup, SYS_ioctl, SYS_kexec_file_load, SYS_kexec_load,
        SYS_keyctl, SYS_mount, SYS_mount_setattr, SYS_move_mount, SYS_open_by_handle_at,
        SYS_open_tree, SYS_perf_event_open, SYS_pidfd_getfd, SYS_pivot_root, SYS_process_vm_readv,
        SYS_process_vm_writev, SYS_ptrace, SYS_request_key, SYS_socket, SYS_umount2, SYS_unshare,
        SYS_userfaultfd,
    };
    let mut r = Vec::new();
    r.extend(always("bpf", &[SYS_bpf]));
    r.extend(always("open_by_handle_at", &[SYS_open_by_handle_at]));
    r.extend(always("perf_event_open", &[SYS_perf_event_open]));
    r.extend(always("kexec", &[SYS_kexec_load, SYS_kexec_file_load]));
    r.extend(always(
        "kernel_modules",
        &[SYS_init_module, SYS_finit_module, SYS_delete_module],
    ));
    r.extend(always(
        "keyring",
        &[SYS_add_key, SYS_keyctl, SYS_request_key],
    ));
    r.extend(always("userfaultfd", &[SYS_userfaultfd]));
    r.extend(always("ptrace", &[SYS_ptrace]));
    r.extend(always(
        "process_vm",
        &[SYS_process_vm_readv, SYS_process_vm_writev],
    ));
    r.extend(always("pidfd_getfd", &[SYS_pidfd_getfd]));
    r.extend(always(
        "mount",
        &[
            SYS_mount,
            SYS_umount2,
            SYS_pivot_root,
            SYS_move_mount,
            SYS_open_tree,
            SYS_fsopen,
            SYS_fsconfig,
            SYS_fsmount,
            SYS_fspick,
            SYS_mount_setattr,
        ],
    ));
    r.extend(always(
        "io_uring",
        &[
            SYS_io_uring_setup,
            SYS_io_uring_enter,
            SYS_io_uring_register,
        ],
    ));
    let newuser = (0, Op::MaskedEq(CLONE_NEWUSER), CLONE_NEWUSER);
    r.push(when("userns", SYS_unshare, vec![newuser.clone()]));
    r.push(when("userns", SYS_clone, vec![newuser]));
    r.push(when("tiocsti", SYS_ioctl, vec![(1, Op::Eq, TIOCSTI)]));
    r.push(when("tioclinux", SYS_ioctl, vec![(1, Op::Eq, TIOCLINUX)]));

    let sock_type = |value| (1, Op::MaskedEq(SOCK_TYPE_MASK), value);
    for family in [AF_INET, AF_INET6] {
        let icmp = if family == AF_INET {
            IPPROTO_ICMP
        } else {
            IPPROTO_ICMPV6
        };
        let domain = (0, Op::Eq, family);
        r.push(when(
            "raw_sockets",
            SYS_socket,
            vec![domain.clone(), sock_type(SOCK_RAW)],
        ));
        r.push(when(
            "ping_sockets",
            SYS_socket,
            vec![domain.clone(), sock_type(SOCK_DGRAM), (2, Op::Eq, icmp)],
        ));
        // Stream and datagram sockets other than TCP and UDP (SCTP, MPTCP, UDP-Lite, ...).
        r.push(when(
            "other_sockets",
            SYS_socket,
            vec![
                domain.clone(),
                (2, Op::Ne, IPPROTO_IP),
                (2, Op::Ne, IPPROTO_TCP),
                (2, Op::Ne, IPPROTO_UDP),
                (2, Op::Ne, icmp),
            ],
        ));
        // Every other socket type (SOCK_SEQPACKET for SCTP, SOCK_RDM, SOCK_DCCP, SOCK_PACKET):
        // the filter has no masked inequality, so each is listed.
        for other in
            (0..=SOCK_TYPE_MASK).filter(|t| ![SOCK_STREAM, SOCK_DGRAM, SOCK_RAW].contains(t))
        {
            r.push(when(
                "other_sockets",
                SYS_socket,
                vec![domain.clone(), sock_type(other)],
            ));
        }
    }
    r.push(when(
        "raw_sockets",
        SYS_socket,
        vec![(0, Op::Eq, AF_PACKET)],
    ));
    r.push(when(
        "other_sockets",
        SYS_socket,
        vec![(0, Op::Eq, AF_NETLINK), (2, Op::Ne, NETLINK_ROUTE)],
    ));
    r.push(when(
        "other_sockets",
        SYS_socket,
        vec![
            (0, Op::Ne, AF_UNIX),
            (0, Op::Ne, AF_INET),
            (0, Op::Ne, AF_INET6),
            (0, Op::Ne, AF_NETLINK),
            (0, Op::Ne, AF_PACKET),
        ],
    ));
    r
}

/// Syscalls answered with ENOSYS: libc falls back to an older call that agentguard judges.
fn enosys_refusals() -> Vec<Refusal> {
    always("clone3", &[libc::SYS_clone3])
}

/// The seccomp filters for an agent granted `granted` groups, in installation order.
pub fn filters(granted: &[String]) -> Result<Vec<BpfProgram>, SeccompError> {
    if let Some(unknown) = granted.iter().find(|g| !is_group(g)) {
        return Err(SeccompError::UnknownGroup(unknown.clone()));
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let mut out = Vec::new();
    for (refusals, errno) in [
        (eperm_refusals(), libc::EPERM),
        (enosys_refusals(), libc::ENOSYS),
    ] {
        let kept: Vec<Refusal> = refusals
            .into_iter()
            .filter(|r| !granted.iter().any(|g| g == r.group))
            .collect();
        if kept.is_empty() {
            continue;
        }
        out.push(compile(&kept, errno, arch)?);
    }
    Ok(out)
}

/// x86_64 also answers the x32 ABI's numbers (`nr | __X32_SYSCALL_BIT`) with the same
/// arch value: refuse those too.
const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;

fn compile(refusals: &[Refusal], errno: i32, arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for r in refusals {
        let mut numbers = vec![r.syscall];
        if arch == TargetArch::x86_64 {
            numbers.push(r.syscall | X32_SYSCALL_BIT);
        }
        for nr in numbers {
            let entry = rules.entry(nr).or_default();
            if r.when.is_empty() {
                // An empty rule list matches every call of the syscall.
                entry.clear();
                continue;
            }
            let conditions = r
                .when
                .iter()
                .map(|(arg, op, value)| condition(*arg, op, *value))
                .collect::<Result<Vec<_>, _>>()?;
            entry.push(SeccompRule::new(conditions)?);
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno.unsigned_abs()),
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// Every argument compared here is a C `int` (family, type, protocol, ioctl request, flags).
fn condition(arg: u8, op: &Op, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, Len::Dword, op.clone(), value)
}

/// Installs `filters` on the calling thread (no_new_privs must be set; `run` is single-threaded
/// here, and `exec` carries the filters into the agent).
pub fn install(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter(f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_belongs_to_a_documented_group() {
        for r in eperm_refusals().iter().chain(&enosys_refusals()) {
            assert!(is_group(r.group), "{} is not in GROUPS", r.group);
        }
        for g in GROUPS {
            let used = eperm_refusals()
                .iter()
                .chain(&enosys_refusals())
                .any(|r| r.group == g.name);
            assert!(used, "group {} refuses nothing", g.name);
        }
    }

    #[test]
    fn grants_remove_their_refusals_and_unknown_groups_are_errors() -> Result<(), SeccompError> {
        assert_eq!(filters(&[])?.len(), 2, "an EPERM and an ENOSYS filter");
        let all_eperm: Vec<String> = GROUPS
            .iter()
            .filter(|g| g.name != "clone3")
            .map(|g| g.name.to_owned())
            .collect();
        assert_eq!(
            filters(&all_eperm)?.len(),
            1,
            "only the ENOSYS filter is left"
        );
        assert!(matches!(
            filters(&["no_such_group".to_owned()]),
            Err(SeccompError::UnknownGroup(g)) if g == "no_such_group"
        ));
        Ok(())
    }
}
