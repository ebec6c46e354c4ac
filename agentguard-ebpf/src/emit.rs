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

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::{
    identity::Subject,
    maps::{ALERTS, EVENT_BUDGETS, EVENTS, LOST},
    throttle,
    verdict::Judgement,
};

/// `bpf_ringbuf_submit` flags and `bpf_ringbuf_query` selectors (uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;
/// `bpf_map_update_elem` flag: create only (uapi/linux/bpf.h).
pub const BPF_NOEXIST: u64 = 1;

/// A reserved event, written through `Deref`, sent with [`Pending::send`] (which picks the
/// wake-up; the entry's own `submit` is not reachable through the deref).
pub struct Pending<T: 'static> {
    entry: RingBufEntry<T>,
    /// When the event budget was charged: the event's time, so that an event reads the clock
    /// once (under a hypervisor a clock read is a pvclock read, a noticeable part of a run).
    ktime_ns: u64,
    /// A refusal or an escalation: the daemon must see it now.
    urgent: bool,
}

impl<T: 'static> core::ops::Deref for Pending<T> {
    type Target = RingBufEntry<T>;
    fn deref(&self) -> &Self::Target {
        &self.entry
    }
}

impl<T: 'static> core::ops::DerefMut for Pending<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.entry
    }
}

impl<T: 'static> Pending<T> {
    /// The common header of this event about `subject`.
    #[inline(always)]
    pub fn header(
        &self,
        kind: EventKind,
        backend: Backend,
        subject: &Subject,
        j: &Judgement,
    ) -> EventHeader {
        let pid_tgid = bpf_get_current_pid_tgid();
        let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        EventHeader {
            kind: kind as u16,
            verdict: j.verdict as u8,
            backend: backend as u8,
            rule_id: j.rule_id,
            ktime_ns: self.ktime_ns,
            cgroup_id: subject.cgroup_id,
            agent_id: subject.agent_id(),
            generation: subject.generation,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            uid: bpf_get_current_uid_gid() as u32,
            flags: j.flags,
            comm,
        }
    }

    /// Commits the event. Refusals and escalations wake the daemon (the kernel's adaptive
    /// wake-up). Allowed events do not: a wake-up per event would cost every allowed action an
    /// irq_work and a daemon cycle, so the daemon drains them on a short timer instead, and is
    /// woken early only when the ring is a quarter full.
    #[inline(always)]
    pub fn send(self) {
        let flags = if self.urgent {
            0
        } else if EVENTS.query(BPF_RB_AVAIL_DATA) >= EVENTS.query(BPF_RB_RING_SIZE) / 4 {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
        self.entry.submit(flags);
    }
}

/// Reserves room for an event of type `T` about `subject`'s action judged `j`: `None` when the
/// instance has spent its event budget, or when no ring buffer has room (counted as lost).
#[inline(always)]
pub fn reserve<T: 'static>(subject: &Subject, j: &Judgement) -> Option<Pending<T>> {
    let refusal = j.verdict != Verdict::Allowed;
    // SAFETY: helper without memory arguments.
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    if !within_budget(subject, refusal, j.flags, ktime_ns) {
        return None;
    }
    let urgent = refusal || j.flags & (EVENT_ESCALATE_FREEZE | EVENT_ESCALATE_KILL) != 0;
    if refusal && let Some(entry) = ALERTS.reserve::<T>(0) {
        return Some(Pending {
            entry,
            ktime_ns,
            urgent,
        });
    }
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        lost(if refusal { LOST_ALERTS } else { LOST_EVENTS });
    }
    entry.map(|entry| Pending {
        entry,
        ktime_ns,
        urgent,
    })
}

#[inline(always)]
fn lost(slot: u32) {
    if let Some(n) = LOST.get_ptr_mut(slot) {
        // Per-CPU, but a program run can be preempted on its CPU by another run of a program
        // that counts here: a plain `+= 1` could lose an increment (an event neither logged
        // nor counted).
        add_shared(n);
    }
}

