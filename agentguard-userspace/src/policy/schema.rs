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
    /// Tools served by the gateway, by name.
    #[serde(default)]
    pub tools: BTreeMap<Spanned<String>, Spanned<RawTool>>,
}

/// `[tools.NAME]`: an upstream HTTP API the gateway forwards to, with its credential and rules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    /// Upstream base URL (`http://` or `https://`).
    pub url: Option<Spanned<String>>,
    /// Name of the secret injected into every forwarded request.
    pub credential: Option<Spanned<String>>,
    /// How: `header:NAME: TEMPLATE` or `query:PARAM=TEMPLATE`, TEMPLATE containing `{secret}`.
    pub inject: Option<Spanned<String>>,
    /// Allowed methods (default GET and HEAD).
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Allowed path prefixes (at least one).
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    /// Requests per interval per instance, e.g. `"10/min"`.
    pub rate: Option<Spanned<String>>,
    /// Largest request body, e.g. `"64KiB"` (default 1MiB).
    pub max_body: Option<Spanned<String>>,
    /// How long a credential lease lasts before the next request takes a new one (default 15min).
    pub lease_ttl: Option<Spanned<String>>,
    /// `"http"` (default) or `"mcp"`: JSON-RPC 2.0 over Streamable HTTP, judged per call.
    pub protocol: Option<Spanned<String>>,
    /// MCP: JSON-RPC methods allowed (default: the lifecycle, `ping`, `tools/list`, `tools/call`).
    #[serde(default)]
    pub mcp_methods: Vec<Spanned<String>>,
    /// MCP: tool names `tools/call` may name (none: no `tools/call` at all), each with an
    /// optional budget of its own.
    #[serde(default)]
    pub mcp_tools: Vec<Spanned<RawMcpTool>>,
}

/// An `mcp_tools` entry: `"search"`, or `{ name = "search", rate = "10/min" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMcpTool {
    /// `"search"`: allowed, no budget of its own.
    Name(String),
    /// `{ name = "search", rate = "10/min" }`.
    WithRate(RawMcpToolEntry),
}

/// `{ name = "search", rate = "10/min" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpToolEntry {
    /// The MCP tool name.
    pub name: String,
    /// `tools/call`s of it per interval per instance.
    pub rate: Option<String>,
}

impl RawMcpTool {
    /// The MCP tool name.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(n) | Self::WithRate(RawMcpToolEntry { name: n, .. }) => n,
        }
    }

    /// The budget as written, if any.
    pub fn rate(&self) -> Option<&str> {
        match self {
            Self::Name(_) => None,
            Self::WithRate(e) => e.rate.as_deref(),
        }
    }
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
    /// Presets (`"@python"`, or `{ name = "@python", venv = "/path" }`) whose exec and read
    /// entries the agent gets.
    #[serde(default)]
    pub presets: Vec<Spanned<RawPreset>>,
    /// A private temp directory per instance, exported as `TMPDIR` (default true; a sub-agent
    /// defaults to its parent's choice and shares its instance's directory).
    pub private_tmp: Option<Spanned<bool>>,
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
    /// Tools (`[tools.NAME]`) the agent may call through the gateway.
    #[serde(default)]
    pub tools: Vec<Spanned<String>>,
    /// Secrets the agent may check out itself (`agentguard credential checkout NAME`), for
    /// tools the gateway cannot front.
    #[serde(default)]
    pub credentials: Vec<Spanned<String>>,
    /// How long a checked-out credential's lease lasts (default 15min; a sub-agent's at most
    /// its parent's).
    pub credential_ttl: Option<Spanned<String>>,
    /// Sub-agents by name.
    #[serde(default)]
    pub sub: BTreeMap<Spanned<String>, Spanned<RawAgent>>,
}

/// A preset reference: its name, or a table with its name and options.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPreset {
    /// `"@git"`.
    Name(String),
    /// `{ name = "@python", venv = "/srv/app/.venv" }`.
    WithOptions {
        /// The preset.
        name: String,
        /// Its options.
        #[serde(flatten)]
        options: BTreeMap<String, String>,
    },
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
