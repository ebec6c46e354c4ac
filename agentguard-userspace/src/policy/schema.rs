//! The policy file as written: serde structs with spans, no meaning attached yet.
//! [`super::validate`] turns them into a [`super::Policy`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Agents by name.
    #[serde(default)]
    pub agents: BTreeMap<Spanned<String>, Spanned<RawAgent>>,
}

/// `mode = "enforce" | "audit"`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse what the rules do not allow.
    #[default]
    Enforce,
    /// Allow everything, log would-be refusals as `audit-denied`.
    Audit,
}

/// `[agents.NAME]` (and `[agents.NAME.sub.SUB]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// Enforce or audit.
    pub mode: Option<Spanned<Mode>>,
    /// Whether allowed actions are logged (denials always are).
    pub log_allowed: Option<Spanned<bool>>,
    /// Network destinations.
    #[serde(default)]
    pub connect: Vec<Spanned<String>>,
    /// Allow the system resolvers from /etc/resolv.conf on port 53.
    pub dns: Option<Spanned<bool>>,
    /// Binaries the agent may execute.
    #[serde(default)]
    pub exec: Vec<Spanned<String>>,
    /// Path prefixes the agent may open for reading.
    #[serde(default)]
    pub read: Vec<Spanned<String>>,
    /// Path prefixes the agent may open for writing.
    #[serde(default)]
    pub write: Vec<Spanned<String>>,
    /// Capabilities the agent keeps (weakens the guarantees).
    #[serde(default)]
    pub capabilities: Vec<Spanned<String>>,
    /// The user `agentguard run` starts the agent as; `"root"` is the only way to run an agent
    /// as uid 0. Absent: a dynamic per-instance uid.
    pub user: Option<Spanned<String>>,
    /// seccomp groups granted back (weakens the guarantees).
    #[serde(default)]
    pub allow_syscalls: Vec<Spanned<String>>,
    /// Budgets.
    pub throttle: Option<Spanned<RawThrottle>>,
    /// How many instances of the agent may run at once.
    pub max_instances: Option<Spanned<i64>>,
    /// Sub-agents by name.
    #[serde(default)]
    pub sub: BTreeMap<Spanned<String>, Spanned<RawAgent>>,
}

/// `[agents.NAME.throttle]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    /// Connects (and UDP sends) per interval, e.g. `"10/s"`.
    pub connect: Option<Spanned<String>>,
    /// Execs per interval, e.g. `"30/min"`.
    pub exec: Option<Spanned<String>>,
    /// File opens per interval.
    pub open: Option<Spanned<String>>,
    /// Bucket size as a multiple of the per-interval rate.
    pub burst: Option<Spanned<f64>>,
    /// `"process"` or `"agent"`.
    pub scope: Option<Spanned<Scope>>,
    /// `"deny"`, `"freeze"` or `"kill"`.
    pub on_exceed: Option<Spanned<OnExceedRaw>>,
    /// Instance-wide budgets checked in addition to the ones above (whatever their scope).
    pub agent: Option<Spanned<RawAgentThrottle>>,
}

/// `[agents.NAME.throttle.agent]`: instance-wide budgets, e.g. to cap a fork bomb whose
/// processes each have a fresh per-process budget.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentThrottle {
    /// Connects per interval for the whole instance.
    pub connect: Option<Spanned<String>>,
    /// Execs per interval for the whole instance.
    pub exec: Option<Spanned<String>>,
    /// Opens per interval for the whole instance.
    pub open: Option<Spanned<String>>,
}

/// Budget scope.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One bucket per process.
    #[default]
    Process,
    /// One bucket per agent instance.
    Agent,
}

/// What happens over budget.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExceedRaw {
    /// Refuse the action.
    #[default]
    Deny,
    /// Refuse it and freeze the instance.
    Freeze,
    /// Refuse it and kill the instance.
    Kill,
}
