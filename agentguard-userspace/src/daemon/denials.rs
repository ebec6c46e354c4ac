//! Recent refusals per instance, for `agentguard denials` inside an agent: an agent that only
//! sees EPERM/EACCES loops or guesses; this tells it what was refused, why, and which policy
//! entry would allow it. Bounded rings in memory, so a query never reads the log from disk.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

use agentguard_common::{
    event::{
        EVENT_PARENT_DENIED, EVENT_PATH_TOO_LONG, EVENT_PROC_SELF, EVENT_PROTECTED_FS,
        EVENT_SCRATCH_BUSY, EVENT_UNKNOWN_CGROUP, EventKind, FileOp,
    },
    verdict::{Backend, Verdict},
};

use crate::{
    audit::{
        names,
        record::{Action, Target},
    },
    control::proto::Denial,
    policy::suggest,
};

/// Refusals kept per instance: the newest win.
pub const PER_INSTANCE: usize = 256;
/// Bytes of text (targets, suggested entries) kept per instance: an agent refused long paths
/// keeps fewer of them, so the rings stay within `INSTANCES * PER_INSTANCE_BYTES` (32 MiB).
pub const PER_INSTANCE_BYTES: usize = 64 * 1024;
/// Instances with a ring; the oldest ring goes first (cgroup ids grow, so: the oldest instance).
pub const INSTANCES: usize = 512;

/// One instance's ring.
#[derive(Debug, Default)]
struct Ring {
    items: VecDeque<Denial>,
    bytes: usize,
}

/// The text a denial holds, for the byte bound.
fn weight(d: &Denial) -> usize {
    d.target.len()
        + d.allow_with.as_ref().map_or(0, String::len)
        + d.instance.len()
        + d.action.len()
        + d.reason.len()
}

/// The rings.
#[derive(Debug, Default)]
pub struct Denials {
    rings: BTreeMap<u64, Ring>,
}

impl Denials {
    /// Keeps `action` if it is a refusal (or an audit-mode would-be refusal) of a known instance.
    pub fn record(&mut self, wall_ns: u64, action: &Action) {
        if !wanted(&action.instance, action.verdict) {
            return;
        }
        let ring = self.rings.entry(action.cgroup_id).or_default();
        let d = describe(wall_ns, action);
        let w = weight(&d);
        while !ring.items.is_empty()
            && (ring.items.len() >= PER_INSTANCE || ring.bytes + w > PER_INSTANCE_BYTES)
        {
            if let Some(old) = ring.items.pop_front() {
                ring.bytes -= weight(&old);
            }
        }
        ring.bytes += w;
        ring.items.push_back(d);
        while self.rings.len() > INSTANCES {
            self.rings.pop_first();
        }
    }

    /// Every instance's refusals at or after `since_ns`, oldest first (the administrator's view).
    pub fn all(&self, since_ns: u64) -> Vec<Denial> {
        let mut out: Vec<Denial> = self
            .rings
            .values()
            .flat_map(|r| &r.items)
            .filter(|d| d.wall_ns >= since_ns)
            .cloned()
            .collect();
        out.sort_by_key(|d| d.wall_ns);
        out
    }

