//! Per-CPU working memory that belongs to one program run at a time.
//!
//! BPF LSM and cgroup programs run with migration disabled but, on a preemptible kernel
//! (`preempt=full`, lazy, RT), not with preemption disabled: a task can be preempted inside a
//! program, and another task can run the same program on the same CPU before the first one
//! resumes. A single per-CPU slot would then hold the second task's path or address when the
//! first one judges it, so a hostile agent with two threads on one CPU could have a refused
//! action judged by an allowed one's state. Each CPU therefore has [`SLOTS`] slots, each with a
//! `busy` word: a run claims a free one with an atomic exchange (one instruction, so a
//! preemption cannot split the test from the set) and frees it when its [`Claim`] is dropped, on
//! every return path. Only the same CPU ever touches a CPU's slots, so nothing is contended
//! across CPUs. A run that finds every slot taken (more runs preempted inside these programs on
//! one CPU than there are slots) has nowhere to judge from: its caller refuses the action,
//! flagged `EVENT_SCRATCH_BUSY`.

use core::intrinsics::{AtomicOrdering, atomic_xchg};

use aya_ebpf::maps::PerCpuArray;

/// Slots per CPU: how many runs of the programs sharing a scratch map may be preempted inside
/// them on one CPU at once before the next one is refused.
pub const SLOTS: u32 = 8;

/// One slot: whether a run owns it, and the memory.
#[repr(C)]
pub struct Slot<T> {
    /// 1 while a run owns the slot.
    busy: u64,
    /// The memory.
    pub data: T,
}

/// A slot owned by this program run until dropped.
pub struct Claim<T: 'static> {
    slot: *mut Slot<T>,
    index: u32,
}

impl<T: 'static> Claim<T> {
    /// Claims a free slot of this CPU's copy of `map`, or `None` when every slot is taken.
    #[inline(always)]
    pub fn take(map: &'static PerCpuArray<Slot<T>>) -> Option<Self> {
        let mut index = 0;
        while index < SLOTS {
            if let Some(slot) = map.get_ptr_mut(index) {
                // SAFETY: this CPU's slot, valid for the program run and aligned to 8; the
                // exchange is one BPF_XCHG, atomic against a preemption on this CPU.
                let was = unsafe {
                    atomic_xchg::<u64, { AtomicOrdering::Acquire }>(&raw mut (*slot).busy, 1)
                };
                if was == 0 {
                    return Some(Self { slot, index });
                }
            }
            index += 1;
        }
        None
    }

    /// The slot's memory, owned by this run until the claim is dropped.
    #[inline(always)]
    pub fn get(&self) -> *mut T {
        // SAFETY: `slot` is a live map value (see `take`).
        unsafe { &raw mut (*self.slot).data }
    }

    /// The slot's index in the map (for a `bpf_loop` callback, which gets only stack memory).
    #[inline(always)]
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl<T: 'static> Drop for Claim<T> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: as in `take`; an exchange rather than a store so that the release is the same
        // instruction every supported kernel accepts.
        unsafe { atomic_xchg::<u64, { AtomicOrdering::Release }>(&raw mut (*self.slot).busy, 0) };
    }
}
