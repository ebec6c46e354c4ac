//! Requests and replies on the control socket: one JSON object per line each way.
//!
//! This file depends on serde alone (no `crate::` items): the fuzz target (`fuzz/`) compiles it,
//! with `frame.rs`, on its own, so fuzzing does not build the daemon.

use std::{fmt, path::PathBuf, str::FromStr};

use serde::{Deserialize, Serialize};

/// The identity to switch to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Name, for messages.
    pub name: String,
}

/// Which instances an operator command is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selector {
    /// Every instance.
    All,
    /// Every instance of an agent (full name, e.g. `buyer` or `buyer/search`).
    Agent(String),
    /// One instance by path (e.g. `buyer/3`).
    Instance(String),
}

impl FromStr for Selector {
    type Err = String;

    /// `NAME` selects an agent's instances, `NAME/N` (any path ending in a number) one instance.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_matches('/');
        if s.is_empty() {
            return Err("empty agent name".into());
        }
        let last = s.rsplit('/').next().unwrap_or(s);
        if last.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self::Instance(s.to_owned()))
        } else {
            Ok(Self::Agent(s.to_owned()))
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("--all"),
            Self::Agent(a) | Self::Instance(a) => f.write_str(a),
        }
    }
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Is the daemon there?
    Ping,
    /// Create an instance of `agent` and move the calling process into it.
    Run {
        /// Full agent name.
        agent: String,
        /// For a sub-agent: the parent instance (default: the newest one).
        parent: Option<String>,
        /// `run --user USER[:GROUP]`: who to run as instead of the policy's choice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Create an instance of `agent` and move `pid` into it.
    Tag {
        /// Full agent name.
        agent: String,
        /// The process to adopt.
        pid: u32,
        /// For a sub-agent: the parent instance.
        parent: Option<String>,
    },
    /// Freeze instances.
    Freeze {
        /// Which.
        target: Selector,
        /// Milliseconds to wait for the kernel to report them frozen.
        timeout_ms: u64,
    },
    /// Thaw instances.
    Thaw {
        /// Which.
        target: Selector,
        /// Milliseconds to wait.
        timeout_ms: u64,
    },
    /// Kill instances.
    Kill {
        /// Which.
        target: Selector,
        /// Milliseconds to wait for them to be empty.
        timeout_ms: u64,
    },
    /// Agents, instances, budgets, counters.
    Status,
    /// Validate and apply a policy.
    PolicyApply {
        /// Where the caller read it (for messages and the log).
        origin: String,
        /// The policy text.
        text: String,
    },
    /// Store (or replace) a secret for the gateway (administrator socket only).
    SecretSet {
        /// Secret name.
        name: String,
        /// The value (never printed by `Debug`).
        value: SecretValue,
    },
    /// Secret names.
    SecretList,
    /// Remove a secret.
    SecretRm {
        /// Secret name.
        name: String,
    },
    /// Remove old log segments (retention); exactly one of the two is given.
    LogPrune {
        /// Keep segments written to within this many days.
        keep_days: Option<u64>,
        /// Keep the newest segments up to this many bytes.
        keep_bytes: Option<u64>,
    },
    /// Stop the daemon.
    Shutdown {
        /// Also remove the programs (agents lose enforcement).
        unload: bool,
    },
    /// Check out a credential the caller's agent is granted (`credentials`), for a tool the
    /// gateway cannot front (agent socket only; the caller is its cgroup, never a field here).
    CredentialCheckout {
        /// Secret name.
        name: String,
    },
    /// End the caller's instance's lease on a credential.
    CredentialReturn {
        /// Secret name.
        name: String,
    },
    /// Recent refusals of the caller's own instance and its sub-agents (agent socket; on the
    /// administrator socket, of every instance).
    Denials {
        /// Only refusals at or after this wall-clock time (nanoseconds since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_ns: Option<u64>,
    },
}

