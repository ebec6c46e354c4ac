//! The policy pipeline: parse -> validate -> (resolve) -> compile -> write maps.
//!
//! Every stage but the last is pure and unit-tested: [`parse`] and [`validate`] turn TOML text
//! into a [`Policy`] or diagnostics naming file, line, column and field; [`resolve`] looks up
//! what the file names outside itself (binaries, DNS names); [`compile`] turns both into map
//! entries for one generation. Only [`crate::ebpf::maps`] touches the kernel.

pub mod compile;
pub mod diag;
pub mod net;
pub mod presets;
pub mod resolve;
pub mod runtime;
pub mod schema;
pub mod suggest;
#[cfg(test)]
mod tests;
pub mod throttle;
pub mod tools;
pub mod unix;
pub mod validate;

use std::path::{Path, PathBuf};

pub use diag::{Diagnostic, PolicyError, Source};
pub use schema::Mode;
use serde::Serialize;

use self::{net::NetEntry, throttle::Limit};

/// Where a rule was written, for messages about it after validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted field path.
    pub field: String,
}

/// A value with the place it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub at: Location,
}

/// A read or write rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathRule {
    /// A path and everything below it.
    Prefix(PathBuf),
    /// The agent's own `/proc/<pid>` entries (`/proc/self`, `/proc/thread-self`).
    ProcSelf,
}

impl std::fmt::Display for PathRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Prefix(p) => write!(f, "{}", p.display()),
            Self::ProcSelf => f.write_str(runtime::PROC_SELF),
        }
    }
}

/// A validated agent or sub-agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// Full name: `buyer`, or `buyer/search` for a sub-agent.
    pub name: String,
    /// Stable numeric id derived from the name (see [`agent_id`]).
    pub id: u32,
    /// Full name of the parent agent of a sub-agent.
    pub parent: Option<String>,
    /// Enforce or audit.
    pub mode: Mode,
    /// Whether allowed actions are logged.
    pub log_allowed: bool,
    /// Whether the system resolvers are reachable on port 53.
    pub dns: bool,
    /// Network destinations (IPv4/IPv6).
    pub connect: Vec<Located<NetEntry>>,
    /// AF_UNIX addresses (`unix:` entries of `connect`).
    pub unix: Vec<Located<unix::UnixAddr>>,
    /// Binaries (absolute paths as written).
    pub exec: Vec<Located<PathBuf>>,
    /// Read rules (`@system-runtime` and presets expanded, plus the implicit device files).
    pub read: Vec<Located<PathRule>>,
    /// Write rules (plus the implicit device files).
    pub write: Vec<Located<PathRule>>,
    /// Presets referenced (their rules are already in `exec` and `read`).
    pub presets: Vec<Located<String>>,
    /// Whether each instance gets a private temp directory.
    pub private_tmp: bool,
    /// Capabilities kept by `agentguard run`.
    pub capabilities: Vec<Located<caps::Capability>>,
    /// The user `agentguard run` starts a top-level instance as (`None`: a dynamic uid).
    pub user: Option<Located<String>>,
    /// seccomp groups granted back (see [`crate::sandbox::seccomp::GROUPS`]).
    pub allow_syscalls: Vec<Located<String>>,
    /// Budgets.
    pub limits: Vec<Limit>,
    /// How many instances may run at once (each nested sub-agent instance counts for its own
    /// agent); `None`: as many as the kernel maps hold.
    pub max_instances: Option<u32>,
    /// Tools (names of `[tools.NAME]`) the agent may call through the gateway.
    pub tools: Vec<Located<String>>,
    /// Secrets the agent may check out over the agent socket (`credential checkout`).
    pub credentials: Vec<Located<String>>,
    /// Lifetime of a checked-out credential's lease.
    pub credential_ttl: std::time::Duration,
}

impl Agent {
    /// Exec and file access are default-deny once any exec, read or write rule exists.
    pub fn restricts_files(&self) -> bool {
        !self.exec.is_empty() || !self.read.is_empty() || !self.write.is_empty()
    }

    /// Whether the policy says, in so many words, that this agent runs as root.
    pub fn runs_as_root(&self) -> bool {
        self.user.as_ref().is_some_and(|u| is_root_name(&u.value))
    }
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Agents, every parent before its sub-agents.
    pub agents: Vec<Agent>,
    /// Tools the gateway serves.
    pub tools: Vec<tools::Tool>,
    /// blake3 of the file's bytes.
    pub digest: [u8; 32],
    /// The file it came from.
    pub origin: String,
}

impl Policy {
    /// The agent with this full name.
    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// The tool with this name.
    pub fn tool(&self, name: &str) -> Option<&tools::Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// Whether any agent may call a tool (and so needs the gateway reachable).
    pub fn uses_tools(&self) -> bool {
        self.agents.iter().any(|a| !a.tools.is_empty())
    }

    /// The agent with this id.
    pub fn agent_by_id(&self, id: u32) -> Option<&Agent> {
        self.agents.iter().find(|a| a.id == id)
    }

    /// Every binary the exec rules name, over all agents.
    pub fn exec_paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.agents
            .iter()
            .flat_map(|a| a.exec.iter().map(|e| e.value.clone()))
    }

    /// What this policy grants that weakens agentguard's guarantees, one loud line each: agents
    /// that run as root, and seccomp groups granted back.
    pub fn weakenings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.agents {
            if a.runs_as_root() {
                out.push(format!(
                    "agent {:?} runs as ROOT (user = \"root\"): uid 0 passes file permission checks on the whole host; prefer a dedicated user or the default dynamic uid",
                    a.name
                ));
            }
            if !a.allow_syscalls.is_empty() {
                let groups: Vec<&str> = a.allow_syscalls.iter().map(|g| g.value.as_str()).collect();
                out.push(format!(
                    "agent {:?} is granted syscall groups the seccomp filter refuses by default: {}",
                    a.name,
                    groups.join(", ")
                ));
            }
        }
        out
    }

    /// The digest as hex, as recorded in the log.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// Whether a `user` value names uid 0.
pub fn is_root_name(user: &str) -> bool {
    let name = user.split_once(':').map_or(user, |(u, _)| u);
    name == "root" || name.parse::<u32>() == Ok(0)
}

/// The id of an agent: the first four bytes of blake3 over its full name, never 0 (0 means
/// "no agent" in the kernel). Collisions are caught by [`validate`].
pub fn agent_id(full_name: &str) -> u32 {
    let h = blake3::hash(full_name.as_bytes());
    let b = h.as_bytes();
    match u32::from_le_bytes([b[0], b[1], b[2], b[3]]) {
        0 => 1,
        id => id,
    }
}

/// Reads, parses and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&path.display().to_string(), &text)
}

/// Parses and validates policy text; `name` is what diagnostics call the file.
pub fn parse(name: &str, text: &str) -> Result<Policy, PolicyError> {
    let source = Source::new(name, text);
    let raw: schema::RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let field = source.field_at(span.start);
        PolicyError::Invalid(vec![source.diag(span, field, e.message().trim())])
    })?;
    validate::validate(&source, &raw).map_err(PolicyError::Invalid)
}