    /// Refusals of `instance` and of its sub-agents' instances at or after `since_ns`, oldest
    /// first.
    pub fn of(&self, instance: &str, since_ns: u64) -> Vec<Denial> {
        let mut out: Vec<Denial> = self
            .rings
            .values()
            .flat_map(|r| &r.items)
            .filter(|d| {
                d.instance == instance
                    || d.instance
                        .strip_prefix(instance)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .filter(|d| d.wall_ns >= since_ns)
            .cloned()
            .collect();
        out.sort_by_key(|d| d.wall_ns);
        out
    }
}

/// Whether [`Denials::record`] keeps an action of `instance` with this verdict number: lets
/// the event pipeline build the owned record only for those.
pub fn wanted(instance: &str, verdict: u8) -> bool {
    !instance.is_empty() && is_refusal(verdict)
}

fn is_refusal(verdict: u8) -> bool {
    matches!(
        Verdict::from_u8(verdict),
        Some(Verdict::Denied | Verdict::Killed | Verdict::Throttled | Verdict::AuditDenied)
    )
}

/// What the agent is told about one refusal.
pub fn describe(wall_ns: u64, a: &Action) -> Denial {
    let kind = a.event_kind();
    let (action, target) = match &a.target {
        Target::Net {
            addr, port, name, ..
        } => (
            names::event_kind(a.kind).into_owned(),
            match name {
                Some(n) => format!("{} ({n})", endpoint(*addr, *port)),
                None => endpoint(*addr, *port),
            },
        ),
        Target::Exec { path, .. } => ("exec".to_owned(), path.clone()),
        Target::File {
            op,
            access,
            path,
            target_pid,
        } => {
            let mut action = names::file_op(*op).into_owned();
            let acc = names::access(*access);
            if !acc.is_empty() {
                action = format!("{action} ({})", acc.join("+"));
            }
            let target = match target_pid {
                Some(pid) if path.is_empty() => format!("pid {pid}"),
                _ => path.clone(),
            };
            (action, target)
        }
    };
    let (reason, allow) = reason_and_fix(a, kind);
    Denial {
        wall_ns,
        instance: a.instance.clone(),
        agent: a.agent.clone(),
        pid: a.pid,
        comm: a.comm.clone(),
        verdict: names::verdict(a.verdict).into_owned(),
        backend: names::backend(a.backend).into_owned(),
        action,
        target,
        reason,
        allow_with: allow,
    }
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Why it was refused, and the policy entry that would allow it (`None`: no entry can).
fn reason_and_fix(a: &Action, kind: Option<EventKind>) -> (String, Option<String>) {
    let table = format!("[agents.{}]", toml_key(&a.agent));
    let verdict = a.verdict();
    if a.flags & EVENT_PROTECTED_FS != 0 {
        return (
            "agentguard's own state (cgroupfs, bpffs) is never writable by agents".into(),
            None,
        );
    }
    if a.flags & EVENT_UNKNOWN_CGROUP != 0 {
        return (
            "the process is in no known agent instance (fail closed)".into(),
            None,
        );
    }
    if a.flags & EVENT_SCRATCH_BUSY != 0 {
        return (
            "too many actions were being judged at once on one CPU (fail closed)".into(),
            None,
        );
    }
    if a.flags & EVENT_PATH_TOO_LONG != 0 {
        return ("the path is too long to judge".into(), None);
    }
    if verdict == Some(Verdict::Throttled) {
        let what = match kind {
            Some(EventKind::Exec) => "exec",
            Some(EventKind::FileOpen) => "open",
            _ => "connect",
        };
        return (
            format!("budget exhausted ({what} throttle)"),
            Some(format!("{table}.throttle: a larger {what} rate")),
        );
    }
    let entry = suggest::allowing_entry(&a.target)
        .map(|(list, entry)| format!("{table} {} = [{}]", list.key(), quote(&entry)));
    let mut reason = match (&a.target, a.flags & EVENT_PARENT_DENIED != 0) {
        (_, true) => "the parent agent's rules do not allow it".to_owned(),
        (Target::File { op, .. }, _)
            if matches!(
                FileOp::from_u16(*op),
                Some(FileOp::Ptrace | FileOp::Mount | FileOp::UserNamespace)
            ) =>
        {
            "outside the agent's sandbox (no policy entry grants it)".to_owned()
        }
        _ => "no rule allows it".to_owned(),
    };
    if a.flags & EVENT_PROC_SELF != 0 {
        reason.push_str(" (judged as the agent's own /proc entries)");
    }
    if verdict == Some(Verdict::AuditDenied) {
        reason.push_str("; allowed because the agent is in audit mode");
    }
    if verdict == Some(Verdict::Killed) {
        reason.push_str("; the process was killed (exec cannot be refused on this kernel)");
    }
    if Backend::from_u8(a.backend) == Some(Backend::Landlock) {
        reason.push_str(" (Landlock)");
    }
    (reason, entry)
}

fn toml_key(name: &str) -> String {
    // `buyer/search` is the table `agents.buyer.sub.search`.
    name.split('/').collect::<Vec<_>>().join(".sub.")
}

fn quote(s: &str) -> String {
    // TOML basic strings share JSON's escapes for what a path can hold.
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

#[cfg(test)]
mod tests {
    use agentguard_common::verdict::{ACCESS_READ, ACCESS_WRITE};

    use super::*;
    use crate::audit::{record::Body, testutil::action};

    fn refused(instance: &str, cgroup_id: u64, target: Target, verdict: Verdict) -> Action {
        let Body::Action(mut a) = action(0) else {
            panic!("testutil::action is an action")
        };
        a.agent = instance
            .split('/')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join("/");
        a.instance = instance.to_owned();
        a.cgroup_id = cgroup_id;
        a.verdict = verdict as u8;
        a.backend = Backend::Landlock as u8;
        a.kind = match target {
            Target::Exec { .. } => EventKind::Exec as u16,
            Target::Net { .. } => EventKind::Connect as u16,
            Target::File { .. } => EventKind::FileOpen as u16,
        };
        a.target = target;
        a.flags = 0;
        a
    }

    fn file(path: &str, access: u8) -> Target {
        Target::File {
            op: FileOp::Open as u16,
            access,
            path: path.into(),
            target_pid: None,
        }
    }

    #[test]
    fn an_instance_sees_its_own_and_its_sub_agents_refusals_only() {
        let mut d = Denials::default();
        d.record(
            1,
            &refused(
                "buyer/1",
                10,
                file("/etc/passwd", ACCESS_READ),
                Verdict::Denied,
            ),
        );
        d.record(
            2,
            &refused(
                "buyer/1/search/1",
                11,
                file("/a", ACCESS_READ),
                Verdict::Denied,
            ),
        );
        d.record(
            3,
            &refused("buyer/12", 12, file("/b", ACCESS_READ), Verdict::Denied),
        );
        d.record(
            4,
            &refused("buyer/1", 10, file("/ok", ACCESS_READ), Verdict::Allowed),
        );
        let own: Vec<String> = d.of("buyer/1", 0).into_iter().map(|x| x.target).collect();
        assert_eq!(
            own,
            ["/etc/passwd", "/a"],
            "not buyer/12, not allowed actions"
        );
        assert_eq!(
            d.of("buyer/1/search/1", 0).len(),
            1,
            "a sub-agent sees only its own"
        );
        assert_eq!(d.of("buyer/1", 2).len(), 1, "--since");
        assert!(d.of("seller/1", 0).is_empty());
    }

    #[test]
    fn rings_are_bounded() {
        let mut d = Denials::default();
        for i in 0..(PER_INSTANCE as u64 + 10) {
            d.record(
                i,
                &refused("a/1", 1, file("/x", ACCESS_READ), Verdict::Denied),
            );
        }
        let got = d.of("a/1", 0);
        assert_eq!(got.len(), PER_INSTANCE);
        assert_eq!(got[0].wall_ns, 10, "the oldest went first");
        for i in 0..(INSTANCES as u64 + 5) {
            d.record(
                i,
                &refused("b/1", 100 + i, file("/x", ACCESS_READ), Verdict::Denied),
            );
        }
        assert_eq!(d.rings.len(), INSTANCES);
        // Long paths: fewer kept, never more than the byte bound.
        let long = format!("/{}", "x".repeat(4000));
        for i in 0..100 {
            d.record(
                i,
                &refused("c/1", 10_000, file(&long, ACCESS_READ), Verdict::Denied),
            );
        }
        let ring = &d.rings[&10_000];
        assert!(ring.bytes <= PER_INSTANCE_BYTES, "{}", ring.bytes);
        assert!(ring.items.len() < 100 && !ring.items.is_empty());
        assert_eq!(ring.bytes, ring.items.iter().map(weight).sum::<usize>());
    }

    #[test]
    fn reasons_and_the_entry_that_would_allow_it() {
        let d = describe(
            5,
            &refused(
                "buyer/1",
                1,
                file("/etc/passwd", ACCESS_READ),
                Verdict::Denied,
            ),
        );
        assert_eq!(
            (d.action.as_str(), d.target.as_str()),
            ("open (read)", "/etc/passwd")
        );
        assert_eq!(d.reason, "no rule allows it (Landlock)");
        assert_eq!(
            d.allow_with.as_deref(),
            Some("[agents.buyer] read = [\"/etc/passwd\"]")
        );
        let d = describe(
            5,
            &refused(
                "buyer/1/search/2",
                1,
                file("/srv/out", ACCESS_WRITE),
                Verdict::Denied,
            ),
        );
        assert_eq!(
            d.allow_with.as_deref(),
            Some("[agents.buyer.sub.search] write = [\"/srv/out\"]")
        );
        let exec = Target::Exec {
            path: "/usr/bin/curl".into(),
            dev: 1,
            ino: 2,
        };
        let d = describe(5, &refused("buyer/1", 1, exec, Verdict::Killed));
        assert_eq!(
            d.allow_with.as_deref(),
            Some("[agents.buyer] exec = [\"/usr/bin/curl\"]")
        );
        assert!(d.reason.contains("killed"), "{}", d.reason);
        let net = Target::Net {
            addr: "::1".parse().expect("addr"),
            port: 9,
            protocol: 6,
            name: None,
        };
        let d = describe(5, &refused("buyer/1", 1, net.clone(), Verdict::Throttled));
        assert!(d.reason.starts_with("budget exhausted"), "{}", d.reason);
        let mut a = refused("buyer/1", 1, net, Verdict::Denied);
        a.flags = EVENT_PARENT_DENIED;
        let d = describe(5, &a);
        assert_eq!(d.target, "[::1]:9");
        assert_eq!(
            d.allow_with.as_deref(),
            Some("[agents.buyer] connect = [\"[::1]:9\"]")
        );
        assert!(d.reason.contains("parent"), "{}", d.reason);
        let mut a = refused(
            "buyer/1",
            1,
            file("/sys/fs/cgroup/x", ACCESS_WRITE),
            Verdict::Denied,
        );
        a.flags = EVENT_PROTECTED_FS;
        assert_eq!(describe(5, &a).allow_with, None);
        let unix = |op: FileOp, path: &str| Target::File {
            op: op as u16,
            access: 0,
            path: path.into(),
            target_pid: None,
        };
        let d = describe(
            5,
            &refused(
                "buyer/1",
                1,
                unix(FileOp::UnixConnect, "/var/run/docker.sock"),
                Verdict::Denied,
            ),
        );
        assert_eq!(
            (d.action.as_str(), d.allow_with.as_deref()),
            (
                "unix-connect",
                Some("[agents.buyer] connect = [\"unix:/var/run/docker.sock\"]")
            )
        );
        // No entry grants a privileged operation: the agent is not told to "write" it.
        let d = describe(
            5,
            &refused("buyer/1", 1, unix(FileOp::Bpf, "cmd=5"), Verdict::Denied),
        );
        assert_eq!(d.allow_with, None);
    }
}
