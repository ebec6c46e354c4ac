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

use core::ffi::c_void;

use agentguard_common::{
    agent::{AGENT_UNIX_RULES, unix_restricted},
    event::{EVENT_PARENT_DENIED, EVENT_SCRATCH_BUSY, EventKind, FILE_PATH_LEN, FileEvent, FileOp},
    maps::MAX_AGENT_DEPTH,
    rules::{NO_RULE, UNIX_PATH_LEN, UnixKey},
    verdict::{Backend, Verdict},
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_probe_read_kernel, generated},
    macros::lsm,
    programs::{LsmContext, SockAddrContext},
};

use crate::{
    emit,
    identity::{self, Subject},
    kernel,
    maps::{UNIX_RULES, UNIX_SCRATCH, UnixScratch},
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
    Read(Claim<UnixScratch>),
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
fn scratch() -> Option<Claim<UnixScratch>> {
    let claim = Claim::take(&UNIX_SCRATCH)?;
    let key = claim.get();
    // SAFETY: per-CPU map memory, valid for the program run and owned by this run.
    unsafe {
        (*key).key.agent_id = 0;
        (*key).key.generation = 0;
        (*key).key.len = 0;
        (*key).key.path = [0; UNIX_PATH_LEN];
    }
    Some(claim)
}

/// Reads the name of a `sun_path` at `src`, of which the address holds `name_len` bytes
/// (at least one), into a scratch key, in the kernel's encoding: an abstract name (first byte
/// NUL) is all of its bytes; a pathname ends at its first NUL. The bytes after it stay zero.
///
/// The helpers find the end of a pathname: a loop over the bytes that branches on each one
/// leaves the verifier one path per possible length (over half a million instructions
/// verified per program, seconds of every daemon start under emulation).
#[inline(always)]
fn read_name(src: *const u8, name_len: u32) -> Address {
    let n = if name_len as usize > UNIX_PATH_LEN {
        UNIX_PATH_LEN as u32
    } else {
        name_len
    };
    let Some(first) = kernel::read::<u8>(src, 0) else {
        return Address::Unreadable;
    };
    let Some(claim) = scratch() else {
        return Address::Busy;
    };
    let scratch = claim.get();
    // SAFETY: `scratch` is this run's; the helpers write at most `n` + 1 bytes from the start
    // of `path`, which the terminator after it leaves room for, and tolerate any source.
    let len = unsafe {
        let dst = (&raw mut (*scratch).key.path).cast::<c_void>();
        if first == 0 {
            if generated::bpf_probe_read_kernel(dst, n, src.cast()) < 0 {
                return Address::Unreadable;
            }
            n
        } else {
            // Copies the name up to its first NUL, at most `n` bytes, and a NUL after it.
            let copied = generated::bpf_probe_read_kernel_str(dst, n + 1, src.cast());
            if copied <= 0 {
                return Address::Unreadable;
            }
            copied as u32 - 1
        }
    };
    // SAFETY: as above.
    unsafe { (*scratch).key.len = len };
    Address::Read(claim)
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
    read_name(
        kern.uaddr.wrapping_add(SUN_PATH_OFFSET),
        kern.uaddrlen - SUN_PATH_OFFSET as u32,
    )
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
    // Only the address's own `len` bytes are read: its allocation may end before `sun_path`.
    read_name(
        addr.wrapping_add(o.unix_address_name as usize)
            .wrapping_add(SUN_PATH_OFFSET),
        len as u32 - SUN_PATH_OFFSET as u32,
    )
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
    // SAFETY: the claim's slot is this run's; only the key's address is taken.
    let key = claim.as_ref().map(|c| unsafe { &raw mut (*c.get()).key });
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
            (*ev).path = [0; FILE_PATH_LEN];
            if let Some(key) = key {
                // The key's bytes after its name are zero: all of them are copied, without a
                // branch per byte for the verifier to follow.
                core::ptr::copy_nonoverlapping(
                    (&raw const (*key).path).cast::<u8>(),
                    (&raw mut (*ev).path).cast::<u8>(),
                    UNIX_PATH_LEN,
                );
                // An abstract name is shown as `@name`, as `ss` and the policy write it.
                if (*key).len > 0 && (*key).path[0] == 0 {
                    (*ev).path[0] = b'@';
                }
            }
        }
        entry.send();
    }
    j.permits()
}