/// Spends one event of the budget of the instance's tree (the top-level instance and all its
/// sub-agents share one: an agent cannot multiply it by starting sub-agents); false, and
/// counted for the tree, when none is left.
#[inline(always)]
fn within_budget(subject: &Subject, refusal: bool, flags: u32, now: u64) -> bool {
    // An unknown cgroup, or an entry written before trees were recorded, is a tree of its own.
    let tree = match subject.root_instance_id() {
        0 => subject.cgroup_id,
        root => root,
    };
    let t = if refusal {
        &EVENT_BUDGET_REFUSALS
    } else {
        &EVENT_BUDGET_ALLOWED
    };
    let Some(b) = EVENT_BUDGETS.get_ptr_mut(tree) else {
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
        // unmetered: the log loses nothing by it. Only if still absent: another CPU's entry
        // (and what it has counted since) is never overwritten with a fresh one.
        let _ = EVENT_BUDGETS.insert(tree, fresh, BPF_NOEXIST);
        return true;
    };
    // SAFETY: map value valid for this program run. Races between CPUs on the buckets cost at
    // most an event sent early; the lost counts below are added atomically.
    let b = unsafe { &mut *b };
    let bucket: *mut Bucket = if refusal {
        &mut b.refusals
    } else {
        &mut b.allowed
    };
    if throttle::take(Some(bucket), t, now, |_| true) {
        return true;
    }
    // The counts are exact: every CPU adds to the same value at once, and a plain `+= 1` from
    // two of them loses one of the increments (an event neither logged nor counted). The
    // escalation fields stay plain writes: a raced `escalate_ns` is still the time of an unsent
    // refusal, and the next refusal over the budget sets its flags again, so a race at worst
    // postpones an escalation to that refusal.
    if refusal {
        add_shared(&raw mut b.lost_refusals);
        let escalate = flags & (EVENT_ESCALATE_FREEZE | EVENT_ESCALATE_KILL);
        if escalate != 0 {
            escalate_unsent(subject.cgroup_id, escalate, now);
        }
    } else {
        add_shared(&raw mut b.lost_allowed);
    }
    false
}

/// The entry of an instance that only carries escalations, inserted from global data (a map
/// value to the verifier) rather than from the stack: the file program on 6.1 has no 64 bytes
/// of stack to spare beside its `bpf_loop` callback.
static ESCALATIONS_ONLY: EventBudget = EventBudget {
    allowed: Bucket {
        credit_ns: 0,
        last_ns: 0,
    },
    refusals: Bucket {
        credit_ns: 0,
        last_ns: 0,
    },
    lost_allowed: 0,
    lost_refusals: 0,
    escalate_ns: 0,
    escalate: 0,
    _pad: 0,
};

/// Leaves the escalation of an unsent refusal in the entry of the instance that breached (not
/// its tree's: the daemon acts on the entry's instance), created when the instance has none
/// (a sub-agent's entry only carries escalations).
#[inline(always)]
fn escalate_unsent(cgroup_id: u64, escalate: u32, now: u64) {
    if EVENT_BUDGETS.get_ptr_mut(cgroup_id).is_none() {
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, the 64 bytes would be copied onto the stack this avoids"
        )]
        let _ = EVENT_BUDGETS.insert(cgroup_id, &ESCALATIONS_ONLY, BPF_NOEXIST);
    }
    if let Some(b) = EVENT_BUDGETS.get_ptr_mut(cgroup_id) {
        // SAFETY: map value valid for this program run.
        let b = unsafe { &mut *b };
        b.escalate |= escalate;
        b.escalate_ns = now;
    }
}

/// Adds one to a counter in a map value that another program run may add to meanwhile (on
/// another CPU, or on this one after preempting this run): an atomic add (`BPF_ATOMIC` /
/// `BPF_ADD` without fetch, which every kernel with BPF ring buffers accepts; uncontended on
/// per-CPU memory, it costs about what a plain add does).
/// `AtomicU64::fetch_add` is not available on the BPF target (it has no compare-and-swap, so
/// `target_has_atomic` is off), hence the intrinsic; its result is unused so LLVM emits the
/// non-fetching form.
#[inline(always)]
pub fn add_shared(n: *mut u64) {
    // SAFETY: `n` points into a map value that stays valid for this program run, aligned to 8.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
}