/// A secret value on the wire: serialised as a plain string, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(pub String);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// What `agentguard run` must apply to itself before exec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Landlock rules, when Landlock enforces file rules on this host.
    pub landlock: Option<LandlockSpec>,
    /// Capabilities the agent keeps (policy `capabilities`), as `CAP_*` names.
    pub capabilities: Vec<String>,
    /// Who the agent runs as.
    pub identity: Identity,
    /// seccomp groups the policy grants back (`allow_syscalls`).
    pub allow_syscalls: Vec<String>,
    /// The instance's private temp directory, exported as `TMPDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_dir: Option<PathBuf>,
    /// The binaries an enforcing agent with exec rules may run, so `run` can explain a command
    /// that PATH finds elsewhere than the listed path (empty: no such check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_allowed: Vec<PathBuf>,
    /// The tool gateway's URL (`http://ADDR`), exported as `AGENTGUARD_GATEWAY` for an agent
    /// with tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// Who `agentguard run` switches to before exec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Identity {
    /// Keep the launcher's identity: a sub-agent started from inside its parent, which has no
    /// privilege to switch users.
    #[default]
    Inherited,
    /// A named user (policy `user` or `run --user`), never uid 0.
    User(UserSpec),
    /// A per-instance uid from agentguard's dynamic range, with no passwd entry.
    Dynamic {
        /// The uid (and gid).
        uid: u32,
    },
    /// uid 0, because the policy says `user = "root"`.
    Root,
}

/// File rules for Landlock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockSpec {
    /// Read prefixes.
    pub read: Vec<PathBuf>,
    /// Write prefixes.
    pub write: Vec<PathBuf>,
    /// Allowed binaries.
    pub exec: Vec<PathBuf>,
    /// Whether the agent may read its own `/proc/<pid>` entries.
    pub proc_self: bool,
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// To [`Request::Ping`].
    Pong {
        /// Daemon version.
        version: String,
        /// Backends in force.
        backends: String,
    },
    /// To [`Request::Run`]: the caller is now in the instance.
    Launched {
        /// Instance path.
        instance: String,
        /// What to apply before exec (boxed: by far the largest reply).
        sandbox: Box<Sandbox>,
    },
    /// To [`Request::Tag`].
    Tagged {
        /// Instance path.
        instance: String,
        /// What the operator must know (unjudged sockets, no Landlock).
        warnings: Vec<String>,
    },
    /// To freeze, thaw, kill.
    Done {
        /// Instances affected.
        instances: Vec<String>,
        /// Milliseconds until the kernel reported completion.
        took_ms: u64,
    },
    /// To [`Request::Status`].
    Status(StatusReport),
    /// To [`Request::PolicyApply`].
    Applied {
        /// blake3 of the policy, hex.
        digest: String,
        /// Generation written.
        generation: u8,
        /// Compiled rules.
        rules: usize,
        /// Non-fatal notes (e.g. DNS names not resolved yet).
        warnings: Vec<String>,
    },
    /// To [`Request::SecretSet`].
    SecretStored {
        /// Whether a secret of that name was replaced.
        replaced: bool,
    },
    /// To [`Request::SecretList`].
    Secrets {
        /// Names (never values).
        names: Vec<String>,
    },
    /// To [`Request::SecretRm`].
    SecretRemoved {
        /// Whether it existed.
        existed: bool,
    },
    /// To [`Request::CredentialCheckout`].
    Credential {
        /// Secret name.
        name: String,
        /// The value (never printed by `Debug`).
        value: SecretValue,
        /// The lease id (what the log names).
        lease: String,
        /// Seconds until the lease ends.
        ttl_s: u64,
    },
    /// To [`Request::CredentialReturn`].
    CredentialReturned {
        /// The lease ended.
        lease: String,
    },
    /// To [`Request::Shutdown`].
    ShuttingDown,
    /// To [`Request::Denials`], oldest first.
    Denials {
        /// The refusals.
        denials: Vec<Denial>,
    },
    /// To [`Request::LogPrune`].
    Pruned {
        /// Segment files removed.
        segments: u64,
        /// Their bytes.
        bytes: u64,
        /// The first record kept, when something was removed.
        first_kept_seq: Option<u64>,
    },
}

