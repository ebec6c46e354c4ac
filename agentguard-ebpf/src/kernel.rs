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

/// `MNT_NS_INTERNAL` (`ERR_PTR(-EINVAL)`, fs/mount.h): the namespace of the kernel's own mounts
/// (`kern_mount`) and of the private clones overlayfs makes of its layers.
const MNT_NS_INTERNAL: u64 = -22i64 as u64;

/// Whether `path` is on a mount no namespace holds ([`MNT_NS_INTERNAL`]): a pipe or
/// memfd reopened through `/proc/self/fd`, or a layer's file overlayfs opens for itself. Nothing
/// an agent could name by a path of its own lives there. A mount of *another* namespace (one the
/// agent reaches through `/proc/<pid>/root` of a process that made one) is not internal: the
/// file there is the same file, judged by its path like any other.
#[inline(always)]
pub fn on_internal_mount(o: &KernelOffsets, path: *const u8) -> bool {
    read::<*const u8>(path, o.path_mnt)
        .map(|vfsmount| vfsmount.wrapping_sub(o.mount_mnt as usize))
        .and_then(|mount| read::<u64>(mount, o.mount_mnt_ns))
        // Unreadable: judge it rather than let it pass.
        .is_some_and(|ns| ns == MNT_NS_INTERNAL)
}

/// Filesystems that hold agentguard's own state: an agent writing there could leave its
/// cgroup (cgroupfs) or unpin programs (bpffs).
const PROTECTED_MAGICS: [u64; 3] = [
    0x6367_7270, // CGROUP2_SUPER_MAGIC
    0x0027_e0eb, // CGROUP_SUPER_MAGIC
    0xcafe_4a11, // BPF_FS_MAGIC
];

/// Whether the filesystem of `inode` is one of [`PROTECTED_MAGICS`].
#[inline(always)]
pub fn inode_protected(o: &KernelOffsets, inode: *const u8) -> bool {
    read::<*const u8>(inode, o.inode_sb)
        .and_then(|sb| read::<u64>(sb, o.sb_magic))
        .is_some_and(|m| PROTECTED_MAGICS.contains(&m))
}

/// [`inode_protected`] for the inode of a `struct path`.
#[inline(always)]
pub fn path_protected(o: &KernelOffsets, path: *const u8) -> bool {
    read::<*const u8>(path, o.path_dentry)
        .and_then(|d| read::<*const u8>(d, o.dentry_inode))
        .is_some_and(|inode| inode_protected(o, inode))
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
