//! Landlock refusals from the kernel's audit records (Linux >= 6.15, Landlock ABI 7).
//!
//! Landlock reports nothing to agentguard directly; with audit enabled the kernel writes, for
//! each refusal, an `AUDIT_LANDLOCK_ACCESS` record (`domain=... blockers=... path=...`), the
//! first time a domain shows up an `AUDIT_LANDLOCK_DOMAIN` record naming the process that
//! created it, and, for tasks with a syscall audit context, a `SYSCALL` record with the
//! denying pid under the same serial. This module is pure: it parses the text of multicast
//! audit messages and turns a refusal into agentguard's [`Target`] with its operation and
//! access; the daemon (`daemon::landlock_audit`) reads the socket and names the agent.

use agentguard_common::{
    event::{EventKind, FileOp},
    verdict::{ACCESS_READ, ACCESS_WRITE},
};

use crate::audit::record::Target;

/// `AUDIT_SYSCALL`: the syscall a record belongs to, with the caller's pid and uid.
pub const AUDIT_SYSCALL: u16 = 1300;
/// `AUDIT_EOE`: the end of a multi-record event.
pub const AUDIT_EOE: u16 = 1320;
/// `AUDIT_LANDLOCK_ACCESS`: one refused access.
pub const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
/// `AUDIT_LANDLOCK_DOMAIN`: a domain's creator (status=allocated) or its end.
pub const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;

/// One audit record: `audit(SECONDS.MILLIS:SERIAL): key=value ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Record type (`nlmsg_type`).
    pub kind: u16,
    /// Wall-clock time in milliseconds since the epoch, as the kernel stamped it.
    pub time_ms: u64,
    /// Event serial: records of one event (one syscall) share it.
    pub serial: u64,
    /// Fields in order, values unquoted and hex-decoded where the kernel hex-encoded them.
    pub fields: Vec<(String, String)>,
}

/// Why a message is not an audit record this module understands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No `audit(...): ` prefix.
    #[error("no audit(TIME:SERIAL) stamp")]
    NoStamp,
    /// The stamp's numbers do not parse.
    #[error("malformed audit stamp {0:?}")]
    BadStamp(String),
    /// A quoted value has no closing quote.
    #[error("unterminated quoted value for {0:?}")]
    Unterminated(String),
}

/// Fields whose values the kernel writes with `audit_log_untrustedstring`: quoted when plain,
/// hex-encoded (unquoted) when they contain spaces, quotes or control characters.
const UNTRUSTED: &[&str] = &[
    "path",
    "name",
    "exe",
    "comm",
    "dev",
    "ocomm",
    "proctitle",
    "cwd",
];

