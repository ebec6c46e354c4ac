//! Waiting until every BPF program that was running has finished, so that an old policy
//! generation is removed only once no program run can still be reading it.
//!
//! The kernel offers no "synchronize RCU" command, but it runs one for us: an update of a
//! map-in-map (`BPF_MAP_TYPE_ARRAY_OF_MAPS`) returns only after an RCU grace period, so that
//! userspace knows every non-sleepable program that could have seen the previous inner map has
//! finished (`maybe_wait_bpf_programs` in kernel/bpf/syscall.c, since Linux 4.20). Our programs
//! are all non-sleepable; they run inside RCU read-side sections (or with preemption disabled,
//! which the grace period waits for too). One update of a one-slot array of maps is therefore
//! an exact barrier: typically a few milliseconds, against a fixed sleep that has to guess
//! how long a program run may take.
//!
//! aya 0.14 cannot create a map-in-map outside an object, hence the two raw `bpf(2)` calls
//! ([`super::sys`]).

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
};

use super::sys::{bpf, bpf_fd};

/// `enum bpf_cmd` values (uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `enum bpf_map_type` values.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The `BPF_MAP_CREATE` member of `union bpf_attr`, up to `inner_map_fd`.
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

/// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Creates a map and owns its fd.
fn create(attr: &mut CreateAttr) -> io::Result<OwnedFd> {
    // SAFETY: the `BPF_MAP_CREATE` layout, without pointers; the command returns a new fd.
    unsafe { bpf_fd(BPF_MAP_CREATE, attr) }
}

/// A one-slot array of maps and the map it holds; [`Quiescer::wait`] is the barrier.
#[derive(Debug)]
pub struct Quiescer {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl Quiescer {
    /// Creates the two maps (needs `CAP_BPF`, as the daemon has).
    pub fn new() -> io::Result<Self> {
        let inner = create(&mut CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..CreateAttr::default()
        })?;
        let outer = create(&mut CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: u32::try_from(inner.as_raw_fd()).unwrap_or_default(),
            ..CreateAttr::default()
        })?;
        Ok(Self { outer, inner })
    }

    /// Returns once every non-sleepable BPF program that was running when it was called has
    /// finished (one RCU grace period).
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value = u32::try_from(self.inner.as_raw_fd()).unwrap_or_default();
        let mut attr = ElemAttr {
            map_fd: u32::try_from(self.outer.as_raw_fd()).unwrap_or_default(),
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&value) as u64,
            ..ElemAttr::default()
        };
        // SAFETY: the `BPF_MAP_UPDATE_ELEM` layout; `key` and `value` are live u32s, the sizes
        // the maps were created with, which the kernel only reads; `outer` is open.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Quiescer;

    /// The attribute layouts are right: the kernel creates both maps and takes the update
    /// (a wrong layout is EINVAL). Map creation needs root; under CI it must run.
    #[test]
    fn an_update_of_the_array_of_maps_succeeds_repeatedly() {
        if !crate::ebpf::sys::privileged() {
            return;
        }
        let q = Quiescer::new().expect("create the maps");
        for _ in 0..3 {
            q.wait().expect("the barrier");
        }
    }
}
