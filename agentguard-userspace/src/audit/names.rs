//! Stable names for the numbers records carry (verdicts, backends, action kinds, ...), as
//! `show` prints them and docs/log-format.md lists them. Unknown numbers print as `unknown(N)`
//! so a log from a newer agentguard stays readable.

use std::borrow::Cow;

use agentguard_common::{
    event::{
        EVENT_ESCALATE_FREEZE, EVENT_ESCALATE_KILL, EVENT_PARENT_DENIED, EVENT_PATH_TOO_LONG,
        EVENT_PROC_SELF, EVENT_PROTECTED_FS, EVENT_TRUNCATED, EVENT_UNKNOWN_CGROUP, EventKind,
        FileOp, PROTO_TCP, PROTO_UDP,
    },
    verdict::{ACCESS_READ, ACCESS_WRITE, Backend, Verdict},
};

use super::record::Body;

fn unknown(n: impl std::fmt::Display) -> Cow<'static, str> {
    Cow::Owned(format!("unknown({n})"))
}

/// Every verdict with its name, in number order.
pub const VERDICTS: [(Verdict, &str); 5] = [
    (Verdict::Allowed, "allowed"),
    (Verdict::Denied, "denied"),
    (Verdict::AuditDenied, "audit-denied"),
    (Verdict::Killed, "killed"),
    (Verdict::Throttled, "throttled"),
];

/// Every backend with its name, in number order.
pub const BACKENDS: [(Backend, &str); 6] = [
    (Backend::CgroupSockAddr, "cgroup-sock-addr"),
    (Backend::TpBtfExec, "tp-btf"),
    (Backend::BpfLsm, "bpf-lsm"),
    (Backend::Landlock, "landlock"),
    (Backend::Tracepoint, "tracepoint"),
    (Backend::Daemon, "daemon"),
];

/// Every action kind with its name, in number order.
pub const EVENT_KINDS: [(EventKind, &str); 7] = [
    (EventKind::Connect, "connect"),
    (EventKind::Send, "send"),
    (EventKind::Exec, "exec"),
    (EventKind::FileOpen, "file-open"),
    (EventKind::PathOp, "path-op"),
    (EventKind::Privileged, "privileged"),
    (EventKind::Lost, "lost"),
];

/// Every file operation with its name, in number order.
pub const FILE_OPS: [(FileOp, &str); 17] = [
    (FileOp::Open, "open"),
    (FileOp::Create, "create"),
    (FileOp::Mkdir, "mkdir"),
    (FileOp::Unlink, "unlink"),
    (FileOp::Rmdir, "rmdir"),
    (FileOp::Rename, "rename"),
    (FileOp::Link, "link"),
    (FileOp::Symlink, "symlink"),
    (FileOp::Truncate, "truncate"),
    (FileOp::Chmod, "chmod"),
    (FileOp::Chown, "chown"),
    (FileOp::Mount, "mount"),
    (FileOp::UserNamespace, "user-namespace"),
    (FileOp::Ptrace, "ptrace"),
    (FileOp::Bpf, "bpf"),
    (FileOp::Signal, "signal"),
    (FileOp::Socket, "socket"),
];

/// `EVENT_*` flag bits with their names.
pub const FLAGS: [(u32, &str); 8] = [
    (EVENT_TRUNCATED, "truncated"),
    (EVENT_ESCALATE_FREEZE, "escalate-freeze"),
    (EVENT_ESCALATE_KILL, "escalate-kill"),
    (EVENT_UNKNOWN_CGROUP, "unknown-cgroup"),
    (EVENT_PARENT_DENIED, "parent-denied"),
    (EVENT_PATH_TOO_LONG, "path-too-long"),
    (EVENT_PROC_SELF, "proc-self"),
    (EVENT_PROTECTED_FS, "protected-fs"),
];

/// Record kinds (`Body::kind_id`) with their names, in number order.
pub const RECORD_KINDS: [&str; 13] = [
    "action",
    "daemon-start",
    "daemon-stop",
    "policy-applied",
    "instance-start",
    "instance-exit",
    "freeze",
    "thaw",
    "kill",
    "lost",
    "recovered",
    "seal",
    "lost-events",
];

/// The name of a record kind.
pub fn record_kind(body: &Body) -> &'static str {
    RECORD_KINDS
        .get(usize::from(body.kind_id()))
        .copied()
        .unwrap_or("unknown")
}

/// The name of a verdict number.
pub fn verdict(n: u8) -> Cow<'static, str> {
    VERDICTS
        .iter()
        .find(|(v, _)| *v as u8 == n)
        .map_or_else(|| unknown(n), |(_, name)| Cow::Borrowed(*name))
}

/// The verdict a name stands for.
pub fn parse_verdict(name: &str) -> Option<Verdict> {
    VERDICTS.iter().find(|(_, n)| *n == name).map(|(v, _)| *v)
}

/// The name of a backend number.
pub fn backend(n: u8) -> Cow<'static, str> {
    BACKENDS
        .iter()
        .find(|(b, _)| *b as u8 == n)
        .map_or_else(|| unknown(n), |(_, name)| Cow::Borrowed(*name))
}

/// The name of an action kind number.
pub fn event_kind(n: u16) -> Cow<'static, str> {
    EVENT_KINDS
        .iter()
        .find(|(k, _)| *k as u16 == n)
        .map_or_else(|| unknown(n), |(_, name)| Cow::Borrowed(*name))
}

/// The name of a file operation number.
pub fn file_op(n: u16) -> Cow<'static, str> {
    FILE_OPS
        .iter()
        .find(|(o, _)| *o as u16 == n)
        .map_or_else(|| unknown(n), |(_, name)| Cow::Borrowed(*name))
}

/// The names of the flags set in `bits` (unknown bits as `unknown(0x..)`).
pub fn flags(bits: u32) -> Vec<Cow<'static, str>> {
    let mut out: Vec<Cow<'static, str>> = FLAGS
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| Cow::Borrowed(*name))
        .collect();
    let known = FLAGS.iter().fold(0, |acc, (bit, _)| acc | bit);
    if bits & !known != 0 {
        out.push(unknown(format_args!("{:#x}", bits & !known)));
    }
    out
}

/// The names of `ACCESS_*` bits.
pub fn access(bits: u8) -> Vec<&'static str> {
    [(ACCESS_READ, "read"), (ACCESS_WRITE, "write")]
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The name of an IP protocol number.
pub fn protocol(n: u8) -> Cow<'static, str> {
    match n {
        PROTO_TCP => Cow::Borrowed("tcp"),
        PROTO_UDP => Cow::Borrowed("udp"),
        _ => Cow::Owned(n.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_number() {
        for (v, name) in VERDICTS {
            assert_eq!(Verdict::from_u8(v as u8), Some(v));
            assert_eq!(parse_verdict(name), Some(v));
        }
        for (b, _) in BACKENDS {
            assert_eq!(Backend::from_u8(b as u8), Some(b));
        }
        for (k, _) in EVENT_KINDS {
            assert_eq!(EventKind::from_u16(k as u16), Some(k));
        }
        for (o, _) in FILE_OPS {
            assert_eq!(FileOp::from_u16(o as u16), Some(o));
        }
        assert_eq!(verdict(99), "unknown(99)");
        assert_eq!(
            flags(EVENT_TRUNCATED | 1 << 31),
            ["truncated", "unknown(0x80000000)"]
        );
        assert_eq!(access(3), ["read", "write"]);
    }
}
