//! Network allowlist: cgroup sock_addr programs on the agentguard subtree.
//!
//! connect4/connect6 judge TCP connects and UDP connects; sendmsg4/sendmsg6 judge every datagram
//! sent with an explicit destination, so an unconnected UDP socket cannot bypass the allowlist.
//! Returning 0 makes the syscall fail with EPERM.

use agentguard_common::{
    agent::ThrottleKind,
    event::{EVENT_PARENT_DENIED, EventKind, NetEvent},
    maps::MAX_AGENT_DEPTH,
    rules::{NET_KEY_FIXED_BITS, NetKey},
    verdict::{Backend, Verdict},
};
use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, maps::lpm_trie::Key,
    programs::SockAddrContext,
};

use crate::{
    emit,
    identity::{self, Subject},
    maps::{NET_RULES, SENT, SentKey},
    throttle,
    verdict::{self, Judgement},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[cgroup_sock_addr(connect4)]
pub fn ag_connect4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, EventKind::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ag_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, EventKind::Send)
}

#[cgroup_sock_addr(connect6)]
pub fn ag_connect6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, EventKind::Connect)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn ag_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, EventKind::Send)
}

/// A destination: IPv6 or IPv4-mapped address and port, both in network byte order.
struct Destination {
    addr: [u8; 16],
    port_be: [u8; 2],
    family: u16,
    protocol: u8,
}

#[inline(always)]
fn port_be(ctx: &SockAddrContext) -> [u8; 2] {
    // SAFETY: the context pointer is valid for the program run. `user_port` holds the port in
    // network byte order in its first two bytes.
    let raw = unsafe { (*ctx.sock_addr).user_port };
    (raw as u16).to_ne_bytes()
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: the context pointer is valid for the program run.
    unsafe { (*ctx.sock_addr).protocol as u8 }
}

#[inline(always)]
fn judge_v4(ctx: &SockAddrContext, kind: EventKind) -> i32 {
    // SAFETY: the context pointer is valid for the program run.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12] = ip[0];
    addr[13] = ip[1];
    addr[14] = ip[2];
    addr[15] = ip[3];
    judge(
        ctx,
        &Destination {
            addr,
            port_be: port_be(ctx),
            family: AF_INET,
            protocol: protocol(ctx),
        },
        kind,
    )
}

#[inline(always)]
fn judge_v6(ctx: &SockAddrContext, kind: EventKind) -> i32 {
    // SAFETY: the context pointer is valid for the program run. The verifier only allows
    // 4-byte loads of `user_ip6`, hence word by word.
    let words = unsafe {
        [
            (*ctx.sock_addr).user_ip6[0],
            (*ctx.sock_addr).user_ip6[1],
            (*ctx.sock_addr).user_ip6[2],
            (*ctx.sock_addr).user_ip6[3],
        ]
    };
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    // An IPv4-mapped destination (`::ffff:a.b.c.d`) needs no special case: IPv4 rules are stored
    // IPv4-mapped, so it is judged exactly as the IPv4 address.
    judge(
        ctx,
        &Destination {
            addr,
            port_be: port_be(ctx),
            family: AF_INET6,
            protocol: protocol(ctx),
        },
        kind,
    )
}

#[inline(always)]
fn lookup(generation: u32, agent_id: u32, dst: &Destination) -> Option<u32> {
    let key = Key::new(
        NET_KEY_FIXED_BITS + 128,
        NetKey {
            agent_id,
            generation: generation as u8,
            _pad: 0,
            port_be: dst.port_be,
            addr: dst.addr,
        },
    );
    NET_RULES.get(&key).map(|r| r.rule_id)
}

/// The rule decision: the agent's own rules, then every ancestor's (a sub-agent gets the
/// intersection with its parents whatever its own rules say).
#[inline(always)]
fn decide(subject: &Subject, dst: &Destination) -> Judgement {
    if subject.config.is_none() {
        return Judgement::refuse(Verdict::Denied, 0);
    }
    let Some(rule_id) = lookup(subject.generation, subject.agent_id(), dst) else {
        return Judgement::refuse(Verdict::Denied, 0);
    };
    let mut parent = subject.parent_agent_id();
    let mut depth = 0;
    while parent != 0 && depth < MAX_AGENT_DEPTH {
        if lookup(subject.generation, parent, dst).is_none() {
            return Judgement::refuse(Verdict::Denied, EVENT_PARENT_DENIED);
        }
        parent =
            identity::agent_config(subject.generation, parent).map_or(0, |c| c.parent_agent_id);
        depth += 1;
    }
    Judgement::allow(rule_id)
}

#[inline(always)]
fn judge(ctx: &SockAddrContext, dst: &Destination, kind: EventKind) -> i32 {
    // A task outside the subtree using a socket created inside it: the task itself is not an
    // agent, and could open its own socket anyway.
    let Some(subject) = identity::current() else {
        return ALLOW;
    };
    // The connect budget counts connects, and datagrams only to destinations new for their
    // socket: a DNS client sending many queries to one resolver spends one token, not hundreds.
    // Without a connect budget nothing is charged, so no datagram pays for the socket's
    // destinations (its cookie and an LRU lookup).
    let budgeted = subject
        .config
        .is_some_and(|c| throttle::budgeted(c, ThrottleKind::Connect));
    let sent = match kind {
        EventKind::Send if budgeted => Some(SentKey {
            // SAFETY: the context pointer is valid for the program run.
            cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
            addr: dst.addr,
            port_be: dst.port_be,
            _pad: [0; 6],
        }),
        _ => None,
    };
    // SAFETY: map values stay valid for the program run.
    let seen = sent
        .as_ref()
        .is_some_and(|k| unsafe { SENT.get(k) }.is_some());
    let budget = if seen {
        None
    } else {
        Some(ThrottleKind::Connect)
    };
    let (j, log) = verdict::finish(&subject, budget, decide(&subject, dst));
    if let Some(k) = &sent
        && !seen
        && j.verdict == Verdict::Allowed
    {
        // A full LRU map evicts the oldest destination: at worst a token is spent again.
        let _ = SENT.insert(k, 0u8, 0);
    }
    if log && let Some(mut entry) = emit::reserve::<NetEvent>(&subject, &j) {
        let header = entry.header(kind, Backend::CgroupSockAddr, &subject, &j);
        entry.write(NetEvent {
            header,
            addr: dst.addr,
            port: u16::from_be_bytes(dst.port_be),
            family: dst.family,
            protocol: dst.protocol,
            _pad: [0; 3],
        });
        entry.send();
    }
    if j.permits() { ALLOW } else { DENY }
}
