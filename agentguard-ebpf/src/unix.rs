//! AF_UNIX allowlist: which Unix sockets an agent may connect or send datagrams to.
//!
//! Two ways to see an AF_UNIX connect or send, one per backend (the daemon attaches one):
//!
//! - **cgroup sock_addr** (`cgroup/connect_unix`, `cgroup/sendmsg_unix`, Linux >= 6.7): the
//!   fallback. The program judges the address the agent *asked for*, before the kernel looks
//!   it up. Its context exposes no `sun_path` (`bpf_sock_addr` has only the IP fields, and the
//!   kfunc `bpf_sock_addr_set_sun_path` only writes), so the address is read the way the
//!   kernel selftests reach it through `bpf_cast_to_kern_ctx`: the context is really a
//!   `struct bpf_sock_addr_kern`, whose `uaddr` points to the kernel's copy of the
//!   `sockaddr_un` (a `sockaddr_storage`, so reading all of `sun_path` stays inside it) and
//!   whose `uaddrlen` is its length. Rust eBPF cannot call kfuncs, so both are read with
//!   `bpf_probe_read_kernel` at offsets the daemon checked against the kernel's BTF.
//! - **BPF LSM** (`unix_stream_connect`, `unix_may_send`): where BPF LSM is the backend, and
//!   the only way on Linux 6.1, which has no AF_UNIX cgroup hooks. The program judges the
//!   address the *listening socket is bound to* (`unix_sk(other)->addr`), after the lookup:
//!   a symlink or a relative path cannot make one socket pass for another. A peer without an
//!   address (a `socketpair`) reaches nothing outside the agent and is not judged.
//!
//! Both compare the address exactly with the agent's `unix:` entries ([`UNIX_RULES`]); the
//! compiler adds agentguard's own agent socket to every judged agent's entries. A sub-agent's
//! address must also be allowed by every ancestor that judges AF_UNIX.

use agentguard_common::{
    agent::{AGENT_UNIX_RULES, unix_restricted},
    event::{EVENT_PARENT_DENIED, EVENT_SCRATCH_BUSY, EventKind, FILE_PATH_LEN, FileEvent, FileOp},
    maps::MAX_AGENT_DEPTH,
    rules::{NO_RULE, UNIX_PATH_LEN, UnixKey},
    verdict::{Backend, Verdict},
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::lsm,
    programs::{LsmContext, SockAddrContext},
};

use crate::{
    emit,
    identity::{self, Subject},
    kernel,
    maps::{UNIX_RULES, UNIX_SCRATCH},
    scratch::Claim,
    verdict::{self, Judgement},
};

const EPERM: i32 = 1;
const AF_UNIX: u32 = 1;
/// `offsetof(struct sockaddr_un, sun_path)`.
const SUN_PATH_OFFSET: usize = 2;
/// `offsetof(struct bpf_sock_addr_kern, uaddr)` and `uaddrlen` since Linux 6.7 (the first
/// kernel with AF_UNIX cgroup hooks). The daemon reads both from BTF; the programs refuse to
/// judge (and so refuse) if the running kernel disagrees.
const KERN_UADDR: u32 = 8;
const KERN_UADDRLEN: u32 = 32;

/// The start of `struct bpf_sock_addr_kern` (Linux >= 6.7).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockAddrKern {
    sk: u64,
    uaddr: *const u8,
    tmp_reg: u64,
    t_ctx: u64,
    uaddrlen: u32,
}

// aya-ebpf's `#[cgroup_sock_addr]` only accepts the IPv4/IPv6 attach points, so the section
// (libbpf's name, which the vendored aya-obj parses: see third_party/README.md) is written here.
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect_unix")]
pub fn ag_connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
    sock_addr(&SockAddrContext::new(ctx), EventKind::UnixConnect)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/sendmsg_unix")]
pub fn ag_sendmsg_unix(ctx: *mut bpf_sock_addr) -> i32 {
    sock_addr(&SockAddrContext::new(ctx), EventKind::UnixSend)
}

#[lsm(hook = "unix_stream_connect")]
pub fn ag_unix_stream_connect(ctx: LsmContext) -> i32 {
    // Arguments: (struct sock *sock, struct sock *other, struct sock *newsk, int ret).
    let other: *const u8 = ctx.arg(1);
    lsm_judge(other, EventKind::UnixConnect)
}

#[lsm(hook = "unix_may_send")]
pub fn ag_unix_may_send(ctx: LsmContext) -> i32 {
    // Arguments: (struct socket *sock, struct socket *other, int ret). Runs for a datagram
    // connect and for every datagram sent (connected or to an address).
    let other: *const u8 = ctx.arg(1);
    let sk = kernel::offsets().and_then(|o| kernel::read::<*const u8>(other, o.socket_sk));
    match sk {
        Some(sk) => lsm_judge(sk, EventKind::UnixSend),
        None => lsm_judge(core::ptr::null(), EventKind::UnixSend),
    }
}

