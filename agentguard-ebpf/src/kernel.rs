//! Reading kernel structs at the offsets the daemon found in the running kernel's BTF.

use agentguard_common::offsets::KernelOffsets;
use aya_ebpf::helpers::bpf_probe_read_kernel;

use crate::maps::AG_OFFSETS;

/// The offsets, or `None` when the daemon did not provide them (the program then cannot judge).
#[inline(always)]
pub fn offsets() -> Option<KernelOffsets> {
    let o = AG_OFFSETS.load();
    if o.valid == 0 { None } else { Some(o) }
}

/// Reads a `T` at `base + offset`.
#[inline(always)]
pub fn read<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: `bpf_probe_read_kernel` tolerates any address: a bad one returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

/// Whether the mount of `path` belongs to the current task's mount namespace. Overlayfs layers
/// and other internal mounts do not; nothing an agent names by path lives on them.
#[inline(always)]
pub fn in_own_mount_ns(o: &KernelOffsets, path: *const u8) -> bool {
    // SAFETY: helper without memory arguments.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    let own = read::<*const u8>(task, o.task_nsproxy)
        .and_then(|ns| read::<*const u8>(ns, o.nsproxy_mnt_ns));
    let file_ns = read::<*const u8>(path, o.path_mnt)
        .map(|vfsmount| vfsmount.wrapping_sub(o.mount_mnt as usize))
        .and_then(|mount| read::<*const u8>(mount, o.mount_mnt_ns));
    match (own, file_ns) {
        (Some(a), Some(b)) => a == b,
        // Unreadable: judge it rather than let it pass.
        _ => true,
    }
}

/// The identity of a `struct file`: the kernel's `s_dev` of its superblock and its inode number.
#[inline(always)]
pub fn file_identity(o: &KernelOffsets, file: *const u8) -> Option<(u64, u64)> {
    let inode: *const u8 = read(file, o.file_inode)?;
    let ino: u64 = read(inode, o.inode_ino)?;
    let sb: *const u8 = read(inode, o.inode_sb)?;
    let dev: u32 = read(sb, o.sb_dev)?;
    Some((u64::from(dev), ino))
}
