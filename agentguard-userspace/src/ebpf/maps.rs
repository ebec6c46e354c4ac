//! The maps, typed, and the only code that writes them: the last stage of the policy pipeline.
//!
//! A policy is applied as a new generation: every entry of the inactive generation is written
//! first; then [`GlobalState::active_generation`] flips in one word, so each program run sees
//! the old rules or the new ones, never a mix; after a grace period (programs run for
//! microseconds), the old generation's entries are removed. If writing fails half-way, the
//! partial new generation is removed and the old one stays in force.

use std::{thread, time::Duration};

use agentguard_common::{
    agent::{
        AgentConfig, AgentKey, Bucket, BucketKey, CgroupEntry, Counters, EventBudget, GlobalState,
        Throttle, ThrottleKind,
    },
    maps as names,
    rules::{ExecKey, NetKey, PathKey, RuleRef},
};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::Key,
    },
};

use crate::policy::compile::Compiled;

/// How long the old generation is kept after the flip.
pub const GRACE: Duration = Duration::from_millis(100);

/// Errors reading or writing maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// A map is missing from the object.
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map.
        map: &'static str,
        /// The error.
        #[source]
        source: MapError,
    },
}

fn err(map: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}

/// Typed handles on every map userspace touches.
pub struct KernelMaps {
    cgroups: HashMap<MapData, u64, CgroupEntry>,
    agents: HashMap<MapData, AgentKey, AgentConfig>,
    net: LpmTrie<MapData, NetKey, RuleRef>,
    exec: HashMap<MapData, ExecKey, RuleRef>,
    paths: LpmTrie<MapData, PathKey, RuleRef>,
    state: Array<MapData, GlobalState>,
    lost: PerCpuArray<MapData, u64>,
    counters: PerCpuHashMap<MapData, u64, Counters>,
    agent_buckets: HashMap<MapData, BucketKey, Bucket>,
    event_budgets: HashMap<MapData, u64, EventBudget>,
}

/// The two event ring buffers.
pub struct Rings {
    /// Every event about an allowed action, and refusals when [`Rings::alerts`] is full.
    pub events: RingBuf<MapData>,
    /// Refusals and escalations.
    pub alerts: RingBuf<MapData>,
}

