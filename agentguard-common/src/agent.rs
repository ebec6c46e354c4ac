//! Agent identity and per-agent configuration as the programs see it.
//!
//! Identity is the cgroup: [`CgroupEntry`] maps an instance's cgroup id to its agent. Rules and
//! budgets are stored per policy *generation* ([`AgentKey::generation`]): a reload writes the
//! inactive generation in full, then flips [`GlobalState::active_generation`] in one word, so a
//! program sees either the whole old policy or the whole new one.

use core::mem::size_of;

/// The value stored in [`crate::maps::CGROUPS`] for an agent (or sub-agent) instance cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupEntry {
    /// Stable id of the agent, derived from its full name (`buyer`, `buyer/search`).
    pub agent_id: u32,
    /// `CGROUP_*` flags.
    pub flags: u32,
    /// cgroup id of the enclosing agent instance for a sub-agent instance, 0 for a top-level one.
    pub parent_cgroup_id: u64,
    /// cgroup id of the top-level instance this cgroup belongs to (itself for a top-level one):
    /// the boundary for ptrace and for agent-scoped budgets of sub-agents.
    pub root_instance_id: u64,
}
const _: () = assert!(size_of::<CgroupEntry>() == 24);

/// The process was adopted with `agentguard tag` and has no Landlock sandbox.
pub const CGROUP_TAGGED: u32 = 1;

/// Key of [`crate::maps::AGENT_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AgentKey {
    /// Policy generation (0 or 1).
    pub generation: u32,
    /// Agent id (see [`CgroupEntry::agent_id`]).
    pub agent_id: u32,
}
const _: () = assert!(size_of::<AgentKey>() == 8);

/// Audit mode: would-be denials are logged as `audit-denied` and allowed.
pub const AGENT_AUDIT: u32 = 1 << 0;
/// Allowed actions are sent to the log as events (denials always are).
pub const AGENT_LOG_ALLOWED: u32 = 1 << 1;
/// The agent has exec rules: any binary not listed is denied.
pub const AGENT_EXEC_RULES: u32 = 1 << 2;
/// The agent has read/write rules: any path not covered is denied.
pub const AGENT_FILE_RULES: u32 = 1 << 3;
/// An ancestor agent has exec rules: every binary must be allowed by each ancestor that has
/// them, even when this sub-agent lists no binaries of its own (a sub-agent never exceeds its
/// parent). Set by the compiler from the ancestors' flags.
pub const AGENT_EXEC_INHERITED: u32 = 1 << 5;
/// An ancestor agent has file rules: every path must be allowed by each ancestor that has them,
/// even when this sub-agent lists no paths of its own.
pub const AGENT_FILE_INHERITED: u32 = 1 << 6;

/// The policy grants the `bpf` syscall group back (`allow_syscalls`): the BPF LSM lets the
/// agent use `bpf(2)`, as the seccomp filter does.
pub const AGENT_ALLOW_BPF: u32 = 1 << 7;
/// The policy grants `raw_sockets`: `SOCK_RAW` IPv4/IPv6 and `AF_PACKET` sockets.
pub const AGENT_ALLOW_RAW_SOCKETS: u32 = 1 << 8;
/// The policy grants `ping_sockets`: ICMP/ICMPv6 datagram sockets.
pub const AGENT_ALLOW_PING_SOCKETS: u32 = 1 << 9;
/// The policy grants `other_sockets`: every other socket the network programs do not judge.
pub const AGENT_ALLOW_OTHER_SOCKETS: u32 = 1 << 10;

/// The agent's AF_UNIX connects and sends are judged against its own `unix:` entries: any
/// address not listed (other than agentguard's agent socket) is refused. agentguard sets it for
/// every agent (AF_UNIX is default deny); the kernel programs do not assume it.
pub const AGENT_UNIX_RULES: u32 = 1 << 11;
/// An ancestor agent judges AF_UNIX: every address must be allowed by each ancestor that does.
pub const AGENT_UNIX_INHERITED: u32 = 1 << 12;

/// Whether an agent with `flags` has its AF_UNIX connects and sends judged (its own rules or an
/// ancestor's).
pub const fn unix_restricted(flags: u32) -> bool {
    flags & (AGENT_UNIX_RULES | AGENT_UNIX_INHERITED) != 0
}

/// Whether an agent with `flags` is restricted in what it may execute (its own rules or an
/// ancestor's).
pub const fn exec_restricted(flags: u32) -> bool {
    flags & (AGENT_EXEC_RULES | AGENT_EXEC_INHERITED) != 0
}

/// Whether an agent with `flags` is restricted in which paths it may use (its own rules or an
/// ancestor's).
pub const fn files_restricted(flags: u32) -> bool {
    flags & (AGENT_FILE_RULES | AGENT_FILE_INHERITED) != 0
}

