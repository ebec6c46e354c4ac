//! The daemon's state: the policy in force, the kernel maps, the instances.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use agentguard_common::agent::{CGROUP_TAGGED, CgroupEntry};

use crate::{
    cgroup::{Hierarchy, Instance},
    ebpf::maps::KernelMaps,
    events::Names,
    policy::{
        Policy,
        compile::{Compiled, RuleInfo},
    },
};

/// Everything the control handlers and the event ingestion share.
pub struct State {
    /// The policy in force.
    pub policy: Policy,
    /// The daemon's policy file (re-read on SIGHUP).
    pub policy_path: PathBuf,
    /// Identities the exec rules of the policy in force were compiled with.
    pub binaries: HashMap<PathBuf, crate::sys::identity::FileIdentity>,
    /// Compiled rule tables per generation (events name rules of either).
    pub compiled: [Option<std::sync::Arc<Compiled>>; 2],
    /// Typed kernel maps.
    pub maps: KernelMaps,
    /// The cgroup subtree.
    pub hierarchy: Hierarchy,
    /// Live instances by cgroup id.
    pub instances: BTreeMap<u64, Instance>,
    /// What was done about each instance's budget breaches, so one breach acts once.
    pub breaches: HashMap<u64, Breach>,
    /// Names of recently exited instances: their last events may still be in the ring buffer.
    /// cgroup ids are never reused, so a stale entry cannot misname a new instance.
    pub exited: BTreeMap<u64, (String, String)>,
    /// Dynamic uids handed to live instances, by cgroup id.
    pub dynamic_uids: HashMap<u64, u32>,
    /// Dynamic uids of recently exited instances, to the cgroup id they had: a Landlock
    /// refusal's audit records may arrive after its instance ended.
    pub exited_uids: BTreeMap<u32, u64>,
    /// The first process of each instance (the `run` launcher that became the agent), to its
    /// cgroup id; it created the instance's Landlock domain. Kept after exit, newest wins.
    pub first_pids: HashMap<u32, u64>,
    /// Insertion order of `first_pids`, to bound it.
    pub first_pid_order: std::collections::VecDeque<u32>,
    /// Events the kernel did not send that are already in the log.
    pub gaps: Gaps,
}

/// What the log already says about events the kernel did not send (beyond [`Body::Lost`]).
///
/// [`Body::Lost`]: crate::audit::record::Body::Lost
#[derive(Debug, Default)]
pub struct Gaps {
    /// Refusals lost with both ring buffers full, as logged so far.
    pub refusal_ring: u64,
    /// Per instance cgroup id: (allowed, refusals) events over its budget, as logged so far.
    pub instances: HashMap<u64, (u64, u64)>,
}

/// The daemon's answer to an instance's budget breaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breach {
    /// Frozen or killed: later breach events (already in flight) change nothing.
    Escalated,
    /// Thawed by an operator at this CLOCK_MONOTONIC time: only breaches after it escalate
    /// again, not the ones the kernel reported before the thaw.
    ThawedAt(u64),
}

impl Breach {
    /// Whether a breach the kernel reported at `ktime_ns` calls for action.
    pub fn acts_on(state: Option<&Self>, ktime_ns: u64) -> bool {
        match state {
            None => true,
            Some(Self::Escalated) => false,
            Some(Self::ThawedAt(t)) => ktime_ns > *t,
        }
    }
}

/// How many exited instances stay nameable.
const EXITED_KEPT: usize = 4096;

impl State {
    /// Registers an instance with the kernel (before any process enters it).
    pub fn register(
        &mut self,
        instance: &Instance,
        tagged: bool,
    ) -> Result<(), crate::ebpf::maps::MapsError> {
        let entry = CgroupEntry {
            agent_id: crate::policy::agent_id(&instance.agent),
            flags: if tagged { CGROUP_TAGGED } else { 0 },
            parent_cgroup_id: instance.parent.unwrap_or(0),
            root_instance_id: instance.root_instance,
        };
        self.maps.add_instance(instance.id, entry)?;
        self.instances.insert(instance.id, instance.clone());
        Ok(())
    }

    /// Forgets an instance (its cgroup is gone or going).
    pub fn unregister(&mut self, cgroup_id: u64) -> Option<Instance> {
        if let Err(e) = self.maps.remove_instance(cgroup_id) {
            tracing::warn!(cgroup_id, error = %e, "cannot remove instance from the kernel map");
        }
        self.breaches.remove(&cgroup_id);
        if let Some(uid) = self.dynamic_uids.remove(&cgroup_id) {
            self.exited_uids.insert(uid, cgroup_id);
            while self.exited_uids.len() > EXITED_KEPT {
                self.exited_uids.pop_first();
            }
        }
        let gone = self.instances.remove(&cgroup_id)?;
        self.exited
            .insert(cgroup_id, (gone.agent.clone(), gone.name.clone()));
        while self.exited.len() > EXITED_KEPT {
            self.exited.pop_first();
        }
        Some(gone)
    }

    /// The newest instance of an agent.
    pub fn newest_instance(&self, agent: &str) -> Option<&Instance> {
        self.instances
            .values()
            .filter(|i| i.agent == agent)
            // kernfs ids grow monotonically: the largest id is the newest cgroup.
            .max_by_key(|i| i.id)
    }
}

impl State {
    /// Remembers the first process of an instance.
    pub fn note_first_pid(&mut self, pid: u32, cgroup_id: u64) {
        if self.first_pids.insert(pid, cgroup_id).is_none() {
            self.first_pid_order.push_back(pid);
        }
        while self.first_pid_order.len() > EXITED_KEPT {
            if let Some(old) = self.first_pid_order.pop_front() {
                self.first_pids.remove(&old);
            }
        }
    }

    /// The instance (agent, instance path, cgroup id) a dynamic uid belongs to: a live one
    /// first, else the one that last had it.
    pub fn by_dynamic_uid(&self, uid: u32) -> Option<(String, String, u64)> {
        let id = self
            .dynamic_uids
            .iter()
            .find(|(_, u)| **u == uid)
            .map(|(id, _)| *id)
            .or_else(|| self.exited_uids.get(&uid).copied())?;
        let (agent, instance) = self.instance(id)?;
        Some((agent.to_owned(), instance.to_owned(), id))
    }
}

impl Names for State {
    fn instance(&self, cgroup_id: u64) -> Option<(&str, &str)> {
        self.instances
            .get(&cgroup_id)
            .map(|i| (i.agent.as_str(), i.name.as_str()))
            .or_else(|| {
                self.exited
                    .get(&cgroup_id)
                    .map(|(a, i)| (a.as_str(), i.as_str()))
            })
    }

    fn agent(&self, agent_id: u32) -> Option<&str> {
        self.policy.agent_by_id(agent_id).map(|a| a.name.as_str())
    }

    fn rule(&self, generation: u32, rule_id: u32) -> Option<&RuleInfo> {
        self.compiled
            .get(usize::try_from(generation).ok()?)?
            .as_ref()?
            .rule(rule_id)
    }
}

#[cfg(test)]
mod tests {
    use super::Breach;

    #[test]
    fn breaches_escalate_once_and_again_only_after_a_thaw() {
        assert!(Breach::acts_on(None, 5));
        assert!(!Breach::acts_on(Some(&Breach::Escalated), 5));
        // Breach events from before the thaw were still in flight: they must not re-freeze.
        assert!(!Breach::acts_on(Some(&Breach::ThawedAt(10)), 9));
        assert!(Breach::acts_on(Some(&Breach::ThawedAt(10)), 11));
    }
}