/// A delete whose key was already absent succeeded: what it was meant to achieve holds. (aya
/// reports a missing key on delete as the syscall's ENOENT, not as `KeyNotFound`.)
fn gone_or_absent(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, MapsError> {
    ebpf.take_map(name).ok_or(MapsError::Missing(name))
}

impl KernelMaps {
    /// Takes the maps out of the loaded object; also returns the event ring buffers.
    pub fn take(ebpf: &mut Ebpf) -> Result<(Self, Rings), MapsError> {
        let maps = Self {
            cgroups: take(ebpf, names::CGROUPS)?
                .try_into()
                .map_err(err(names::CGROUPS))?,
            agents: take(ebpf, names::AGENT_CONFIG)?
                .try_into()
                .map_err(err(names::AGENT_CONFIG))?,
            net: take(ebpf, names::NET_RULES)?
                .try_into()
                .map_err(err(names::NET_RULES))?,
            exec: take(ebpf, names::EXEC_RULES)?
                .try_into()
                .map_err(err(names::EXEC_RULES))?,
            paths: take(ebpf, names::PATH_RULES)?
                .try_into()
                .map_err(err(names::PATH_RULES))?,
            state: take(ebpf, names::STATE)?
                .try_into()
                .map_err(err(names::STATE))?,
            lost: take(ebpf, names::LOST)?
                .try_into()
                .map_err(err(names::LOST))?,
            counters: take(ebpf, names::COUNTERS)?
                .try_into()
                .map_err(err(names::COUNTERS))?,
            agent_buckets: take(ebpf, names::AGENT_BUCKETS)?
                .try_into()
                .map_err(err(names::AGENT_BUCKETS))?,
            event_budgets: take(ebpf, names::EVENT_BUDGETS)?
                .try_into()
                .map_err(err(names::EVENT_BUDGETS))?,
        };
        let rings = Rings {
            events: take(ebpf, names::EVENTS)?
                .try_into()
                .map_err(err(names::EVENTS))?,
            alerts: take(ebpf, names::ALERTS)?
                .try_into()
                .map_err(err(names::ALERTS))?,
        };
        Ok((maps, rings))
    }

    /// The global state.
    pub fn state(&self) -> Result<GlobalState, MapsError> {
        self.state.get(&0, 0).map_err(err(names::STATE))
    }

    /// Records where the agentguard cgroup subtree is (keeps the active generation).
    pub fn set_root(&mut self, root_cgroup_id: u64, root_level: u32) -> Result<(), MapsError> {
        let mut s = self.state()?;
        s.root_cgroup_id = root_cgroup_id;
        s.root_level = root_level;
        self.state.set(0, s, 0).map_err(err(names::STATE))
    }

    /// The generation a new policy is written to.
    pub fn inactive_generation(&self) -> Result<u8, MapsError> {
        Ok(if self.state()?.active_generation == 0 {
            1
        } else {
            0
        })
    }

    /// Applies a compiled policy (its generation must be the inactive one) and waits out the
    /// grace period before removing the old generation. For callers that must not block for
    /// [`GRACE`] while holding locks, [`Self::write_and_flip`] and [`Self::purge_if_inactive`] are the
    /// parts.
    pub fn apply(&mut self, compiled: &Compiled) -> Result<(), MapsError> {
        let old = self.write_and_flip(compiled)?;
        thread::sleep(GRACE);
        self.purge_if_inactive(old)
    }

    /// Writes every entry of the compiled generation, then makes it the active one. Returns the
    /// previously active generation, whose entries stay until [`Self::purge_if_inactive`].
    pub fn write_and_flip(&mut self, compiled: &Compiled) -> Result<u8, MapsError> {
        let generation = compiled.generation;
        if let Err(e) = self.write_generation(compiled) {
            // Leave nothing half-written behind; the active generation was never touched.
            let _ = self.purge(generation);
            return Err(e);
        }
        let mut s = self.state()?;
        let old = u8::try_from(s.active_generation).unwrap_or(0);
        s.active_generation = u32::from(generation);
        self.state.set(0, s, 0).map_err(err(names::STATE))?;
        Ok(old)
    }

    /// Removes the entries of `generation` unless it is (again) the active one.
    pub fn purge_if_inactive(&mut self, generation: u8) -> Result<(), MapsError> {
        if u32::from(generation) == self.state()?.active_generation {
            return Ok(());
        }
        self.purge(generation)
    }

    fn write_generation(&mut self, c: &Compiled) -> Result<(), MapsError> {
        // Entries left over from an apply that failed earlier must not leak into this one.
        self.purge(c.generation)?;
        for (k, v) in &c.agents {
            self.agents
                .insert(k, v, 0)
                .map_err(err(names::AGENT_CONFIG))?;
        }
        for (k, bits, v) in &c.net {
            self.net
                .insert(&Key::new(*bits, *k), v, 0)
                .map_err(err(names::NET_RULES))?;
        }
        for (k, v) in &c.exec {
            self.exec.insert(k, v, 0).map_err(err(names::EXEC_RULES))?;
        }
        for (k, bits, v) in &c.paths {
            self.paths
                .insert(&Key::new(*bits, *k), v, 0)
                .map_err(err(names::PATH_RULES))?;
        }
        Ok(())
    }

    /// Removes every entry of `generation`.
    fn purge(&mut self, generation: u8) -> Result<(), MapsError> {
        let g = u32::from(generation);
        let agents: Vec<AgentKey> = self
            .agents
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation == g)
            .collect();
        for k in agents {
            self.agents.remove(&k).map_err(err(names::AGENT_CONFIG))?;
        }
        let net: Vec<Key<NetKey>> = self
            .net
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().generation == generation)
            .collect();
        for k in net {
            self.net.remove(&k).map_err(err(names::NET_RULES))?;
        }
        let exec: Vec<ExecKey> = self
            .exec
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation == g)
            .collect();
        for k in exec {
            self.exec.remove(&k).map_err(err(names::EXEC_RULES))?;
        }
        let paths: Vec<Key<PathKey>> = self
            .paths
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().generation == generation)
            .collect();
        for k in paths {
            self.paths.remove(&k).map_err(err(names::PATH_RULES))?;
        }
        Ok(())
    }

    /// Registers an agent instance cgroup: from now on the kernel judges its processes.
    pub fn add_instance(&mut self, cgroup_id: u64, entry: CgroupEntry) -> Result<(), MapsError> {
        self.cgroups
            .insert(cgroup_id, entry, 0)
            .map_err(err(names::CGROUPS))
    }

    /// Forgets an instance cgroup (after it has exited and been removed).
    pub fn remove_instance(&mut self, cgroup_id: u64) -> Result<(), MapsError> {
        let _ = self.counters.remove(&cgroup_id);
        // The kernel refuses budgeted actions once the budget map is full, so every bucket of an
        // ended instance must go (a new cgroup never reuses the id of a removed one).
        for kind in ThrottleKind::ALL {
            let key = BucketKey {
                owner: cgroup_id,
                kind: kind as u32,
                _pad: 0,
            };
            gone_or_absent(self.agent_buckets.remove(&key)).map_err(err(names::AGENT_BUCKETS))?;
        }
        gone_or_absent(self.cgroups.remove(&cgroup_id)).map_err(err(names::CGROUPS))
    }

    /// Every registered instance cgroup.
    pub fn instances(&self) -> Vec<(u64, CgroupEntry)> {
        self.cgroups.iter().filter_map(Result::ok).collect()
    }

    /// The kernel's cumulative count of events dropped on a full ring buffer.
    pub fn lost_total(&self) -> Result<u64, MapsError> {
        let values = self
            .lost
            .get(&names::LOST_EVENTS, 0)
            .map_err(err(names::LOST))?;
        Ok(values.iter().sum())
    }

    /// The kernel's cumulative count of refusals dropped with both ring buffers full.
    pub fn lost_refusals_total(&self) -> Result<u64, MapsError> {
        let values = self
            .lost
            .get(&names::LOST_ALERTS, 0)
            .map_err(err(names::LOST))?;
        Ok(values.iter().sum())
    }

    /// Every instance's event budget.
    pub fn event_budgets(&self) -> Vec<(u64, EventBudget)> {
        self.event_budgets.iter().filter_map(Result::ok).collect()
    }

    /// Forgets an ended instance's event budget (after its last gap was logged).
    pub fn forget_event_budget(&mut self, cgroup_id: u64) -> Result<(), MapsError> {
        gone_or_absent(self.event_budgets.remove(&cgroup_id)).map_err(err(names::EVENT_BUDGETS))
    }

    /// Actions left in an instance-wide budget right now (`None` before its first action).
    pub fn budget_left(&self, cgroup_id: u64, kind: ThrottleKind, t: &Throttle) -> Option<u64> {
        let key = BucketKey {
            owner: cgroup_id,
            kind: kind as u32,
            _pad: 0,
        };
        let b = self.agent_buckets.get(&key, 0).ok()?;
        let (_, now) = crate::audit::now();
        let credit = b
            .credit_ns
            .saturating_add(now.saturating_sub(b.last_ns))
            .min(t.burst_ns);
        Some(credit / t.cost_ns.max(1))
    }

    /// Verdict counters of an instance, summed over CPUs.
    pub fn counters(&self, cgroup_id: u64) -> Counters {
        let mut total = Counters::default();
        if let Ok(values) = self.counters.get(&cgroup_id, 0) {
            for c in values.iter() {
                total.allowed += c.allowed;
                total.denied += c.denied;
                total.throttled += c.throttled;
                total.audit_denied += c.audit_denied;
            }
        }
        total
    }
}
