//! Sending events to the daemon. A full ring buffer never blocks a verdict: the event is counted
//! in [`LOST`] and the daemon writes the count into the log as a gap.
//!
//! Refusals go to their own ring buffer, [`ALERTS`], which allowed actions never use (a refusal
//! finding it full still tries the main one). Every instance has an event budget
//! ([`EVENT_BUDGETS`]): what it causes beyond it is counted for that instance and not sent, so
//! one agent flooding the log cannot push out another agent's events.

use agentguard_common::{
    COMM_LEN,
    agent::{Bucket, EVENT_BUDGET_ALLOWED, EVENT_BUDGET_REFUSALS, EventBudget},
    event::{EVENT_ESCALATE_FREEZE, EVENT_ESCALATE_KILL, EventHeader, EventKind},
    maps::{LOST_ALERTS, LOST_EVENTS},
    verdict::{Backend, Verdict},
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    maps::ring_buf::RingBufEntry,
};

use crate::{
    identity::Subject,
    maps::{ALERTS, EVENT_BUDGETS, EVENTS, LOST},
    throttle,
    verdict::Judgement,
};

/// Builds the common header of an event about `subject`.
#[inline(always)]
pub fn header(kind: EventKind, backend: Backend, subject: &Subject, j: &Judgement) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    EventHeader {
        kind: kind as u16,
        verdict: j.verdict as u8,
        backend: backend as u8,
        rule_id: j.rule_id,
        // SAFETY: helper without memory arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: subject.cgroup_id,
        agent_id: subject.agent_id,
        generation: subject.generation,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        flags: j.flags,
        comm,
    }
}

/// Reserves room for an event of type `T` about `subject`'s action judged `j`: `None` when the
/// instance has spent its event budget, or when no ring buffer has room (counted as lost).
#[inline(always)]
pub fn reserve<T: 'static>(subject: &Subject, j: &Judgement) -> Option<RingBufEntry<T>> {
    let refusal = j.verdict != Verdict::Allowed;
    if !within_budget(subject.cgroup_id, refusal, j.flags) {
        return None;
    }
    if refusal && let Some(entry) = ALERTS.reserve::<T>(0) {
        return Some(entry);
    }
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        lost(if refusal { LOST_ALERTS } else { LOST_EVENTS });
    }
    entry
}

#[inline(always)]
fn lost(slot: u32) {
    if let Some(n) = LOST.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for this program run.
        unsafe { *n += 1 };
    }
}

/// Spends one event of the instance's budget; false (and counted for the instance) when none is
/// left.
#[inline(always)]
fn within_budget(cgroup_id: u64, refusal: bool, flags: u32) -> bool {
    // SAFETY: helper without memory arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let t = if refusal {
        &EVENT_BUDGET_REFUSALS
    } else {
        &EVENT_BUDGET_ALLOWED
    };
    let Some(b) = EVENT_BUDGETS.get_ptr_mut(cgroup_id) else {
        let full = Bucket {
            credit_ns: EVENT_BUDGET_ALLOWED.burst_ns,
            last_ns: now,
        };
        let mut fresh = EventBudget {
            allowed: full,
            refusals: Bucket {
                credit_ns: EVENT_BUDGET_REFUSALS.burst_ns,
                last_ns: now,
            },
            ..EventBudget::default()
        };
        if refusal {
            fresh.refusals.credit_ns -= t.cost_ns;
        } else {
            fresh.allowed.credit_ns -= t.cost_ns;
        }
        // A full map (more live instances than the cgroup map holds) leaves the event
        // unmetered: the log loses nothing by it.
        let _ = EVENT_BUDGETS.insert(cgroup_id, fresh, 0);
        return true;
    };
    // SAFETY: map value valid for this program run; races between CPUs cost at most an event.
    let b = unsafe { &mut *b };
    let bucket: *mut Bucket = if refusal {
        &mut b.refusals
    } else {
        &mut b.allowed
    };
    if throttle::take(Some(bucket), t, now, |_| true) {
        return true;
    }
    if refusal {
        b.lost_refusals += 1;
        let escalate = flags & (EVENT_ESCALATE_FREEZE | EVENT_ESCALATE_KILL);
        if escalate != 0 {
            b.escalate |= escalate;
            b.escalate_ns = now;
        }
    } else {
        b.lost_allowed += 1;
    }
    false
}
