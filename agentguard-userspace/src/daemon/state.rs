//! The daemon's state: the policy in force, the kernel maps, the instances.

use std::{
    collections::{BTreeMap, HashSet},
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
    pub binaries: std::collections::HashMap<PathBuf, crate::sys::identity::FileIdentity>,
    /// Compiled rule tables per generation (events name rules of either).
    pub compiled: [Option<Compiled>; 2],
    /// Typed kernel maps.
    pub maps: KernelMaps,
    /// The cgroup subtree.
    pub hierarchy: Hierarchy,
    /// Live instances by cgroup id.
    pub instances: BTreeMap<u64, Instance>,
    /// Instances frozen or killed on a budget breach, so one breach acts once.
    pub escalated: HashSet<u64>,
    /// Names of recently exited instances: their last events may still be in the ring buffer.
    /// cgroup ids are never reused, so a stale entry cannot misname a new instance.
    pub exited: BTreeMap<u64, (String, String)>,
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
        self.escalated.remove(&cgroup_id);
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

impl Names for State {
    fn instance(&self, cgroup_id: u64) -> Option<(String, String)> {
        self.instances
            .get(&cgroup_id)
            .map(|i| (i.agent.clone(), i.name.clone()))
            .or_else(|| self.exited.get(&cgroup_id).cloned())
    }

    fn agent(&self, agent_id: u32) -> Option<String> {
        self.policy.agent_by_id(agent_id).map(|a| a.name.clone())
    }

    fn rule(&self, generation: u32, rule_id: u32) -> Option<&RuleInfo> {
        self.compiled
            .get(usize::try_from(generation).ok()?)?
            .as_ref()?
            .rule(rule_id)
    }
}
