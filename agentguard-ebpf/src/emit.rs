//! Sending events to the daemon. A full ring buffer never blocks a verdict: the event is counted
//! in [`LOST`] and the daemon writes the count into the log as a gap.

use agentguard_common::{
    COMM_LEN,
    event::{EventHeader, EventKind},
    verdict::Backend,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    maps::ring_buf::RingBufEntry,
};

use crate::{
    identity::Subject,
    maps::{EVENTS, LOST},
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

/// Reserves room for an event of type `T`, counting a loss when the ring buffer is full.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        lost();
    }
    entry
}

#[inline(always)]
fn lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for this program run.
        unsafe { *n += 1 };
    }
}
