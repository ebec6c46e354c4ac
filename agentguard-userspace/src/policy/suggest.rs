//! Learn mode: a policy that would allow what an agent was refused (or, in audit mode, would
//! have been refused), merged with the policy in force. Pure: the caller reads the log and the
//! policy file; this module turns refusals into entries and writes the TOML.
//!
//! Entries: `connect` from network refusals (the DNS name the daemon resolved, else the
//! address) and AF_UNIX ones (`unix:` entries), `exec` from exec refusals and kills, `read`/`write` from file refusals. File paths
//! are collapsed: two or more refused paths in one directory at least two levels deep become
//! that directory (`/srv/data/a`, `/srv/data/b` -> `/srv/data`), never `/` or a top-level
//! directory such as `/etc`, so a suggestion never opens a whole system tree.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use agentguard_common::{
    event::FileOp,
    verdict::{ACCESS_WRITE, Verdict},
};

use crate::audit::record::{Action, Target};

/// Errors building a suggestion.
#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    /// The policy file is not TOML.
    #[error("{origin}: {source}")]
    Toml {
        /// The file.
        origin: String,
        /// What the parser said.
        source: toml_edit::TomlError,
    },
    /// The policy has no such agent.
    #[error("{origin}: no agent {agent:?} (expected a table [{field}])")]
    NoAgent {
        /// The file.
        origin: String,
        /// The agent asked for.
        agent: String,
        /// Where it was looked for.
        field: String,
    },
    /// A list the suggestion extends is not an array in the file.
    #[error("{origin}: {field} is not a list")]
    NotAList {
        /// The file.
        origin: String,
        /// The field.
        field: String,
    },
}

/// The list an entry goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum List {
    /// `connect`.
    Connect,
    /// `exec`.
    Exec,
    /// `read`.
    Read,
    /// `write`.
    Write,
}