/// One refusal, as `agentguard denials` shows it to the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// When, nanoseconds since the epoch.
    pub wall_ns: u64,
    /// Instance path.
    pub instance: String,
    /// Full agent name.
    pub agent: String,
    /// Process id (0 when the kernel did not say).
    pub pid: u32,
    /// Task comm, when known.
    pub comm: String,
    /// `denied`, `killed`, `throttled` or `audit-denied`.
    pub verdict: String,
    /// The backend that refused it.
    pub backend: String,
    /// What was attempted (`connect`, `exec`, `open (read)`, `unlink (write)`, ...).
    pub action: String,
    /// What it was aimed at (address, path).
    pub target: String,
    /// Why it was refused.
    pub reason: String,
    /// The policy entry that would allow it, when one can.
    pub allow_with: Option<String>,
}

/// The reply envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// Success.
    Ok(Reply),
    /// Failure, with a message for the operator.
    Error(String),
}

/// `agentguard status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Daemon version.
    pub version: String,
    /// Backends in force.
    pub backends: String,
    /// blake3 of the policy in force, hex.
    pub policy_digest: String,
    /// The policy file.
    pub policy_origin: String,
    /// Agents declared by the policy.
    pub agents: Vec<AgentStatus>,
    /// Kernel events dropped since the programs were loaded.
    pub lost_events: u64,
    /// Whether the syscall tracepoints that count opens for open budgets are attached (they
    /// are only while the policy has an open budget); `None` where the LSM backend counts opens.
    #[serde(default)]
    pub open_budget_tracepoints: Option<bool>,
}

/// One agent in `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Full name.
    pub name: String,
    /// `enforce` or `audit`.
    pub mode: String,
    /// Who `run` starts it as: `dynamic uid`, `user NAME`, or `ROOT (policy opt-in)`; for a
    /// sub-agent, `parent's user`. Followed by the seccomp groups it is granted back.
    #[serde(default)]
    pub runs_as: String,
    /// Budgets, e.g. `connect 10/s per process (burst 1, on exceed deny)`.
    pub budgets: Vec<String>,
    /// Running instances.
    pub instances: Vec<InstanceStatus>,
}

/// One instance in `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Instance path.
    pub name: String,
    /// cgroup id.
    pub cgroup_id: u64,
    /// `running` or `frozen`.
    pub state: String,
    /// Processes.
    pub pids: Vec<u32>,
    /// Actions allowed.
    pub allowed: u64,
    /// Actions denied.
    pub denied: u64,
    /// Of which by a budget.
    pub throttled: u64,
    /// Would-be denials in audit mode.
    pub audit_denied: u64,
    /// Current use of each budget, e.g. `connect (instance): 3 of 10 left`.
    pub budget_use: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!("buyer".parse(), Ok(Selector::Agent("buyer".into())));
        assert_eq!(
            "buyer/search".parse(),
            Ok(Selector::Agent("buyer/search".into()))
        );
        assert_eq!("buyer/3".parse(), Ok(Selector::Instance("buyer/3".into())));
        assert_eq!(
            "buyer/3/search/1".parse(),
            Ok(Selector::Instance("buyer/3/search/1".into()))
        );
        assert!("".parse::<Selector>().is_err());
    }

    #[test]
    fn wire_format_is_stable_json() -> Result<(), serde_json::Error> {
        let r = Request::Run {
            agent: "buyer".into(),
            parent: None,
            user: None,
        };
        assert_eq!(
            serde_json::to_string(&r)?,
            r#"{"op":"run","agent":"buyer","parent":null}"#
        );
        let back: Request =
            serde_json::from_str(r#"{"op":"freeze","target":"all","timeout_ms":5}"#)?;
        assert_eq!(
            back,
            Request::Freeze {
                target: Selector::All,
                timeout_ms: 5
            }
        );
        let resp = Response::Error("nope".into());
        assert_eq!(serde_json::to_string(&resp)?, r#"{"error":"nope"}"#);
        Ok(())
    }
}