/// What the address of a judged action turned out to be.
enum Address {
    /// Read into the key of a scratch slot this run owns.
    Read(Claim<UnixKey>),
    /// The peer has no address (socketpair): nothing to judge.
    Unnamed,
    /// Could not be read: judged as an address no rule allows.
    Unreadable,
    /// No scratch slot was free on this CPU to read it into: refused (see [`crate::scratch`]).
    Busy,
}

#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, kind: EventKind) -> i32 {
    let Some(subject) = identity::current() else {
        return 1;
    };
    if !judged(&subject) {
        return 1;
    }
    // SAFETY: the context pointer is valid for the program run.
    let family = unsafe { (*ctx.sock_addr).user_family };
    let address = if family == AF_UNIX {
        read_sock_addr(ctx)
    } else {
        Address::Unreadable
    };
    if judge(&subject, address, kind, Backend::CgroupSockAddr) {
        1
    } else {
        0
    }
}

#[inline(always)]
fn lsm_judge(other_sk: *const u8, kind: EventKind) -> i32 {
    let Some(subject) = identity::current() else {
        return 0;
    };
    if !judged(&subject) {
        return 0;
    }
    let address = read_bound(other_sk);
    if judge(&subject, address, kind, Backend::BpfLsm) {
        0
    } else {
        -EPERM
    }
}

/// Whether the subject's AF_UNIX actions are judged: it or an ancestor has a `connect` list,
/// or it is in the subtree without a configuration (fail closed).
#[inline(always)]
fn judged(subject: &Subject) -> bool {
    subject.config.is_none() || unix_restricted(subject.flags())
}

/// A scratch slot for the key, claimed by this run and zeroed; `None` when every slot of this
/// CPU is taken.
#[inline(always)]
fn scratch() -> Option<Claim<UnixKey>> {
    let claim = Claim::take(&UNIX_SCRATCH)?;
    let key = claim.get();
    // SAFETY: per-CPU map memory, valid for the program run and owned by this run.
    unsafe {
        (*key).agent_id = 0;
        (*key).generation = 0;
        (*key).len = 0;
    }
    Some(claim)
}

/// Turns the `name_len` bytes of `sun_path` in the key into the kernel's encoding: a pathname
/// ends at its first NUL; an abstract name (first byte NUL) is all of them. Zeroes the rest.
#[inline(always)]
fn normalise(key: *mut UnixKey, name_len: u32) {
    // SAFETY: `key` is the per-CPU scratch key, valid for the program run.
    let path = unsafe { &mut (*key).path };
    let mut len = if name_len as usize > UNIX_PATH_LEN {
        UNIX_PATH_LEN as u32
    } else {
        name_len
    };
    let abstract_name = path[0] == 0;
    let mut i = 0;
    while i < UNIX_PATH_LEN {
        if i as u32 >= len {
            path[i] = 0;
        } else if !abstract_name && path[i] == 0 {
            len = i as u32;
        }
        i += 1;
    }
    // SAFETY: as above.
    unsafe { (*key).len = len };
}

#[inline(always)]
fn read_sock_addr(ctx: &SockAddrContext) -> Address {
    let Some(o) = kernel::offsets() else {
        return Address::Unreadable;
    };
    if o.sock_addr_kern_uaddr != KERN_UADDR || o.sock_addr_kern_uaddrlen != KERN_UADDRLEN {
        return Address::Unreadable;
    }
    // SAFETY: `bpf_probe_read_kernel` tolerates any address; the context is the kernel's
    // `struct bpf_sock_addr_kern` (see the module comment).
    let Ok(kern) = (unsafe { bpf_probe_read_kernel(ctx.sock_addr.cast::<SockAddrKern>()) }) else {
        return Address::Unreadable;
    };
    // The kernel checked the length (`unix_validate_addr`) before running the program.
    if kern.uaddrlen as usize <= SUN_PATH_OFFSET {
        return Address::Unreadable;
    }
    let Some(claim) = scratch() else {
        return Address::Busy;
    };
    let key = claim.get();
    // SAFETY: `key` is valid; the read tolerates any source address.
    let read = unsafe {
        bpf_probe_read_kernel_buf(kern.uaddr.wrapping_add(SUN_PATH_OFFSET), &mut (*key).path)
    };
    if read.is_err() {
        return Address::Unreadable;
    }
    normalise(key, kern.uaddrlen - SUN_PATH_OFFSET as u32);
    Address::Read(claim)
}