impl List {
    /// The policy field.
    pub fn key(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Exec => "exec",
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// Refusals seen, counted per (list, entry).
#[derive(Debug, Default)]
pub struct Seen {
    entries: BTreeMap<(List, String), u64>,
    /// Refusals no list entry can allow (privileged operations, budgets), by description.
    pub other: BTreeMap<String, u64>,
}

impl Seen {
    /// Counts `a` if it is a refusal or an audit-mode would-be refusal of `agent`.
    pub fn add(&mut self, agent: &str, a: &Action) {
        if a.agent != agent {
            return;
        }
        let verdict = a.verdict();
        if !matches!(
            verdict,
            Some(Verdict::Denied | Verdict::AuditDenied | Verdict::Killed)
        ) {
            if verdict == Some(Verdict::Throttled) {
                *self.other.entry("over a budget".into()).or_default() += 1;
            }
            return;
        }
        let entry = allowing_entry(&a.target);
        if let Some((List::Read | List::Write, path)) = &entry
            && numbered_proc(path)
        {
            *self
                .other
                .entry("/proc/<pid> (a policy can allow only /proc/self)".into())
                .or_default() += 1;
            return;
        }
        match entry {
            Some(e) => *self.entries.entry(e).or_default() += 1,
            None => {
                let what = crate::audit::names::event_kind(a.kind).into_owned();
                *self.other.entry(what).or_default() += 1;
            }
        }
    }

    /// The entries to add, with their counts, paths collapsed, sorted per list.
    pub fn entries(&self) -> BTreeMap<List, Vec<(String, u64)>> {
        let mut out: BTreeMap<List, Vec<(String, u64)>> = BTreeMap::new();
        for list in [List::Connect, List::Exec] {
            for ((l, e), n) in &self.entries {
                if *l == list {
                    out.entry(list).or_default().push((e.clone(), *n));
                }
            }
        }
        for list in [List::Read, List::Write] {
            let paths: BTreeMap<&str, u64> = self
                .entries
                .iter()
                .filter(|((l, _), _)| *l == list)
                .map(|((_, p), n)| (p.as_str(), *n))
                .collect();
            let collapsed = collapse(&paths);
            if !collapsed.is_empty() {
                out.insert(list, collapsed);
            }
        }
        out
    }
}

/// The policy entry that would allow `target`, and its list; `None` for what no entry can
/// allow (privileged operations such as mount, ptrace, bpf, signals and unjudged sockets).
pub fn allowing_entry(target: &Target) -> Option<(List, String)> {
    match target {
        Target::Net {
            addr, port, name, ..
        } => Some((List::Connect, endpoint(*addr, *port, name.as_deref()))),
        Target::Exec { path, .. } if !path.is_empty() => Some((List::Exec, path.clone())),
        Target::File {
            op, access, path, ..
        } if !path.is_empty() => match FileOp::from_u16(*op)? {
            FileOp::UnixConnect | FileOp::UnixSend => Some((List::Connect, format!("unix:{path}"))),
            FileOp::Open if *access & ACCESS_WRITE == 0 => Some((List::Read, path.clone())),
            op if op == FileOp::Open || is_path_op(op) => Some((List::Write, path.clone())),
            _ => None,
        },
        Target::Exec { .. } | Target::File { .. } => None,
    }
}

/// Operations that change the filesystem at a path, which a `write` entry allows.
fn is_path_op(op: FileOp) -> bool {
    matches!(
        op,
        FileOp::Create
            | FileOp::Mkdir
            | FileOp::Unlink
            | FileOp::Rmdir
            | FileOp::Rename
            | FileOp::Link
            | FileOp::Symlink
            | FileOp::Truncate
            | FileOp::Chmod
            | FileOp::Chown
    )
}

/// `/proc/<digits>...`: another process's files, which no policy entry allows (the Rust and
/// C runtimes read `/proc/self/maps`, which the kernel reports by number).
fn numbered_proc(path: &str) -> bool {
    path.strip_prefix("/proc/")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

fn endpoint(addr: IpAddr, port: u16, name: Option<&str>) -> String {
    match (name, addr) {
        (Some(n), _) => format!("{n}:{port}"),
        (None, IpAddr::V6(a)) => format!("[{a}]:{port}"),
        (None, IpAddr::V4(a)) => format!("{a}:{port}"),
    }
}

/// Paths with their counts, collapsed to their directory where a directory at least two
/// levels deep holds two or more of them.
pub fn collapse(paths: &BTreeMap<&str, u64>) -> Vec<(String, u64)> {
    let mut by_dir: BTreeMap<String, Vec<(&str, u64)>> = BTreeMap::new();
    for (p, n) in paths {
        let dir = Path::new(p)
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        by_dir.entry(dir).or_default().push((p, *n));
    }
    let mut out: BTreeSet<(String, u64)> = BTreeSet::new();
    for (dir, files) in by_dir {
        let depth = Path::new(&dir).components().count().saturating_sub(1);
        if files.len() >= 2 && depth >= 2 {
            out.insert((dir, files.iter().map(|(_, n)| n).sum()));
        } else {
            out.extend(files.into_iter().map(|(p, n)| (p.to_owned(), n)));
        }
    }
    // A collapsed directory covers paths below it that stayed single.
    let dirs: Vec<String> = out.iter().map(|(p, _)| p.clone()).collect();
    out.into_iter()
        .filter(|(p, _)| {
            !dirs
                .iter()
                .any(|d| d != p && Path::new(p).starts_with(Path::new(d)))
        })
        .collect()
}

/// The policy file `text` with `agent`'s lists extended by `seen`: each new entry on a line of
/// its own, under a comment saying how often it was refused. The rest of the file, its
/// comments and layout included, is kept as it was. With `enforce`, the agent's `mode` becomes
/// `"enforce"` (the step after reviewing an audit run).
pub fn merge(
    origin: &str,
    text: &str,
    agent: &str,
    seen: &Seen,
    enforce: bool,
) -> Result<String, SuggestError> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|source| SuggestError::Toml {
        origin: origin.to_owned(),
        source,
    })?;
    let field = format!("agents.{}", agent.replace('/', ".sub."));
    let own = agent_table(&mut doc, agent).ok_or_else(|| SuggestError::NoAgent {
        origin: origin.to_owned(),
        agent: agent.to_owned(),
        field: field.clone(),
    })?;
    if enforce {
        own.insert("mode", toml_edit::value("enforce"));
    }
    for (list, entries) in seen.entries() {
        let item = own
            .entry(list.key())
            .or_insert_with(|| toml_edit::value(toml_edit::Array::new()));
        let array = item.as_array_mut().ok_or_else(|| SuggestError::NotAList {
            origin: origin.to_owned(),
            field: format!("{field}.{}", list.key()),
        })?;
        let new: Vec<&(String, u64)> = entries
            .iter()
            .filter(|(e, _)| !array.iter().any(|v| v.as_str() == Some(e.as_str())))
            .collect();
        if new.is_empty() {
            continue;
        }
        // One entry a line, the entries already there included, so that each suggestion can
        // carry its comment.
        for v in array.iter_mut() {
            if !v
                .decor()
                .prefix()
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.contains('\n'))
            {
                v.decor_mut().set_prefix("\n    ");
            }
        }
        for (entry, n) in new {
            let times = if *n == 1 { "time" } else { "times" };
            let mut v = toml_edit::Value::from(entry.as_str());
            v.decor_mut()
                .set_prefix(format!("\n    # suggested: refused {n} {times}\n    "));
            array.push_formatted(v);
        }
        array.set_trailing("\n");
        array.set_trailing_comma(true);
    }
    Ok(doc.to_string())
}