stable_enum! {
    /// Which action a budget counts. The name is the policy's (`throttle.connect`, ...).
    pub enum ThrottleKind: u8, from_u8 {
        /// TCP connects and UDP sends with a destination.
        Connect = 0 => "connect",
        /// Successful execs (every binary an agent runs).
        Exec = 1 => "exec",
        /// File opens.
        Open = 2 => "open",
    }
}

stable_enum! {
    /// Whose actions a budget counts. The name is the policy's (`throttle.agent`, `scope`).
    pub enum ThrottleScope: u8, from_u8 {
        /// One bucket per process (thread group).
        Process = 0 => "process",
        /// One bucket per agent instance, shared by all its processes.
        Agent = 1 => "agent",
    }
}

stable_enum! {
    /// What happens when a budget is exhausted. The name is the policy's (`on_exceed`).
    pub enum OnExceed: u8, from_u8 {
        /// Refuse the over-budget action.
        Deny = 0 => "deny",
        /// Refuse it and ask the daemon to freeze the instance.
        Freeze = 1 => "freeze",
        /// Refuse it and ask the daemon to kill the instance.
        Kill = 2 => "kill",
    }
}

/// A token bucket's parameters, expressed in nanoseconds of credit so the kernel never divides:
/// credit accrues one nanosecond per nanosecond up to `burst_ns`, and an action costs `cost_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throttle {
    /// Credit one action costs (interval / rate); 0 means no budget.
    pub cost_ns: u64,
    /// Bucket size in credit (cost * burst).
    pub burst_ns: u64,
    /// [`OnExceed`] as a number.
    pub on_exceed: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
}
const _: () = assert!(size_of::<Throttle>() == 24);

/// Number of budgets per agent: every [`ThrottleKind`] in every [`ThrottleScope`].
pub const THROTTLE_SLOTS: usize = 6;

/// Index of a budget in [`AgentConfig::throttles`].
pub const fn throttle_slot(kind: ThrottleKind, scope: ThrottleScope) -> usize {
    kind as usize * 2 + scope as usize
}

/// The value of [`crate::maps::AGENT_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// `AGENT_*` flags.
    pub flags: u32,
    /// Agent id of the parent agent for a sub-agent (whose rules are intersected), else 0.
    pub parent_agent_id: u32,
    /// Budgets, indexed by [`throttle_slot`].
    pub throttles: [Throttle; THROTTLE_SLOTS],
}
const _: () = assert!(size_of::<AgentConfig>() == 8 + 24 * THROTTLE_SLOTS);

/// Key of the budget maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// tgid (process scope) or instance cgroup id (agent scope).
    pub owner: u64,
    /// [`ThrottleKind`] as a number.
    pub kind: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<BucketKey>() == 16);

/// A token bucket's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Credit left, in nanoseconds.
    pub credit_ns: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<Bucket>() == 16);

/// One instance's event budget: a token bucket each for allowed-action events and for refusals,
/// and what the instance could not send beyond them. No instance can fill a ring buffer on its
/// own, so none can hide the others' actions from the log.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// Credit for events about allowed actions.
    pub allowed: Bucket,
    /// Credit for events about refusals.
    pub refusals: Bucket,
    /// Allowed-action events not sent for lack of credit, since the instance started.
    pub lost_allowed: u64,
    /// Refusal events not sent for lack of credit, since the instance started.
    pub lost_refusals: u64,
    /// `bpf_ktime_get_ns` of the newest unsent refusal that asked for an escalation.
    pub escalate_ns: u64,
    /// `EVENT_ESCALATE_*` flags of unsent refusals: the daemon acts on them all the same.
    pub escalate: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<EventBudget>() == 64);

/// Events about allowed actions an instance may send: 20,000 per second, in bursts of as many.
pub const EVENT_BUDGET_ALLOWED: Throttle = Throttle {
    cost_ns: 50_000,
    burst_ns: 1_000_000_000,
    on_exceed: 0,
    _pad: [0; 7],
};
/// Events about refusals an instance may send: 2,000 per second, in bursts of as many (a sixth
/// of [`crate::maps::ALERTS`]).
pub const EVENT_BUDGET_REFUSALS: Throttle = Throttle {
    cost_ns: 500_000,
    burst_ns: 1_000_000_000,
    on_exceed: 0,
    _pad: [0; 7],
};

/// Per-instance verdict counters (per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Actions allowed.
    pub allowed: u64,
    /// Actions denied (including throttled and killed).
    pub denied: u64,
    /// Actions denied by a budget.
    pub throttled: u64,
    /// Would-be denials let through by audit mode.
    pub audit_denied: u64,
}
const _: () = assert!(size_of::<Counters>() == 32);

/// The single value of [`crate::maps::STATE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalState {
    /// The generation programs read rules from (0 or 1).
    pub active_generation: u32,
    /// cgroup v2 level of the agentguard root cgroup (`<cgroup2>/agentguard`).
    pub root_level: u32,
    /// cgroup id of the agentguard root cgroup; 0 until the daemon has written it.
    pub root_cgroup_id: u64,
}
const _: () = assert!(size_of::<GlobalState>() == 16);
