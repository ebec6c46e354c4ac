//! What the log records: one [`Record`] per action or daemon event.
//!
//! The variants of [`Body`], [`Actor`] and [`Target`] have stable numeric ids ([`Body::kind_id`]
//! for records): records are encoded with serde (postcard: an enum is written as its variant
//! index), so variants may only ever be appended, never reordered or removed.
//! docs/log-format.md lists them.

use std::net::IpAddr;

use agentguard_common::{
    event::{EventKind, FileOp},
    verdict::{Backend, ToolVerdict, Verdict},
};
use serde::{Deserialize, Serialize};

/// One log record, before chaining (the chain adds `prev` and `hash` around its encoding).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Sequence number, from 0, without gaps across segments.
    pub seq: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub wall_ns: u64,
    /// CLOCK_MONOTONIC in nanoseconds (the kernel's `bpf_ktime_get_ns` for actions).
    pub mono_ns: u64,
    /// What happened.
    pub body: Body,
}

/// Who asked for an operator action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// A control-socket peer.
    Peer {
        /// Peer uid.
        uid: u32,
        /// Peer pid.
        pid: u32,
        /// Peer's executable (`/proc/PID/exe`), when readable.
        exe: Option<String>,
    },
    /// The daemon itself (start-up, SIGHUP, a budget's escalation).
    Daemon {
        /// Why.
        reason: String,
    },
    /// An agent process asking through the agent socket.
    Agent {
        /// Agent instance.
        instance: String,
        /// Peer pid.
        pid: u32,
    },
}

/// What happened. Append-only: the variant index is the stable record kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// An agent's action and its verdict (kind 0).
    Action(Action),
    /// The daemon started (kind 1).
    DaemonStart {
        /// agentguard version.
        version: String,
        /// Daemon pid.
        pid: u32,
        /// Kernel release.
        kernel: String,
        /// Backend per domain, e.g. `network=cgroup-sock-addr exec=tp-btf file=landlock`.
        backends: String,
        /// Whether pinned programs were re-adopted (a restart).
        adopted: bool,
    },
    /// The daemon stopped cleanly (kind 2).
    DaemonStop {
        /// Why.
        reason: String,
        /// Whether enforcement stays in place.
        enforcement_kept: bool,
    },
    /// A policy was applied (kind 3).
    PolicyApplied {
        /// blake3 of the policy file, hex.
        digest: String,
        /// The file.
        origin: String,
        /// Who applied it.
        by: Actor,
        /// Generation it was written to.
        generation: u8,
        /// Number of agents and sub-agents.
        agents: u32,
        /// Number of compiled rules.
        rules: u32,
    },
    /// An agent instance started (kind 4).
    InstanceStart {
        /// Full agent name.
        agent: String,
        /// Instance path (`buyer/3`, `buyer/3/search/1`).
        instance: String,
        /// Instance cgroup id.
        cgroup_id: u64,
        /// First process.
        pid: u32,
        /// `run` or `tag`.
        how: String,
        /// Who started it.
        by: Actor,
        /// File-rule enforcement for it (e.g. `bpf-lsm`, `landlock`, `none: tagged`).
        files: String,
    },
    /// An agent instance has no process left (kind 5).
    InstanceExit {
        /// Full agent name.
        agent: String,
        /// Instance path.
        instance: String,
        /// Instance cgroup id.
        cgroup_id: u64,
    },
    /// Instances were frozen (kind 6).
    Freeze(OperatorAction),
    /// Instances were thawed (kind 7).
    Thaw(OperatorAction),
    /// Instances were killed (kind 8).
    Kill(OperatorAction),
    /// Kernel events were dropped before reaching the log (kind 9).
    Lost {
        /// Events dropped since the previous `Lost` record.
        dropped: u64,
        /// The kernel's cumulative drop counter.
        total: u64,
    },
    /// Start-up found and cut a torn tail (kind 10).
    Recovered {
        /// Segment that was cut.
        segment: String,
        /// Bytes cut.
        cut_bytes: u64,
        /// Sequence number of the last intact record.
        last_seq: Option<u64>,
        /// What was wrong with the cut bytes.
        reason: String,
    },
    /// A forward-secure seal over the chain head (kind 11).
    Seal {
        /// Key epoch (0 for the seed's first key).
        epoch: u64,
        /// Keyed blake3 MAC over the previous record's hash with this epoch's key, hex.
        mac: String,
    },
    /// Kernel events that never reached the ring buffers, other than those [`Body::Lost`]
    /// counts (kind 12): an instance's events beyond its event budget, or refusals lost with
    /// both ring buffers full.
    LostEvents {
        /// `instance-budget`, `refusal-ring`, `landlock-budget` (Landlock refusal records over
        /// an instance's budget), `audit-kernel` or `audit-socket` (audit records the kernel or
        /// the daemon's socket dropped), `log-backlog` (records the log refused while too much
        /// waited for the disk: `allowed` counts allowed actions, `refusals` every other
        /// record).
        source: String,
        /// Full agent name, for an instance budget.
        agent: String,
        /// Instance path, for an instance budget.
        instance: String,
        /// Instance cgroup id (0 for the ring).
        cgroup_id: u64,
        /// Events about allowed actions not sent since the previous such record.
        allowed: u64,
        /// Events about refusals not sent since the previous such record.
        refusals: u64,
    },
    /// One request to the tool gateway (kind 13).
    ToolCall(ToolCall),
    /// Old segments were removed by retention (kind 14). Written, and made durable, before the
    /// files are removed: it names the head the kept log chains from, so that `verify` can
    /// check the log from its first kept record and explain the missing start.
    Pruned {
        /// Sequence number of the first record kept.
        first_kept_seq: u64,
        /// Hash of the last record removed (the `prev` of the first kept record), hex.
        pruned_head: String,
        /// Sequence number of the first record removed.
        removed_from_seq: u64,
        /// Segment files removed.
        segments: u64,
        /// Bytes removed.
        bytes: u64,
        /// The retention rule (`keep-days 30`, `keep-bytes 1073741824`).
        rule: String,
        /// Who pruned.
        by: Actor,
    },
    /// A credential checked out, returned, revoked or refused over the agent socket
    /// (`agentguard credential`, kind 15). Never holds the value.
    Credential(CredentialUse),
    /// A daemon of another eBPF build took over the pinned enforcement (kind 16), attaching
    /// its programs before the previous build's were removed. `kept_state` says whether the
    /// maps (instances, budgets, counters) carried over; where they could not, `reason` says
    /// why and the new build started from fresh maps.
    Handover {
        /// The previous build's pin directory name (its object digest, or its state version).
        previous: String,
        /// This daemon's object digest.
        build: String,
        /// Whether the pinned maps were taken over.
        kept_state: bool,
        /// Why they were not (empty when they were).
        reason: String,
    },
    /// One request to an MCP tool through the gateway (kind 17): a [`Body::ToolCall`] with the
    /// JSON-RPC calls it carried. (A record kind of its own: kind 13's layout is fixed, so that
    /// logs written before MCP rules existed still decode.)
    McpCall {
        /// The request, as for any tool.
        call: ToolCall,
        /// The JSON-RPC calls of the request (`tools/call:NAME`, other methods by name,
        /// comma-separated); when refused, the calls that were refused.
        mcp: String,
    },
    /// A Vault dynamic credential issued for one agentguard lease, or revoked at Vault when
    /// the lease ended (kind 18). Never holds the value.
    VaultLease(VaultLease),
}

