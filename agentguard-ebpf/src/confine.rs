//! What an agent may not do (BPF LSM backend): use `bpf(2)` (a root agent could otherwise open
//! agentguard's pinned links and detach them), signal a process outside its own instance and its
//! sub-agents (the daemon, the operator's shell), or create a socket of a kind the network
//! programs do not judge (raw, packet, ICMP ping, SCTP, vsock, ...: traffic on those never passes
//! the cgroup sock_addr hooks). `bpf(2)` and the socket classes follow the policy's
//! `allow_syscalls` grants, like the seccomp filter `agentguard run` installs; these hooks also
//! hold for processes without that filter (adopted with `agentguard tag`).
//!
//! These hooks do not read their `ret` argument: BPF LSM programs on an int hook run as
//! fmod_ret programs, and the trampoline skips every later program once one returned non-zero,
//! so a program that runs always follows a 0. (The `bpf` hook's argument list also differs
//! between kernels, which would move `ret`.)

use agentguard_common::{
    agent::{
        AGENT_ALLOW_BPF, AGENT_ALLOW_OTHER_SOCKETS, AGENT_ALLOW_PING_SOCKETS,
        AGENT_ALLOW_RAW_SOCKETS,
    },
    event::{EventKind, FILE_PATH_LEN, FileEvent, FileOp},
    maps::MAX_AGENT_DEPTH,
    verdict::{Backend, Verdict},
};
use aya_ebpf::{helpers::generated, macros::lsm, programs::LsmContext};

use crate::{
    emit,
    identity::{self, Subject},
    kernel,
    maps::CGROUPS,
    verdict::{self, Judgement},
};

const EPERM: i32 = 1;

const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AF_NETLINK: i32 = 16;
const AF_PACKET: i32 = 17;
const SOCK_STREAM: i32 = 1;
const SOCK_DGRAM: i32 = 2;
const SOCK_RAW: i32 = 3;
/// `SOCK_NONBLOCK` and `SOCK_CLOEXEC` share the type argument; the type is the low bits.
const SOCK_TYPE_MASK: i32 = 0xf;
const IPPROTO_ICMP: i32 = 1;
const IPPROTO_TCP: i32 = 6;
const IPPROTO_UDP: i32 = 17;
const IPPROTO_ICMPV6: i32 = 58;
const NETLINK_ROUTE: i32 = 0;

#[lsm(hook = "bpf")]
pub fn ag_bpf(ctx: LsmContext) -> i32 {
    // Arguments: (int cmd, union bpf_attr *attr, unsigned int size[, ...], int ret).
    let Some(subject) = identity::current() else {
        return 0;
    };
    if subject.flags() & AGENT_ALLOW_BPF != 0 {
        return 0;
    }
    let cmd: i32 = ctx.arg(0);
    let mut text = Text::new();
    text.format(&CMD_TEXT, &[u64::from(cmd as u32)]);
    refuse(&subject, FileOp::Bpf, 0, &text)
}

#[lsm(hook = "task_kill")]
pub fn ag_task_kill(ctx: LsmContext) -> i32 {
    // Arguments: (struct task_struct *p, struct kernel_siginfo *info, int sig,
    // const struct cred *cred, int ret).
    let Some(subject) = identity::current() else {
        return 0;
    };
    let target: *const u8 = ctx.arg(0);
    let sig: i32 = ctx.arg(2);
    let offsets = kernel::offsets();
    let target_cgroup = offsets.as_ref().and_then(|o| {
        kernel::read::<*const u8>(target, o.task_cgroups)
            .and_then(|css| kernel::read::<*const u8>(css, o.css_set_dfl_cgrp))
            .and_then(|cg| kernel::read::<*const u8>(cg, o.cgroup_kn))
            .and_then(|kn| kernel::read::<u64>(kn, o.kernfs_node_id))
    });
    if target_cgroup.is_some_and(|id| within_instance(&subject, id)) {
        return 0;
    }
    let target_pid: u32 = offsets
        .as_ref()
        .and_then(|o| kernel::read(target, o.task_tgid))
        .unwrap_or(0);
    let mut text = Text::new();
    text.format(&SIGNAL_TEXT, &[u64::from(sig as u32)]);
    refuse(&subject, FileOp::Signal, target_pid, &text)
}

#[lsm(hook = "socket_create")]
pub fn ag_socket_create(ctx: LsmContext) -> i32 {
    // Arguments: (int family, int type, int protocol, int kern, int ret).
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        // A socket the kernel makes for itself (e.g. for a filesystem), not the agent's.
        return 0;
    }
    let Some(subject) = identity::current() else {
        return 0;
    };
    let family: i32 = ctx.arg(0);
    let ty: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let grant = socket_grant(family, ty & SOCK_TYPE_MASK, protocol);
    if grant == 0 || subject.flags() & grant != 0 {
        return 0;
    }
    let mut text = Text::new();
    text.format(
        &SOCKET_TEXT,
        &[
            u64::from(family as u32),
            u64::from((ty & SOCK_TYPE_MASK) as u32),
            u64::from(protocol as u32),
        ],
    );
    refuse(&subject, FileOp::Socket, 0, &text)
}