/// The table of `agent` (`a/b` is `agents.a.sub.b`), however the file spells it.
fn agent_table<'d>(
    doc: &'d mut toml_edit::DocumentMut,
    agent: &str,
) -> Option<&'d mut dyn toml_edit::TableLike> {
    let mut parts = agent.split('/');
    let mut table = doc
        .get_mut("agents")?
        .as_table_like_mut()?
        .get_mut(parts.next()?)?
        .as_table_like_mut()?;
    for sub in parts {
        table = table
            .get_mut("sub")?
            .as_table_like_mut()?
            .get_mut(sub)?
            .as_table_like_mut()?;
    }
    Some(table)
}

#[cfg(test)]
mod tests {
    use agentguard_common::{
        event::EventKind,
        verdict::{ACCESS_READ, Backend},
    };

    use super::*;

    fn action(agent: &str, kind: EventKind, verdict: Verdict, target: Target) -> Action {
        Action {
            kind: kind as u16,
            verdict: verdict as u8,
            backend: Backend::Landlock as u8,
            agent: agent.into(),
            instance: format!("{agent}/1"),
            cgroup_id: 1,
            pid: 1,
            tid: 1,
            uid: 0,
            comm: String::new(),
            target,
            rule: None,
            flags: 0,
            generation: 0,
        }
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
    fn each_refusal_maps_to_the_entry_that_allows_it() {
        let op = |op: FileOp, access: u8, path: &str| {
            allowing_entry(&Target::File {
                op: op as u16,
                access,
                path: path.into(),
                target_pid: None,
            })
        };
        let entry = |list: List, s: &str| Some((list, s.to_owned()));
        assert_eq!(
            op(FileOp::UnixConnect, 0, "/var/run/docker.sock"),
            entry(List::Connect, "unix:/var/run/docker.sock")
        );
        assert_eq!(
            op(FileOp::UnixSend, 0, "@bus"),
            entry(List::Connect, "unix:@bus")
        );
        assert_eq!(op(FileOp::Open, ACCESS_READ, "/a"), entry(List::Read, "/a"));
        assert_eq!(
            op(FileOp::Open, ACCESS_READ | ACCESS_WRITE, "/a"),
            entry(List::Write, "/a")
        );
        assert_eq!(op(FileOp::Mkdir, 0, "/a/b"), entry(List::Write, "/a/b"));
        // Privileged operations carry a description in the path field, not a path.
        for privileged in [
            FileOp::Bpf,
            FileOp::Signal,
            FileOp::Socket,
            FileOp::Mount,
            FileOp::Ptrace,
            FileOp::UserNamespace,
        ] {
            assert_eq!(op(privileged, 0, "cmd=5"), None, "{privileged:?}");
        }
        assert_eq!(op(FileOp::Open, ACCESS_READ, ""), None);
    }

    #[test]
    fn paths_collapse_to_deep_directories_only() {
        let paths: BTreeMap<&str, u64> = [
            ("/srv/data/a", 2),
            ("/srv/data/b", 1),
            ("/srv/data/c/d", 1),
            ("/etc/passwd", 1),
            ("/etc/group", 1),
            ("/tmp/x", 1),
        ]
        .into();
        assert_eq!(
            collapse(&paths),
            vec![
                ("/etc/group".to_owned(), 1),
                ("/etc/passwd".to_owned(), 1),
                ("/srv/data".to_owned(), 3),
                ("/tmp/x".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn a_suggestion_keeps_the_policy_and_adds_commented_entries() {
        let text = r#"
# The buying agent: its comments survive a suggestion.
[agents.buyer]
mode = "audit" # learning
exec = ["/bin/sh"]
read = ["@system-runtime"]

[agents.buyer.throttle]
exec = "30/min"

[agents.other]
connect = ["127.0.0.1:80"]
"#;
        let mut seen = Seen::default();
        for a in [
            action(
                "buyer",
                EventKind::FileOpen,
                Verdict::AuditDenied,
                file("/srv/d/x/a", ACCESS_READ),
            ),
            action(
                "buyer",
                EventKind::FileOpen,
                Verdict::Denied,
                file("/srv/d/x/b", ACCESS_READ),
            ),
            action(
                "buyer",
                EventKind::FileOpen,
                Verdict::Denied,
                file("/srv/out", ACCESS_WRITE),
            ),
            action(
                "buyer",
                EventKind::Exec,
                Verdict::Killed,
                Target::Exec {
                    path: "/bin/sh".into(),
                    dev: 0,
                    ino: 0,
                },
            ),
            action(
                "buyer",
                EventKind::Connect,
                Verdict::AuditDenied,
                Target::Net {
                    addr: "::1".parse().expect("ip"),
                    port: 8080,
                    protocol: 6,
                    name: None,
                },
            ),
            action(
                "other",
                EventKind::FileOpen,
                Verdict::Denied,
                file("/nope", ACCESS_READ),
            ),
            action(
                "buyer",
                EventKind::FileOpen,
                Verdict::Allowed,
                file("/fine", ACCESS_READ),
            ),
        ] {
            seen.add("buyer", &a);
        }
        let out = merge("p.toml", text, "buyer", &seen, false).expect("merges");
        assert!(
            out.contains("# suggested: refused 2 times\n    \"/srv/d/x\",\n"),
            "{out}"
        );
        assert!(
            out.contains("# suggested: refused 1 time\n    \"/srv/out\",\n"),
            "{out}"
        );
        assert!(
            out.contains("connect = [\n    # suggested: refused 1 time\n    \"[::1]:8080\",\n]"),
            "{out}"
        );
        assert!(
            out.starts_with("\n# The buying agent: its comments survive a suggestion.\n")
                && out.contains("mode = \"audit\" # learning\n"),
            "{out}"
        );
        assert!(!out.contains("/nope") && !out.contains("/fine"), "{out}");
        let mut procs = Seen::default();
        procs.add(
            "buyer",
            &action(
                "buyer",
                EventKind::FileOpen,
                Verdict::Denied,
                file("/proc/4242/maps", ACCESS_READ),
            ),
        );
        assert!(procs.entries().is_empty() && procs.other.len() == 1);
        assert_eq!(
            out.matches("\"/bin/sh\"").count(),
            1,
            "already allowed: {out}"
        );
        let back: toml::Table = out.parse().expect("valid TOML");
        assert_eq!(back["agents"]["buyer"]["mode"].as_str(), Some("audit"));
        assert_eq!(
            back["agents"]["buyer"]["throttle"]["exec"].as_str(),
            Some("30/min")
        );
        assert_eq!(
            back["agents"]["other"]["connect"][0].as_str(),
            Some("127.0.0.1:80")
        );
        let plain = "[agents.buyer]\nexec = [\"/bin/sh\"]\n";
        let out = merge("p.toml", plain, "buyer", &seen, true).expect("merges");
        let back: toml::Table = out.parse().expect("valid TOML, one [agents.buyer]");
        assert_eq!(back["agents"]["buyer"]["mode"].as_str(), Some("enforce"));
        assert!(matches!(
            merge("p.toml", text, "nobody", &seen, true),
            Err(SuggestError::NoAgent { .. })
        ));
    }
}