impl Body {
    /// The stable numeric kind of this record.
    pub fn kind_id(&self) -> u16 {
        match self {
            Self::Action(_) => 0,
            Self::DaemonStart { .. } => 1,
            Self::DaemonStop { .. } => 2,
            Self::PolicyApplied { .. } => 3,
            Self::InstanceStart { .. } => 4,
            Self::InstanceExit { .. } => 5,
            Self::Freeze(_) => 6,
            Self::Thaw(_) => 7,
            Self::Kill(_) => 8,
            Self::Lost { .. } => 9,
            Self::Recovered { .. } => 10,
            Self::Seal { .. } => 11,
            Self::LostEvents { .. } => 12,
            Self::ToolCall(_) => 13,
            Self::Pruned { .. } => 14,
            Self::Credential(_) => 15,
            Self::Handover { .. } => 16,
            Self::McpCall { .. } => 17,
            Self::VaultLease(_) => 18,
        }
    }
}

/// A request to the tool gateway and what became of it. Never holds a secret's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Full agent name, empty for a caller that is no agent.
    pub agent: String,
    /// Instance path, empty for a caller that is no agent.
    pub instance: String,
    /// The caller's socket's cgroup id (0 when the kernel reported none).
    pub cgroup_id: u64,
    /// Tool name, empty when the request named none.
    pub tool: String,
    /// HTTP method.
    pub method: String,
    /// Path below the tool (without the query, which may carry data).
    pub path: String,
    /// HTTP status returned to the agent.
    pub status: u16,
    /// Request body bytes forwarded.
    pub bytes_in: u64,
    /// Response body bytes returned.
    pub bytes_out: u64,
    /// Microseconds from the request's arrival to the end of its response.
    pub duration_us: u64,
    /// The credential lease used, empty when none was.
    pub lease: String,
    /// Verdict number ([`ToolVerdict`] as u8).
    pub verdict: u8,
}

impl ToolCall {
    /// The verdict, decoded.
    pub fn verdict(&self) -> Option<ToolVerdict> {
        ToolVerdict::from_u8(self.verdict)
    }
}

/// What happened to a checked-out credential. Never holds the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialUse {
    /// Full agent name.
    pub agent: String,
    /// Instance path.
    pub instance: String,
    /// The instance's cgroup id.
    pub cgroup_id: u64,
    /// The asking process (0 for a revocation by the daemon).
    pub pid: u32,
    /// The secret's name.
    pub name: String,
    /// `checkout`, `return`, `revoke` or `refused`.
    pub action: String,
    /// The lease id, empty for a refusal.
    pub lease: String,
    /// Seconds the lease has left (checkout), 0 otherwise.
    pub ttl_s: u64,
    /// Why (a refusal's reason, a revocation's cause), empty otherwise.
    pub reason: String,
}

