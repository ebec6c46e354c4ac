//! Stable names for the numbers records carry (verdicts, backends, action kinds, ...), as
//! `show` prints them and docs/log-format.md lists them. Unknown numbers print as `unknown(N)`
//! so a log from a newer agentguard stays readable.

use std::borrow::Cow;

use agentguard_common::{
    event::{
        EVENT_ESCALATE_FREEZE, EVENT_ESCALATE_KILL, EVENT_PARENT_DENIED, EVENT_PATH_TOO_LONG,
        EVENT_PROC_SELF, EVENT_PROTECTED_FS, EVENT_SCRATCH_BUSY, EVENT_TRUNCATED,
        EVENT_UNKNOWN_CGROUP, EventKind, FileOp, PROTO_TCP, PROTO_UDP,
    },
    verdict::{ACCESS_READ, ACCESS_WRITE, Backend, Verdict},
};

use super::record::Body;

fn unknown(n: impl std::fmt::Display) -> Cow<'static, str> {
    Cow::Owned(format!("unknown({n})"))
}

/// `EVENT_*` flag bits with their names.
pub const FLAGS: [(u32, &str); 9] = [
    (EVENT_TRUNCATED, "truncated"),
    (EVENT_ESCALATE_FREEZE, "escalate-freeze"),
    (EVENT_ESCALATE_KILL, "escalate-kill"),
    (EVENT_UNKNOWN_CGROUP, "unknown-cgroup"),
    (EVENT_PARENT_DENIED, "parent-denied"),
    (EVENT_PATH_TOO_LONG, "path-too-long"),
    (EVENT_PROC_SELF, "proc-self"),
    (EVENT_PROTECTED_FS, "protected-fs"),
    (EVENT_SCRATCH_BUSY, "scratch-busy"),
];

/// Record kinds (`Body::kind_id`) with their names, in number order.
pub const RECORD_KINDS: [&str; 19] = [
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
    "tool-call",
    "pruned",
    "credential",
    "handover",
    "mcp-call",
    "vault-lease",
];

/// The name of a record kind.
pub fn record_kind(body: &Body) -> &'static str {
    RECORD_KINDS
        .get(usize::from(body.kind_id()))
        .copied()
        .unwrap_or("unknown")
}

/// The name of a tool-gateway verdict number.
pub fn tool_verdict(n: u8) -> Cow<'static, str> {
    agentguard_common::verdict::ToolVerdict::from_u8(n)
        .map_or_else(|| unknown(n), |v| Cow::Borrowed(v.name()))
}

/// The name of a verdict number.
pub fn verdict(n: u8) -> Cow<'static, str> {
    Verdict::from_u8(n).map_or_else(|| unknown(n), |v| Cow::Borrowed(v.name()))
}

/// The name of a backend number.
pub fn backend(n: u8) -> Cow<'static, str> {
    Backend::from_u8(n).map_or_else(|| unknown(n), |b| Cow::Borrowed(b.name()))
}

/// The name of an action kind number.
pub fn event_kind(n: u16) -> Cow<'static, str> {
    EventKind::from_u16(n).map_or_else(|| unknown(n), |k| Cow::Borrowed(k.name()))
}

/// The name of a file operation number.
pub fn file_op(n: u16) -> Cow<'static, str> {
    FileOp::from_u16(n).map_or_else(|| unknown(n), |o| Cow::Borrowed(o.name()))
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

    /// The `(number, name)` rows of the docs/log-format.md table headed by a line that names
    /// `type_path`; a row may hold several pairs side by side.
    fn doc_table(type_path: &str) -> Vec<(u16, String)> {
        let doc = include_str!("../../../docs/log-format.md");
        let mut lines = doc
            .lines()
            .skip_while(|l| !(l.starts_with('#') && l.contains(type_path)));
        assert!(lines.next().is_some(), "no table for {type_path}");
        lines
            .take_while(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with('|'))
            .flat_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                cells
                    .windows(2)
                    .filter_map(|w| {
                        let n = w[0].parse().ok()?;
                        let name = w[1].strip_prefix('`')?.split('`').next()?;
                        Some((n, name.to_owned()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn table<T: Copy>(
        all: &[T],
        num: impl Fn(T) -> u16,
        name: impl Fn(T) -> &'static str,
    ) -> Vec<(u16, String)> {
        all.iter().map(|&v| (num(v), name(v).to_owned())).collect()
    }

    #[test]
    fn the_documented_numbers_and_names_are_the_code_s() {
        assert_eq!(
            doc_table("event::EventKind"),
            table(&EventKind::ALL, |v| v as u16, EventKind::name)
        );
        assert_eq!(
            doc_table("verdict::Verdict"),
            table(&Verdict::ALL, |v| u16::from(v as u8), Verdict::name)
        );
        assert_eq!(
            doc_table("verdict::Backend"),
            table(&Backend::ALL, |v| u16::from(v as u8), Backend::name)
        );
        let mut ops = doc_table("event::FileOp");
        ops.sort();
        assert_eq!(ops, table(&FileOp::ALL, |v| v as u16, FileOp::name));
    }

    #[test]
    fn names_cover_every_number() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_u8(v as u8), Some(v));
            assert_eq!(Verdict::from_name(v.name()), Some(v));
        }
        for b in Backend::ALL {
            assert_eq!(Backend::from_u8(b as u8), Some(b));
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_u16(k as u16), Some(k));
        }
        for o in FileOp::ALL {
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