impl AuditRecord {
    /// Parses the payload of a multicast audit message of type `kind`.
    pub fn parse(kind: u16, payload: &[u8]) -> Result<Self, ParseError> {
        // The kernel may include the terminating NUL in the payload.
        let end = payload
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(payload.len());
        let text = String::from_utf8_lossy(&payload[..end]);
        let rest = text.strip_prefix("audit(").ok_or(ParseError::NoStamp)?;
        let (stamp, rest) = rest.split_once("): ").ok_or(ParseError::NoStamp)?;
        let bad = || ParseError::BadStamp(stamp.to_owned());
        let (time, serial) = stamp.split_once(':').ok_or_else(bad)?;
        let (secs, millis) = time.split_once('.').ok_or_else(bad)?;
        let secs: u64 = secs.parse().map_err(|_| bad())?;
        let millis: u64 = millis.parse().map_err(|_| bad())?;
        let serial: u64 = serial.parse().map_err(|_| bad())?;
        Ok(Self {
            kind,
            time_ms: secs.saturating_mul(1000).saturating_add(millis),
            serial,
            fields: fields(rest)?,
        })
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` as a decimal number.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }

    /// `key` as a pid or uid: `None` when missing or out of range.
    pub fn id(&self, key: &str) -> Option<u32> {
        u32::try_from(self.number(key)?).ok()
    }

    /// The Landlock domain id (`domain=` is hexadecimal).
    pub fn domain(&self) -> Option<u64> {
        u64::from_str_radix(self.get("domain")?, 16).ok()
    }
}

/// Splits `key=value key="quoted value" ...`.
fn fields(mut s: &str) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if s.is_empty() {
            return Ok(out);
        }
        let word_end = s.find(' ').unwrap_or(s.len());
        let Some((key, rest)) = s.split_once('=').filter(|(k, _)| k.len() < word_end) else {
            // A bare word (some records carry them); nothing to key it by.
            s = &s[word_end..];
            continue;
        };
        let key = key.to_owned();
        let (value, rest) = if let Some(quoted) = rest.strip_prefix('"') {
            let (v, rest) = quoted
                .split_once('"')
                .ok_or_else(|| ParseError::Unterminated(key.clone()))?;
            (v.to_owned(), rest)
        } else {
            let (v, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let v = if UNTRUSTED.contains(&key.as_str()) {
                unhex(v).unwrap_or_else(|| v.to_owned())
            } else {
                v.to_owned()
            };
            (v, rest)
        };
        out.push((key, value));
        s = rest;
    }
}

/// Decodes an `audit_log_n_hex` value; `None` when it is not hex (e.g. `(null)`, `?`).
fn unhex(v: &str) -> Option<String> {
    if v.is_empty() || !v.len().is_multiple_of(2) {
        return None;
    }
    let bytes = hex::decode(v).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// What a Landlock `blockers=` list refused, in agentguard's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The event kind it is logged as.
    pub kind: EventKind,
    /// The target, with the path the kernel reported.
    pub target: Target,
}

/// Maps a refusal record to a kind and target. `blockers` is a comma-separated list of
/// Landlock rights (`fs.read_file`, `fs.write_file,fs.truncate`, `fs.execute`, `ptrace`,
/// `scope.signal`, ...); the first one names the operation, all of them the access.
pub fn refused(record: &AuditRecord) -> Option<Refused> {
    let blockers = record.get("blockers")?;
    let path = record.get("path").unwrap_or_default().to_owned();
    let mut access = 0u8;
    let mut first: Option<FileOp> = None;
    let mut exec = false;
    for b in blockers.split(',') {
        let (op, acc) = match b {
            "fs.execute" => {
                exec = true;
                (FileOp::Open, ACCESS_READ)
            }
            "fs.read_file" | "fs.read_dir" => (FileOp::Open, ACCESS_READ),
            "fs.write_file" | "fs.ioctl_dev" => (FileOp::Open, ACCESS_WRITE),
            "fs.truncate" => (FileOp::Truncate, ACCESS_WRITE),
            "fs.remove_file" => (FileOp::Unlink, ACCESS_WRITE),
            "fs.remove_dir" => (FileOp::Rmdir, ACCESS_WRITE),
            "fs.make_dir" => (FileOp::Mkdir, ACCESS_WRITE),
            "fs.make_sym" => (FileOp::Symlink, ACCESS_WRITE),
            "fs.make_reg" | "fs.make_char" | "fs.make_block" | "fs.make_fifo" | "fs.make_sock" => {
                (FileOp::Create, ACCESS_WRITE)
            }
            "fs.refer" => (FileOp::Rename, ACCESS_WRITE),
            "fs.change_topology" => (FileOp::Mount, 0),
            "ptrace" => (FileOp::Ptrace, 0),
            // Signals and abstract sockets outside the sandbox: refusals too, kept as
            // privileged operations without a path.
            _ => (FileOp::Ptrace, 0),
        };
        access |= acc;
        first.get_or_insert(op);
    }
    let op = first?;
    if exec {
        return Some(Refused {
            kind: EventKind::Exec,
            target: Target::Exec {
                path,
                dev: 0,
                ino: record.number("ino").unwrap_or(0),
            },
        });
    }
    let kind = match op {
        FileOp::Open => EventKind::FileOpen,
        FileOp::Mount | FileOp::Ptrace | FileOp::UserNamespace => EventKind::Privileged,
        _ => EventKind::PathOp,
    };
    let target_pid = record.id("opid").filter(|p| *p != 0);
    Some(Refused {
        kind,
        target: Target::File {
            op: op as u16,
            access,
            path,
            target_pid,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: u16, text: &str) -> AuditRecord {
        AuditRecord::parse(kind, text.as_bytes()).expect("parses")
    }

    #[test]
    fn parses_a_refused_open_as_the_kernel_writes_it() {
        let r = rec(
            AUDIT_LANDLOCK_ACCESS,
            "audit(1764072000.123:4567): domain=17f6ecf92 blockers=fs.read_file path=\"/etc/passwd\" dev=\"vda\" ino=737\0",
        );
        assert_eq!((r.time_ms, r.serial), (1_764_072_000_123, 4567));
        assert_eq!(r.domain(), Some(0x17f6ecf92));
        assert_eq!(r.get("path"), Some("/etc/passwd"));
        assert_eq!(r.number("ino"), Some(737));
        let got = refused(&r).expect("a refusal");
        assert_eq!(got.kind, EventKind::FileOpen);
        assert_eq!(
            got.target,
            Target::File {
                op: FileOp::Open as u16,
                access: ACCESS_READ,
                path: "/etc/passwd".into(),
                target_pid: None
            }
        );
    }

    #[test]
    fn hex_encoded_untrusted_strings_are_decoded_and_others_kept() {
        // A path with a space is hex-encoded without quotes; `(null)` is not hex.
        let r = rec(
            AUDIT_LANDLOCK_DOMAIN,
            "audit(1.5:9): domain=a status=allocated mode=enforcing pid=21282 uid=2113929216 exe=2F746D702F6120622E7079 comm=(null)",
        );
        assert_eq!(r.get("exe"), Some("/tmp/a b.py"));
        assert_eq!(r.get("comm"), Some("(null)"));
        assert_eq!(r.get("status"), Some("allocated"));
        assert_eq!(r.number("pid"), Some(21282));
        assert_eq!(r.time_ms, 1005);
        // Numbers that look like hex in trusted fields stay as written.
        let r = rec(
            AUDIT_SYSCALL,
            "audit(1.0:9): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c ppid=1 pid=42 uid=7 comm=\"cat\" exe=\"/usr/bin/cat\"",
        );
        assert_eq!(r.get("arch"), Some("c000003e"));
        assert_eq!(r.number("pid"), Some(42));
        assert_eq!(r.get("comm"), Some("cat"));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(
            AuditRecord::parse(1423, b"domain=1"),
            Err(ParseError::NoStamp)
        );
        assert!(matches!(
            AuditRecord::parse(1423, b"audit(x:1): a=b"),
            Err(ParseError::BadStamp(_))
        ));
        assert_eq!(
            AuditRecord::parse(1423, b"audit(1.2:3): path=\"/etc"),
            Err(ParseError::Unterminated("path".into()))
        );
        // Bare words and empty payloads parse to what is there.
        let r = rec(1423, "audit(1.2:3): lone word=x ");
        assert_eq!(r.fields, vec![("word".to_owned(), "x".to_owned())]);
        assert_eq!(AuditRecord::parse(1423, b""), Err(ParseError::NoStamp));
        assert!(refused(&rec(1423, "audit(1.2:3): domain=1")).is_none());
    }

    #[test]
    fn blockers_map_to_operations_and_access() {
        let exec = rec(
            1423,
            "audit(1.2:3): domain=1 blockers=fs.execute path=\"/usr/bin/curl\" dev=\"vda\" ino=5",
        );
        let got = refused(&exec).expect("refusal");
        assert_eq!(got.kind, EventKind::Exec);
        assert_eq!(
            got.target,
            Target::Exec {
                path: "/usr/bin/curl".into(),
                dev: 0,
                ino: 5
            }
        );
        let write = rec(
            1423,
            "audit(1.2:3): domain=1 blockers=fs.write_file,fs.truncate path=\"/srv/x\"",
        );
        let got = refused(&write).expect("refusal");
        assert_eq!(got.kind, EventKind::FileOpen);
        assert!(matches!(
            got.target,
            Target::File { op, access: ACCESS_WRITE, .. } if op == FileOp::Open as u16
        ));
        let create = rec(
            1423,
            "audit(1.2:3): domain=1 blockers=fs.make_reg path=\"/srv/new\"",
        );
        assert_eq!(refused(&create).expect("refusal").kind, EventKind::PathOp);
        let trace = rec(
            1423,
            "audit(1.2:3): domain=1 blockers=ptrace opid=77 ocomm=\"sshd\"",
        );
        let got = refused(&trace).expect("refusal");
        assert_eq!(got.kind, EventKind::Privileged);
        assert!(matches!(
            got.target,
            Target::File {
                target_pid: Some(77),
                ..
            }
        ));
    }
}
