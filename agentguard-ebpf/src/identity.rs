//! "Which agent is this?": the current task's cgroup, looked up in [`CGROUPS`].

use agentguard_common::{
    agent::{
        AGENT_EXEC_RULES, AGENT_FILE_RULES, AgentConfig, AgentKey, CgroupEntry, files_restricted,
    },
    event::EVENT_UNKNOWN_CGROUP,
    maps::MAX_CGROUP_WALK,
};
use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};

use crate::maps::{AGENT_CONFIG, CGROUPS, STATE};

/// An agent (or sub-agent) instance, as seen by a program.
pub struct Subject {
    /// cgroup id of the instance (the nearest known one when the task sits in a child cgroup).
    pub cgroup_id: u64,
    /// The instance's [`CGROUPS`] entry, kept rather than looked up again (agent, tree);
    /// `None` for a task in the agentguard subtree that belongs to no known instance. It
    /// takes the place of a copied agent id, so `Subject` is no larger for it: the 6.1
    /// verifier allows a program and its `bpf_loop` callback 512 bytes of stack together.
    entry: Option<&'static CgroupEntry>,
    /// The agent's configuration in that generation; `None` when the agent is unknown or has
    /// been removed from the policy, which [`Subject::flags`] turns into deny-everything.
    pub config: Option<&'static AgentConfig>,
    /// Policy generation every lookup of this program run uses.
    pub generation: u32,
    /// `EVENT_*` flags describing how the subject was identified.
    pub event_flags: u32,
}

impl Subject {
    /// `AGENT_*` flags; an agent without configuration is treated as having rules of every kind
    /// and none matching, so it is denied everything (fail closed).
    #[inline(always)]
    pub fn flags(&self) -> u32 {
        match self.config {
            Some(c) => c.flags,
            None => AGENT_EXEC_RULES | AGENT_FILE_RULES,
        }
    }

    /// Whether path operations are judged: the agent or one of its ancestors has file rules.
    #[inline(always)]
    pub fn files_restricted(&self) -> bool {
        files_restricted(self.flags())
    }

    /// Parent agent id of a sub-agent, else 0.
    #[inline(always)]
    pub fn parent_agent_id(&self) -> u32 {
        self.config.map_or(0, |c| c.parent_agent_id)
    }

    /// Agent id; 0 for a task in the agentguard subtree that belongs to no known instance.
    #[inline(always)]
    pub fn agent_id(&self) -> u32 {
        self.entry.map_or(0, |e| e.agent_id)
    }

    /// cgroup id of the top-level instance whose tree the instance belongs to (its own for a
    /// top-level one), 0 when the instance is unknown.
    #[inline(always)]
    pub fn root_instance_id(&self) -> u64 {
        self.entry.map_or(0, |e| e.root_instance_id)
    }
}

/// Looks up an agent's configuration in a generation.
#[inline(always)]
pub fn agent_config(generation: u32, agent_id: u32) -> Option<&'static AgentConfig> {
    let key = AgentKey {
        generation,
        agent_id,
    };
    // SAFETY: map values stay valid for the duration of the program run.
    unsafe { AGENT_CONFIG.get(key) }
}

/// Identifies the current task: `None` when it is not inside the agentguard cgroup subtree.
///
/// A task in a cgroup the daemon did not create (an agent with enough rights could `mkdir` a
/// child of its instance cgroup and move there) keeps the identity of the nearest instance above
/// it; a task in the subtree but under no instance at all is [`EVENT_UNKNOWN_CGROUP`] and is
/// denied everything.
#[inline(always)]
pub fn current() -> Option<Subject> {
    let state = STATE.get(0)?;
    let generation = state.active_generation;
    // Untagged tasks are nearly every task on the host: one ancestor read (a pointer walk in
    // the task's css_set) sends them away before any hash lookup. Instances always sit inside
    // the subtree, so nothing is lost by checking it first. Before the daemon recorded the
    // subtree (`root_cgroup_id == 0`, only between load and attach), the cgroup map decides.
    let root_level = state.root_level as i32;
    if state.root_cgroup_id != 0
        // SAFETY: helper without memory arguments.
        && unsafe { bpf_get_current_ancestor_cgroup_id(root_level) } != state.root_cgroup_id
    {
        return None;
    }
    // SAFETY: helper without memory arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: map values stay valid for the duration of the program run.
    if let Some(entry) = unsafe { CGROUPS.get(cgroup_id) } {
        return Some(Subject {
            cgroup_id,
            config: agent_config(generation, entry.agent_id),
            entry: Some(entry),
            generation,
            event_flags: 0,
        });
    }
    if state.root_cgroup_id == 0 {
        return None;
    }
    let mut depth = MAX_CGROUP_WALK as i32;
    while depth > 0 {
        // SAFETY: helper without memory arguments; returns 0 below the task's own level.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(root_level + depth) };
        if ancestor != 0 {
            // SAFETY: as above.
            if let Some(entry) = unsafe { CGROUPS.get(ancestor) } {
                return Some(Subject {
                    cgroup_id: ancestor,
                    config: agent_config(generation, entry.agent_id),
                    entry: Some(entry),
                    generation,
                    event_flags: 0,
                });
            }
        }
        depth -= 1;
    }
    Some(Subject {
        cgroup_id,
        entry: None,
        config: None,
        generation,
        event_flags: EVENT_UNKNOWN_CGROUP,
    })
}
