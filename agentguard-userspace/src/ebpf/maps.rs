//! The maps, typed, and the only code that writes them: the last stage of the policy pipeline.
//!
//! A policy is applied as a new generation: every entry of the inactive generation is written
//! first; then [`GlobalState::active_generation`] flips in one word, so each program run sees
//! the old rules or the new ones, never a mix; once every program run that may have read the
//! old word has finished ([`PolicyMaps::wait_for_readers`]), the old generation's entries are
//! removed. If writing fails half-way, the partial new generation is removed and the old one
//! stays in force.

use std::{
    os::fd::AsFd as _,
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use agentguard_common::{
    agent::{
        AgentConfig, AgentKey, Bucket, BucketKey, CgroupEntry, Counters, EventBudget, GlobalState,
        Throttle, ThrottleKind,
    },
    maps as names,
    rules::{ExecKey, NetKey, PathKey, RuleRef, UnixKey},
};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray,
        PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};

use super::{batch, quiesce::Quiescer};
use crate::policy::compile::Compiled;

/// How long the old generation is kept after the flip where the kernel's barrier is not
/// available (see [`super::quiesce`]): programs run for microseconds.
const GRACE: Duration = Duration::from_millis(100);

/// Errors reading or writing maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// A map is missing from the object.
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    /// A generation was to be written while programs read it.
    #[error("generation {0} is the active one: it cannot be rewritten")]
    ActiveGeneration(u8),
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
    /// The policy maps and the global state, behind their own lock: a policy apply writes and
    /// purges thousands of entries without holding the daemon's state lock.
    policy: Arc<Mutex<PolicyMaps>>,
    cgroups: HashMap<MapData, u64, CgroupEntry>,
    lost: PerCpuArray<MapData, u64>,
    counters: PerCpuHashMap<MapData, u64, Counters>,
    agent_buckets: HashMap<MapData, BucketKey, Bucket>,
    event_budgets: HashMap<MapData, u64, EventBudget>,
}

/// The maps a policy generation lives in, and the global state that says which one is active.
pub struct PolicyMaps {
    agents: HashMap<MapData, AgentKey, AgentConfig>,
    net: LpmTrie<MapData, NetKey, RuleRef>,
    exec: HashMap<MapData, ExecKey, RuleRef>,
    unix: HashMap<MapData, UnixKey, RuleRef>,
    paths: LpmTrie<MapData, PathKey, RuleRef>,
    state: Array<MapData, GlobalState>,
    /// Second handles on the rule maps (agents, net, exec, unix, paths) for batched writes,
    /// which need the map while its typed handle does the per-key fallback.
    raw: [MapData; 5],
    /// Per generation: known to hold no entries (purged by this daemon since it started).
    clean: [bool; 2],
    /// The barrier after a flip; `None` where the kernel refused to create it.
    quiesce: Option<Quiescer>,
}

/// Indexes of [`PolicyMaps::raw`].
const AGENTS: usize = 0;
const NET: usize = 1;
const EXEC: usize = 2;
const UNIX: usize = 3;
const PATHS: usize = 4;

/// A second handle on `map` (a dup of its fd).
fn raw_handle(map: &MapData, name: &'static str) -> Result<MapData, MapsError> {
    let fd = map
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|io_error| MapsError::Map {
            map: name,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error,
            }),
        })?;
    MapData::from_fd(fd).map_err(err(name))
}