/// What happened to a Vault dynamic credential. Never holds the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultLease {
    /// Full agent name.
    pub agent: String,
    /// Instance path.
    pub instance: String,
    /// The instance's cgroup id.
    pub cgroup_id: u64,
    /// The secret's name.
    pub name: String,
    /// `issued`, `revoked` or `revoke-failed`.
    pub action: String,
    /// Our lease's id (the one `tool-call` and `credential` records name).
    pub lease: String,
    /// Vault's lease id: names the lease at Vault (and in Vault's audit log), grants nothing.
    pub vault_lease: String,
    /// Seconds our lease runs (issued: the shorter of the policy's TTL and Vault's
    /// `lease_duration`), 0 otherwise.
    pub ttl_s: u64,
    /// Why the lease ended (`expired`, `return`, `freeze`, `kill`, `instance ended`, `unused`,
    /// `shutdown`), empty when issued.
    pub reason: String,
    /// Vault's refusal or the failure, for `revoke-failed`; empty otherwise.
    pub error: String,
}

/// A freeze, thaw or kill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAction {
    /// What was asked for (`buyer`, `buyer/3`, `--all`).
    pub target: String,
    /// Instances affected.
    pub instances: Vec<String>,
    /// Who asked (an operator, or the daemon on a budget breach).
    pub by: Actor,
    /// The budget that was exceeded, for an escalation.
    pub budget: Option<String>,
    /// Milliseconds from request until the kernel reported it done.
    pub took_ms: u64,
    /// Whether it completed (false: timed out; `error` says what is left).
    pub ok: bool,
    /// What went wrong.
    pub error: Option<String>,
}

/// An action judged in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Stable kind number ([`EventKind`] as u16).
    pub kind: u16,
    /// Verdict number ([`Verdict`] as u8).
    pub verdict: u8,
    /// Backend number ([`Backend`] as u8).
    pub backend: u8,
    /// Full agent name (`buyer`, `buyer/search`), empty when unknown.
    pub agent: String,
    /// Instance path, empty when unknown.
    pub instance: String,
    /// Instance cgroup id.
    pub cgroup_id: u64,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real uid.
    pub uid: u32,
    /// Task comm.
    pub comm: String,
    /// What the action was aimed at.
    pub target: Target,
    /// The rule that matched, when one did.
    pub rule: Option<String>,
    /// `EVENT_*` flags from the kernel.
    pub flags: u32,
    /// Policy generation used.
    pub generation: u32,
}

impl Action {
    /// The kind, decoded.
    pub fn event_kind(&self) -> Option<EventKind> {
        EventKind::from_u16(self.kind)
    }

    /// The verdict, decoded.
    pub fn verdict(&self) -> Option<Verdict> {
        Verdict::from_u8(self.verdict)
    }

    /// The backend, decoded.
    pub fn backend(&self) -> Option<Backend> {
        Backend::from_u8(self.backend)
    }
}

/// What an action was aimed at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A network destination.
    Net {
        /// Address (IPv4-mapped addresses shown as IPv4).
        addr: IpAddr,
        /// Port.
        port: u16,
        /// IP protocol number.
        protocol: u8,
        /// DNS name the allowing rule came from.
        name: Option<String>,
    },
    /// A binary.
    Exec {
        /// File name as passed to exec.
        path: String,
        /// Kernel `s_dev`.
        dev: u64,
        /// Inode.
        ino: u64,
    },
    /// A file or privileged operation.
    File {
        /// Operation number ([`FileOp`] as u16).
        op: u16,
        /// `ACCESS_*` bits.
        access: u8,
        /// Path (empty for privileged operations without one).
        path: String,
        /// Target pid for ptrace.
        target_pid: Option<u32>,
    },
}

impl Target {
    /// The file operation, decoded.
    pub fn file_op(&self) -> Option<FileOp> {
        match self {
            Self::File { op, .. } => FileOp::from_u16(*op),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Record layouts are append-only: a log written by an older build must decode. A kind-13
    /// record's bytes, as builds before MCP rules wrote them, decode to the same `ToolCall`.
    #[test]
    fn a_tool_call_keeps_its_layout() {
        let call = Body::ToolCall(ToolCall {
            agent: "a".into(),
            instance: "a/1".into(),
            cgroup_id: 9,
            tool: "t".into(),
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            bytes_in: 1,
            bytes_out: 2,
            duration_us: 3,
            lease: String::new(),
            verdict: 1,
        });
        let written_before: &[u8] = &[
            13, // the variant: kind 13
            1, b'a', 3, b'a', b'/', b'1', 9, 1, b't', 3, b'G', b'E', b'T', 1, b'/', //
            0xc8, 0x01, // status 200 (varint)
            1, 2, 3, 0, 1,
        ];
        assert_eq!(
            postcard::from_bytes::<Body>(written_before).ok(),
            Some(call.clone())
        );
        assert_eq!(
            postcard::to_allocvec(&call).ok().as_deref(),
            Some(written_before)
        );
    }
}
