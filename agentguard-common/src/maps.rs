//! Map names and capacities, shared so the loader and the programs can never disagree.
//!
//! Names are at most 15 bytes: the kernel keeps 16 including the terminating NUL.

/// `u64` cgroup id -> [`crate::agent::CgroupEntry`]: which agent instance a cgroup is.
pub const CGROUPS: &str = "AG_CGROUPS";
/// [`crate::agent::AgentKey`] -> [`crate::agent::AgentConfig`]: per generation, per agent.
pub const AGENT_CONFIG: &str = "AG_AGENT_CFG";
/// LPM trie of [`crate::rules::NetKey`] -> [`crate::rules::RuleRef`].
pub const NET_RULES: &str = "AG_NET_RULES";
/// [`crate::rules::ExecKey`] -> [`crate::rules::RuleRef`].
pub const EXEC_RULES: &str = "AG_EXEC_RULES";
/// LPM trie of [`crate::rules::PathKey`] -> [`crate::rules::RuleRef`].
pub const PATH_RULES: &str = "AG_PATH_RULES";
/// Array with one [`crate::agent::GlobalState`].
pub const STATE: &str = "AG_STATE";
/// Ring buffer of events (see [`crate::event`]).
pub const EVENTS: &str = "AG_EVENTS";
/// Ring buffer of refusals and escalations only (see [`crate::event`]): allowed actions never
/// use it, so however many of them an agent causes, they cannot crowd out a refusal.
pub const ALERTS: &str = "AG_ALERTS";
/// Per-CPU array of `u64`, [`LOST_SLOTS`] of them: events dropped because their ring buffer was
/// full, per ring ([`LOST_EVENTS`], [`LOST_ALERTS`]).
pub const LOST: &str = "AG_LOST";
/// `u64` instance cgroup id -> [`crate::agent::EventBudget`]: how many events each instance may
/// still send, and how many it could not.
pub const EVENT_BUDGETS: &str = "AG_EVT_BUDGET";
/// LRU hash [`crate::agent::BucketKey`] -> [`crate::agent::Bucket`] for per-process budgets.
pub const PROC_BUCKETS: &str = "AG_PROC_BKT";
/// Hash [`crate::agent::BucketKey`] -> [`crate::agent::Bucket`] for per-instance budgets.
pub const AGENT_BUCKETS: &str = "AG_AGENT_BKT";
/// Per-CPU hash `u64` cgroup id -> [`crate::agent::Counters`].
pub const COUNTERS: &str = "AG_COUNTERS";

/// Every map the programs declare, in one list (for pinning and teardown).
pub const ALL: &[&str] = &[
    CGROUPS,
    AGENT_CONFIG,
    NET_RULES,
    EXEC_RULES,
    PATH_RULES,
    STATE,
    EVENTS,
    ALERTS,
    LOST,
    EVENT_BUDGETS,
    PROC_BUCKETS,
    AGENT_BUCKETS,
    COUNTERS,
];

/// Capacity of [`CGROUPS`]: live agent instances and sub-agent instances on one host.
pub const MAX_CGROUPS: u32 = 16_384;
/// Capacity of [`AGENT_CONFIG`]: agents and sub-agents, times two generations.
pub const MAX_AGENT_CONFIGS: u32 = 2 * 4_096;
/// Capacity of [`NET_RULES`]: network rules over all agents, times two generations.
pub const MAX_NET_RULES: u32 = 2 * 32_768;
/// Capacity of [`EXEC_RULES`]: binaries over all agents, times two generations.
pub const MAX_EXEC_RULES: u32 = 2 * 16_384;
/// Capacity of [`PATH_RULES`]: path prefixes over all agents, times two generations.
pub const MAX_PATH_RULES: u32 = 2 * 32_768;
/// Size of [`EVENTS`] in bytes (a power of two multiple of the page size).
pub const EVENTS_BYTES: u32 = 16 * 1024 * 1024;
/// Size of [`ALERTS`] in bytes: about 12,000 of the largest refusal events.
pub const ALERTS_BYTES: u32 = 4 * 1024 * 1024;
/// Entries of [`LOST`].
pub const LOST_SLOTS: u32 = 2;
/// Slot of [`LOST`] counting allowed-action events lost on a full [`EVENTS`].
pub const LOST_EVENTS: u32 = 0;
/// Slot of [`LOST`] counting refusals lost with both [`ALERTS`] and [`EVENTS`] full.
pub const LOST_ALERTS: u32 = 1;
/// Capacity of [`PROC_BUCKETS`] (LRU: the least recently used process budget is evicted).
pub const MAX_PROC_BUCKETS: u32 = 65_536;
/// Capacity of [`AGENT_BUCKETS`].
pub const MAX_AGENT_BUCKETS: u32 = 16_384;
/// Capacity of [`COUNTERS`].
pub const MAX_COUNTERS: u32 = 16_384;

/// Deepest sub-agent nesting the programs follow when intersecting with parent rules.
pub const MAX_AGENT_DEPTH: usize = 4;
/// How many cgroup levels below an unknown cgroup the programs search for its agent instance.
pub const MAX_CGROUP_WALK: usize = 8;