/// Locks the policy maps; a panic elsewhere must not take enforcement down with it.
pub fn lock(maps: &Mutex<PolicyMaps>) -> MutexGuard<'_, PolicyMaps> {
    maps.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let agents: HashMap<MapData, AgentKey, AgentConfig> = take(ebpf, names::AGENT_CONFIG)?
            .try_into()
            .map_err(err(names::AGENT_CONFIG))?;
        let net: LpmTrie<MapData, NetKey, RuleRef> = take(ebpf, names::NET_RULES)?
            .try_into()
            .map_err(err(names::NET_RULES))?;
        let exec: HashMap<MapData, ExecKey, RuleRef> = take(ebpf, names::EXEC_RULES)?
            .try_into()
            .map_err(err(names::EXEC_RULES))?;
        let unix: HashMap<MapData, UnixKey, RuleRef> = take(ebpf, names::UNIX_RULES)?
            .try_into()
            .map_err(err(names::UNIX_RULES))?;
        let paths: LpmTrie<MapData, PathKey, RuleRef> = take(ebpf, names::PATH_RULES)?
            .try_into()
            .map_err(err(names::PATH_RULES))?;
        let state: Array<MapData, GlobalState> = take(ebpf, names::STATE)?
            .try_into()
            .map_err(err(names::STATE))?;
        let raw = [
            raw_handle(agents.map(), names::AGENT_CONFIG)?,
            raw_handle(net.map(), names::NET_RULES)?,
            raw_handle(exec.map(), names::EXEC_RULES)?,
            raw_handle(unix.map(), names::UNIX_RULES)?,
            raw_handle(paths.map(), names::PATH_RULES)?,
        ];
        let policy = PolicyMaps {
            agents,
            net,
            exec,
            unix,
            paths,
            state,
            raw,
            clean: [false; 2],
            quiesce: Quiescer::new()
                .inspect_err(|e| {
                    tracing::warn!(
                        "no barrier for running BPF programs (array of maps: {e}): an old \
                         policy generation is removed {} ms after the flip instead",
                        GRACE.as_millis()
                    );
                })
                .ok(),
        };
        let maps = Self {
            policy: Arc::new(Mutex::new(policy)),
            cgroups: take(ebpf, names::CGROUPS)?
                .try_into()
                .map_err(err(names::CGROUPS))?,
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

    /// The policy maps, for writing a generation without the caller's other locks.
    pub fn policy(&self) -> Arc<Mutex<PolicyMaps>> {
        Arc::clone(&self.policy)
    }

    /// See [`PolicyMaps::set_root`].
    pub fn set_root(&mut self, root_cgroup_id: u64, root_level: u32) -> Result<(), MapsError> {
        lock(&self.policy).set_root(root_cgroup_id, root_level)
    }

    /// See [`PolicyMaps::inactive_generation`].
    pub fn inactive_generation(&self) -> Result<u8, MapsError> {
        lock(&self.policy).inactive_generation()
    }

    /// See [`PolicyMaps::apply`].
    pub fn apply(&mut self, compiled: &Compiled) -> Result<(), MapsError> {
        lock(&self.policy).apply(compiled)
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

impl PolicyMaps {
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

    /// Applies a compiled policy (its generation must be the inactive one), waits for the
    /// readers of the old generation and removes it. For callers that reply between the flip
    /// and the purge, [`Self::write_and_flip`], [`Self::wait_for_readers`] and
    /// [`Self::purge_if_inactive`] are the parts.
    pub fn apply(&mut self, compiled: &Compiled) -> Result<(), MapsError> {
        let old = self.write_and_flip(compiled)?;
        self.wait_for_readers();
        self.purge_if_inactive(old, None)
    }

    /// Returns once every program run that started before the call has finished, so none can
    /// still be using a generation that was active before it: the kernel's barrier, or
    /// a fixed 100 ms where there is none.
    pub fn wait_for_readers(&self) {
        let Some(q) = &self.quiesce else {
            thread::sleep(GRACE);
            return;
        };
        if let Err(e) = q.wait() {
            tracing::warn!(
                "the barrier for running BPF programs failed ({e}): waiting {} ms instead",
                GRACE.as_millis()
            );
            thread::sleep(GRACE);
        }
    }

    /// Writes every entry of the compiled generation, then makes it the active one. Returns the
    /// previously active generation, whose entries stay until [`Self::purge_if_inactive`].
    pub fn write_and_flip(&mut self, compiled: &Compiled) -> Result<u8, MapsError> {
        self.write(compiled)?;
        self.flip(compiled.generation)
    }

    /// Writes every entry of the compiled (inactive) generation; programs do not read it until
    /// [`Self::flip`]. When a write fails the partial generation is removed again.
    pub fn write(&mut self, compiled: &Compiled) -> Result<(), MapsError> {
        if u32::from(compiled.generation) == self.state()?.active_generation {
            return Err(MapsError::ActiveGeneration(compiled.generation));
        }
        if let Err(e) = self.write_generation(compiled) {
            // Leave nothing half-written behind; the active generation was never touched.
            let _ = self.purge(compiled.generation);
            return Err(e);
        }
        Ok(())
    }

    /// Makes `generation` (fully written by [`Self::write`]) the active one in one map update;
    /// returns the generation that was active.
    pub fn flip(&mut self, generation: u8) -> Result<u8, MapsError> {
        let mut s = self.state()?;
        let old = u8::try_from(s.active_generation).unwrap_or(0);
        s.active_generation = u32::from(generation);
        self.state.set(0, s, 0).map_err(err(names::STATE))?;
        Ok(old)
    }

    /// Removes the entries of `generation` unless it is (again) the active one. `written` is
    /// what this daemon wrote into that generation, when it knows: deleting those keys costs a
    /// syscall each, where finding them costs a walk of the LPM trie from its root per key.
    pub fn purge_if_inactive(
        &mut self,
        generation: u8,
        written: Option<&Compiled>,
    ) -> Result<(), MapsError> {
        if u32::from(generation) == self.state()?.active_generation {
            return Ok(());
        }
        match written {
            Some(c) if c.generation == generation => self.purge_written(c),
            _ => self.purge(generation),
        }
    }

    fn write_generation(&mut self, c: &Compiled) -> Result<(), MapsError> {
        let g = usize::from(c.generation & 1);
        // Entries left over from an apply that failed earlier (or from an earlier daemon) must
        // not leak into this one.
        if !self.clean[g] {
            self.purge(c.generation)?;
        }
        self.clean[g] = false;
        // One syscall per map (see `batch`); the per-key closures are the fallback.
        let (keys, values): (Vec<AgentKey>, Vec<AgentConfig>) = c.agents.iter().copied().unzip();
        batch::update(&self.raw[AGENTS], &keys, &values, |i| {
            self.agents.insert(keys[i], values[i], 0)
        })
        .map_err(err(names::AGENT_CONFIG))?;
        let (keys, values): (Vec<Key<NetKey>>, Vec<RuleRef>) = c
            .net
            .iter()
            .map(|(k, bits, v)| (Key::new(*bits, *k), *v))
            .unzip();
        batch::update(&self.raw[NET], &keys, &values, |i| {
            self.net.insert(&keys[i], values[i], 0)
        })
        .map_err(err(names::NET_RULES))?;
        let (keys, values): (Vec<ExecKey>, Vec<RuleRef>) = c.exec.iter().copied().unzip();
        batch::update(&self.raw[EXEC], &keys, &values, |i| {
            self.exec.insert(keys[i], values[i], 0)
        })
        .map_err(err(names::EXEC_RULES))?;
        let (keys, values): (Vec<UnixKey>, Vec<RuleRef>) = c.unix.iter().copied().unzip();
        batch::update(&self.raw[UNIX], &keys, &values, |i| {
            self.unix.insert(keys[i], values[i], 0)
        })
        .map_err(err(names::UNIX_RULES))?;
        let (keys, values): (Vec<Key<PathKey>>, Vec<RuleRef>) = c
            .paths
            .iter()
            .map(|(k, bits, v)| (Key::new(*bits, *k), *v))
            .unzip();
        batch::update(&self.raw[PATHS], &keys, &values, |i| {
            self.paths.insert(&keys[i], values[i], 0)
        })
        .map_err(err(names::PATH_RULES))?;
        Ok(())
    }

    /// Removes the entries `c` wrote (those already absent are fine).
    fn purge_written(&mut self, c: &Compiled) -> Result<(), MapsError> {
        let keys: Vec<AgentKey> = c.agents.iter().map(|(k, _)| *k).collect();
        self.delete_agents(&keys)?;
        let keys: Vec<Key<NetKey>> = c.net.iter().map(|(k, b, _)| Key::new(*b, *k)).collect();
        self.delete_net(&keys)?;
        let keys: Vec<ExecKey> = c.exec.iter().map(|(k, _)| *k).collect();
        self.delete_exec(&keys)?;
        let keys: Vec<UnixKey> = c.unix.iter().map(|(k, _)| *k).collect();
        self.delete_unix(&keys)?;
        let keys: Vec<Key<PathKey>> = c.paths.iter().map(|(k, b, _)| Key::new(*b, *k)).collect();
        self.delete_paths(&keys)?;
        self.clean[usize::from(c.generation & 1)] = true;
        Ok(())
    }

    fn delete_agents(&mut self, keys: &[AgentKey]) -> Result<(), MapsError> {
        batch::delete(&self.raw[AGENTS], keys, |i| {
            gone_or_absent(self.agents.remove(&keys[i]))
        })
        .map_err(err(names::AGENT_CONFIG))
    }

    fn delete_net(&mut self, keys: &[Key<NetKey>]) -> Result<(), MapsError> {
        batch::delete(&self.raw[NET], keys, |i| {
            gone_or_absent(self.net.remove(&keys[i]))
        })
        .map_err(err(names::NET_RULES))
    }

    fn delete_exec(&mut self, keys: &[ExecKey]) -> Result<(), MapsError> {
        batch::delete(&self.raw[EXEC], keys, |i| {
            gone_or_absent(self.exec.remove(&keys[i]))
        })
        .map_err(err(names::EXEC_RULES))
    }

    fn delete_unix(&mut self, keys: &[UnixKey]) -> Result<(), MapsError> {
        batch::delete(&self.raw[UNIX], keys, |i| {
            gone_or_absent(self.unix.remove(&keys[i]))
        })
        .map_err(err(names::UNIX_RULES))
    }

    fn delete_paths(&mut self, keys: &[Key<PathKey>]) -> Result<(), MapsError> {
        batch::delete(&self.raw[PATHS], keys, |i| {
            gone_or_absent(self.paths.remove(&keys[i]))
        })
        .map_err(err(names::PATH_RULES))
    }

    /// Removes every entry of `generation`, whoever wrote them.
    fn purge(&mut self, generation: u8) -> Result<(), MapsError> {
        self.purge_scan(generation)?;
        self.clean[usize::from(generation & 1)] = true;
        Ok(())
    }

    fn purge_scan(&mut self, generation: u8) -> Result<(), MapsError> {
        let g = u32::from(generation);
        let agents: Vec<AgentKey> = self
            .agents
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation == g)
            .collect();
        self.delete_agents(&agents)?;
        let net: Vec<Key<NetKey>> = self
            .net
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().generation == generation)
            .collect();
        self.delete_net(&net)?;
        let exec: Vec<ExecKey> = self
            .exec
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation == g)
            .collect();
        self.delete_exec(&exec)?;
        let unix: Vec<UnixKey> = self
            .unix
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation == g)
            .collect();
        self.delete_unix(&unix)?;
        let paths: Vec<Key<PathKey>> = self
            .paths
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().generation == generation)
            .collect();
        self.delete_paths(&paths)
    }
}
