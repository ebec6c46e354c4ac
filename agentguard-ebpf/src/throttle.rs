//! Token buckets in maps. Credit is counted in nanoseconds so the kernel never divides: a bucket
//! gains one nanosecond of credit per nanosecond, up to `burst_ns`, and an action costs `cost_ns`.
//!
//! Updates are plain read-modify-write without a lock: two CPUs racing on one bucket can both
//! spend the same credit, so at most about one extra action per CPU gets through in a race.

use agentguard_common::{
    agent::{
        AgentConfig, Bucket, BucketKey, OnExceed, Throttle, ThrottleKind, ThrottleScope,
        throttle_slot,
    },
    event::{EVENT_ESCALATE_FREEZE, EVENT_ESCALATE_KILL},
};
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};

use crate::{
    identity::Subject,
    maps::{AGENT_BUCKETS, PROC_BUCKETS},
};

/// Whether the agent has a budget of `kind` at all (either scope).
#[inline(always)]
pub fn budgeted(config: &AgentConfig, kind: ThrottleKind) -> bool {
    config.throttles[throttle_slot(kind, ThrottleScope::Process)].cost_ns != 0
        || config.throttles[throttle_slot(kind, ThrottleScope::Agent)].cost_ns != 0
}

/// Charges one action of `kind` to every budget that applies. Returns `None` when all budgets
/// had credit, or the `EVENT_*` escalation flags (possibly 0 for plain deny) of an exhausted one.
#[inline(always)]
pub fn charge(subject: &Subject, config: &AgentConfig, kind: ThrottleKind) -> Option<u32> {
    // Most actions have no budget: they pay no clock read and no bucket lookup.
    if !budgeted(config, kind) {
        return None;
    }
    let process = &config.throttles[throttle_slot(kind, ThrottleScope::Process)];
    let agent = &config.throttles[throttle_slot(kind, ThrottleScope::Agent)];
    // SAFETY: helper without memory arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if process.cost_ns != 0 {
        let key = BucketKey {
            owner: bpf_get_current_pid_tgid() >> 32,
            kind: kind as u32,
            _pad: 0,
        };
        let fresh = |b: &Bucket| PROC_BUCKETS.insert(key, b, 0).is_ok();
        if !take(PROC_BUCKETS.get_ptr_mut(key), process, now, fresh) {
            return Some(escalation(process));
        }
    }
    if agent.cost_ns != 0 {
        let key = BucketKey {
            owner: subject.cgroup_id,
            kind: kind as u32,
            _pad: 0,
        };
        let fresh = |b: &Bucket| AGENT_BUCKETS.insert(key, b, 0).is_ok();
        if !take(AGENT_BUCKETS.get_ptr_mut(key), agent, now, fresh) {
            return Some(escalation(agent));
        }
    }
    None
}

#[inline(always)]
fn escalation(t: &Throttle) -> u32 {
    match OnExceed::from_u8(t.on_exceed) {
        Some(OnExceed::Freeze) => EVENT_ESCALATE_FREEZE,
        Some(OnExceed::Kill) => EVENT_ESCALATE_KILL,
        Some(OnExceed::Deny) | None => 0,
    }
}

/// Takes one action's credit from `bucket` (or a new full bucket, stored with `create`); false
/// when there is not enough, or when the new bucket cannot be stored: a full map must never turn
/// into an unlimited budget (an agent could otherwise fill it with instances or processes and
/// then act without limit). The daemon removes an instance's buckets when the instance ends.
#[inline(always)]
pub fn take(
    bucket: Option<*mut Bucket>,
    t: &Throttle,
    now: u64,
    create: impl FnOnce(&Bucket) -> bool,
) -> bool {
    match bucket {
        Some(b) => {
            // SAFETY: map value valid for this program run; races are documented above.
            let b = unsafe { &mut *b };
            let elapsed = now.saturating_sub(b.last_ns);
            let mut credit = b.credit_ns.saturating_add(elapsed);
            if credit > t.burst_ns {
                credit = t.burst_ns;
            }
            b.last_ns = now;
            if credit >= t.cost_ns {
                b.credit_ns = credit - t.cost_ns;
                true
            } else {
                b.credit_ns = credit;
                false
            }
        }
        None => {
            let fresh = Bucket {
                credit_ns: t.burst_ns.saturating_sub(t.cost_ns),
                last_ns: now,
            };
            create(&fresh) && t.burst_ns >= t.cost_ns
        }
    }
}
