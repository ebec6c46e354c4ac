//! The names the event pipeline needs (agents, instances, rules) as an immutable snapshot,
//! published with arc-swap whenever the state they come from changes, so the ingest thread
//! names events without taking the state lock (which a policy apply may hold for long).
//!
//! Publishing is driven by [`super::StateGuard`]: when a mutable borrow of the state ends, a
//! cheap fingerprint of what the names depend on is compared with the published one, and the
//! snapshot rebuilt only if it moved. Rule tables are shared between snapshots until the
//! compiled policy itself changes.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

use super::State;
use crate::{events::Names, policy::compile::RuleInfo};

/// What the snapshot was built from. Instances and exited instances are keyed by cgroup id,
/// which the kernel never reuses and which only grows: count plus first and last id change
/// whenever one is added or removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Fingerprint {
    policy: [u8; 32],
    rules: [Option<RulesKey>; 2],
    instances: (usize, Option<u64>, Option<u64>),
    exited: (usize, Option<u64>, Option<u64>),
}

/// Identifies one compiled rule table: its generation, where its rules live and how many.
/// A new policy replaces the `Compiled` (new allocation); the policy digest in the
/// [`Fingerprint`] covers the case where an allocation is reused.
type RulesKey = (u8, usize, usize);

impl Fingerprint {
    fn of(st: &State) -> Self {
        let span = |len: usize, first: Option<u64>, last: Option<u64>| (len, first, last);
        Self {
            policy: st.policy.digest,
            rules: st.compiled.each_ref().map(|c| {
                c.as_ref()
                    .map(|c| (c.generation, c.rules.as_ptr() as usize, c.rules.len()))
            }),
            instances: span(
                st.instances.len(),
                st.instances.keys().next().copied(),
                st.instances.keys().next_back().copied(),
            ),
            exited: span(
                st.exited.len(),
                st.exited.keys().next().copied(),
                st.exited.keys().next_back().copied(),
            ),
        }
    }
}

/// The names, frozen at one moment.
#[derive(Debug, Default)]
pub struct NameSnapshot {
    key: Fingerprint,
    instances: HashMap<u64, (Arc<str>, Arc<str>)>,
    agents: HashMap<u32, Arc<str>>,
    rules: [Option<Arc<[RuleInfo]>>; 2],
}

impl NameSnapshot {
    fn build(st: &State, key: Fingerprint, prev: &Self) -> Self {
        let mut instances = HashMap::with_capacity(st.instances.len() + st.exited.len());
        for (id, (agent, name)) in &st.exited {
            instances.insert(*id, (Arc::from(agent.as_str()), Arc::from(name.as_str())));
        }
        for (id, i) in &st.instances {
            instances.insert(
                *id,
                (Arc::from(i.agent.as_str()), Arc::from(i.name.as_str())),
            );
        }
        let agents = st
            .policy
            .agents
            .iter()
            .map(|a| (a.id, Arc::from(a.name.as_str())))
            .collect();
        let rules = std::array::from_fn(|g| {
            if key.rules[g] == prev.key.rules[g] && key.policy == prev.key.policy {
                prev.rules[g].clone()
            } else {
                st.compiled[g]
                    .as_ref()
                    .map(|c| Arc::from(c.rules.as_slice()))
            }
        });
        Self {
            key,
            instances,
            agents,
            rules,
        }
    }
}

impl Names for NameSnapshot {
    fn instance(&self, cgroup_id: u64) -> Option<(&str, &str)> {
        self.instances.get(&cgroup_id).map(|(a, i)| (&**a, &**i))
    }

    fn agent(&self, agent_id: u32) -> Option<&str> {
        self.agents.get(&agent_id).map(|a| &**a)
    }

    fn rule(&self, generation: u32, rule_id: u32) -> Option<&RuleInfo> {
        self.rules
            .get(usize::try_from(generation).ok()?)?
            .as_ref()?
            .get(usize::try_from(rule_id).ok()?)
    }
}

/// The published snapshot.
#[derive(Debug, Default)]
pub struct NameCell(ArcSwap<NameSnapshot>);

impl NameCell {
    /// The names now (a wait-free load; hold it for a batch, not forever).
    pub fn load(&self) -> arc_swap::Guard<Arc<NameSnapshot>> {
        self.0.load()
    }

    /// Publishes a new snapshot if `st` changed what names depend on. Called with the state
    /// locked, so snapshots are published in the order of the changes.
    pub fn refresh(&self, st: &State) {
        let key = Fingerprint::of(st);
        let prev = self.0.load();
        if prev.key == key {
            return;
        }
        let next = NameSnapshot::build(st, key, &prev);
        self.0.store(Arc::new(next));
    }
}