/// The `AGENT_ALLOW_*` grant a socket needs, or 0 for the sockets agentguard judges (TCP and UDP
/// through the sock_addr programs) and those that reach no network (Unix sockets, route
/// netlink, which the C library's resolver uses). The classes are the seccomp filter's groups,
/// so a policy's `allow_syscalls` grant means the same on every backend.
#[inline(always)]
fn socket_grant(family: i32, ty: i32, protocol: i32) -> u32 {
    match family {
        AF_UNIX => 0,
        AF_INET | AF_INET6 => {
            let icmp = if family == AF_INET {
                IPPROTO_ICMP
            } else {
                IPPROTO_ICMPV6
            };
            if ty == SOCK_RAW {
                AGENT_ALLOW_RAW_SOCKETS
            } else if ty == SOCK_DGRAM && protocol == icmp {
                AGENT_ALLOW_PING_SOCKETS
            } else if (ty != SOCK_STREAM && ty != SOCK_DGRAM)
                || !matches!(protocol, 0 | IPPROTO_TCP | IPPROTO_UDP)
            {
                AGENT_ALLOW_OTHER_SOCKETS
            } else {
                0
            }
        }
        AF_NETLINK if protocol == NETLINK_ROUTE => 0,
        AF_PACKET => AGENT_ALLOW_RAW_SOCKETS,
        _ => AGENT_ALLOW_OTHER_SOCKETS,
    }
}

/// Whether `cgroup_id` is the subject's own instance or one of its sub-agent instances below it.
#[inline(always)]
fn within_instance(subject: &Subject, cgroup_id: u64) -> bool {
    let mut id = cgroup_id;
    let mut depth = 0;
    while depth <= MAX_AGENT_DEPTH {
        if id == subject.cgroup_id {
            return true;
        }
        // SAFETY: map values stay valid for the program run.
        match unsafe { CGROUPS.get(id) } {
            Some(e) if e.parent_cgroup_id != 0 => id = e.parent_cgroup_id,
            _ => return false,
        }
        depth += 1;
    }
    false
}

/// The formats of [`Text`], in `.rodata`: `bpf_snprintf` takes its format only from a
/// read-only map.
static CMD_TEXT: [u8; 7] = *b"cmd=%u\0";
static SIGNAL_TEXT: [u8; 7] = *b"sig=%u\0";
static SOCKET_TEXT: [u8; 30] = *b"family=%u type=%u protocol=%u\0";

/// A short description for the event's path field.
struct Text {
    buf: [u8; 48],
}

impl Text {
    #[inline(always)]
    fn new() -> Self {
        Self { buf: [0; 48] }
    }

    /// `format` with `args`, by the kernel's `bpf_snprintf`: a loop that writes the digits of a
    /// number, stopping after the last, leaves the verifier one path per length of each number
    /// (three numbers made the `socket_create` program 53,000 verified instructions).
    #[inline(always)]
    fn format<const N: usize>(&mut self, format: &'static [u8], args: &[u64; N]) {
        // SAFETY: the helper writes at most `buf.len()` bytes, NUL-terminated, and reads `N`
        // arguments; `format` is NUL-terminated static data. On an error the text stays empty.
        unsafe {
            generated::bpf_snprintf(
                self.buf.as_mut_ptr().cast(),
                self.buf.len() as u32,
                format.as_ptr().cast(),
                args.as_ptr().cast_mut(),
                (N * size_of::<u64>()) as u32,
            );
        }
    }
}

/// Refuses `op` for `subject` (audit mode lets it through), logging it with `text`.
#[inline(always)]
fn refuse(subject: &Subject, op: FileOp, target_pid: u32, text: &Text) -> i32 {
    let (j, log) = verdict::finish(subject, None, Judgement::refuse(Verdict::Denied, 0));
    if log && let Some(mut entry) = emit::reserve::<FileEvent>(subject, &j) {
        let ev = entry.as_mut_ptr();
        // SAFETY: reserved ring buffer memory of the right size, written field by field (the
        // event is too large for the BPF stack).
        unsafe {
            (*ev).header = entry.header(EventKind::Privileged, Backend::BpfLsm, subject, &j);
            (*ev).op = op as u16;
            (*ev).access = 0;
            (*ev)._pad = 0;
            (*ev).target_pid = target_pid;
            let mut i = 0;
            while i < text.buf.len() && i < FILE_PATH_LEN {
                (*ev).path[i] = text.buf[i];
                i += 1;
            }
        }
        entry.send();
    }
    if j.permits() { 0 } else { -EPERM }
}