/// The address `sk` (a `struct unix_sock`) is bound to.
#[inline(always)]
fn read_bound(sk: *const u8) -> Address {
    let Some(o) = kernel::offsets() else {
        return Address::Unreadable;
    };
    if sk.is_null() {
        return Address::Unreadable;
    }
    let Some(addr) = kernel::read::<*const u8>(sk, o.unix_sock_addr) else {
        return Address::Unreadable;
    };
    if addr.is_null() {
        return Address::Unnamed;
    }
    let Some(len) = kernel::read::<i32>(addr, o.unix_address_len) else {
        return Address::Unreadable;
    };
    if len as usize <= SUN_PATH_OFFSET {
        return Address::Unnamed;
    }
    let Some(claim) = scratch() else {
        return Address::Busy;
    };
    let key = claim.get();
    let src = addr
        .wrapping_add(o.unix_address_name as usize)
        .wrapping_add(SUN_PATH_OFFSET);
    // SAFETY: `key` is valid; the read tolerates any source address. The allocation may be
    // shorter than `sun_path`: bytes past `len` are zeroed by `normalise`.
    if unsafe { bpf_probe_read_kernel_buf(src, &mut (*key).path) }.is_err() {
        return Address::Unreadable;
    }
    normalise(key, len as u32 - SUN_PATH_OFFSET as u32);
    Address::Read(claim)
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key is scratch-map memory; passing it by value would copy it onto the BPF stack"
)]
fn lookup(key: *mut UnixKey, generation: u32, agent_id: u32) -> Option<u32> {
    // SAFETY: `key` is the scratch key; map values stay valid for the program run.
    unsafe {
        (*key).generation = generation;
        (*key).agent_id = agent_id;
        UNIX_RULES.get(&*key).map(|r| r.rule_id)
    }
}

/// The rule decision for a judged subject: its own entries when it has a list, then every
/// ancestor's that judges AF_UNIX.
#[inline(always)]
fn decide(subject: &Subject, key: *mut UnixKey) -> Judgement {
    let Some(config) = subject.config else {
        return Judgement::refuse(Verdict::Denied, 0);
    };
    let mut rule_id = NO_RULE;
    if config.flags & AGENT_UNIX_RULES != 0 {
        match lookup(key, subject.generation, subject.agent_id()) {
            Some(id) => rule_id = id,
            None => return Judgement::refuse(Verdict::Denied, 0),
        }
    }
    let mut parent = config.parent_agent_id;
    let mut depth = 0;
    while parent != 0 && depth < MAX_AGENT_DEPTH {
        let parent_config = identity::agent_config(subject.generation, parent);
        if parent_config.is_none_or(|c| c.flags & AGENT_UNIX_RULES != 0) {
            match lookup(key, subject.generation, parent) {
                Some(id) if rule_id == NO_RULE => rule_id = id,
                Some(_) => {}
                None => return Judgement::refuse(Verdict::Denied, EVENT_PARENT_DENIED),
            }
        }
        parent = parent_config.map_or(0, |c| c.parent_agent_id);
        depth += 1;
    }
    Judgement::allow(rule_id)
}

/// Judges `address` for `subject`, logs it, and says whether it goes ahead.
#[inline(always)]
fn judge(subject: &Subject, address: Address, kind: EventKind, backend: Backend) -> bool {
    let (claim, busy) = match address {
        Address::Unnamed => return true,
        Address::Read(claim) => (Some(claim), 0),
        Address::Unreadable => (None, 0),
        Address::Busy => (None, EVENT_SCRATCH_BUSY),
    };
    // The claim lives to the end of this function: the key is copied into the event below.
    let key = claim.as_ref().map(Claim::get);
    let decision = match key {
        Some(key) => decide(subject, key),
        None => Judgement::refuse(Verdict::Denied, busy),
    };
    let (j, log) = verdict::finish(subject, None, decision);
    if log && let Some(mut entry) = emit::reserve::<FileEvent>(subject, &j) {
        let ev = entry.as_mut_ptr();
        let op = if kind == EventKind::UnixSend {
            FileOp::UnixSend
        } else {
            FileOp::UnixConnect
        };
        // SAFETY: reserved ring buffer memory of the right size, written field by field (the
        // event is too large for the BPF stack); `key` is this run's scratch key.
        unsafe {
            (*ev).header = entry.header(kind, backend, subject, &j);
            (*ev).op = op as u16;
            (*ev).access = 0;
            (*ev)._pad = 0;
            (*ev).target_pid = 0;
            let mut i = 0;
            while i < FILE_PATH_LEN {
                (*ev).path[i] = 0;
                i += 1;
            }
            if let Some(key) = key {
                let len = (*key).len as usize;
                let mut i = 0;
                while i < UNIX_PATH_LEN && i < len {
                    (*ev).path[i] = (*key).path[i];
                    i += 1;
                }
                // An abstract name is shown as `@name`, as `ss` and the policy write it.
                if len > 0 && (*key).path[0] == 0 {
                    (*ev).path[0] = b'@';
                }
            }
        }
        entry.send();
    }
    j.permits()
}
