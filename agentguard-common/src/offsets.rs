//! Kernel struct field offsets, read by the daemon from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) and handed to the programs as a read-only global before load.
//!
//! Rust eBPF cannot emit CO-RE relocations, so this is how the programs stay correct on every
//! kernel: no offset is compiled in, each is looked up by struct and field name at start-up.

use core::mem::size_of;

/// Name of the global the programs read offsets from.
pub const GLOBAL_NAME: &str = "AG_OFFSETS";
/// Name of the global holding `struct file::f_path` on its own: the verifier must see that one
/// as a constant to accept `bpf_d_path(&file->f_path)`.
pub const FILE_F_PATH_GLOBAL: &str = "AG_FILE_F_PATH";

/// Byte offsets of the kernel struct fields the programs read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct linux_binprm::file`.
    pub binprm_file: u32,
    /// `struct linux_binprm::filename`.
    pub binprm_filename: u32,
    /// `struct file::f_inode`.
    pub file_inode: u32,
    /// `struct file::f_path`.
    pub file_path: u32,
    /// `struct file::f_mode`.
    pub file_mode: u32,
    /// `struct inode::i_ino`.
    pub inode_ino: u32,
    /// `struct inode::i_sb`.
    pub inode_sb: u32,
    /// `struct super_block::s_dev`.
    pub sb_dev: u32,
    /// `struct dentry::d_name` + `struct qstr::name`.
    pub dentry_name: u32,
    /// `struct dentry::d_inode`.
    pub dentry_inode: u32,
    /// `struct linux_binprm::buf` (the first bytes of the file being executed).
    pub binprm_buf: u32,
    /// `struct file::f_flags` (open flags; `__FMODE_EXEC` marks an exec's open).
    pub file_flags: u32,
    /// `struct task_struct::tgid`.
    pub task_tgid: u32,
    /// `struct task_struct::cgroups` (the task's `css_set`).
    pub task_cgroups: u32,
    /// `struct css_set::dfl_cgrp` (its cgroup v2 cgroup).
    pub css_set_dfl_cgrp: u32,
    /// `struct cgroup::kn`.
    pub cgroup_kn: u32,
    /// `struct kernfs_node::id` (the cgroup id).
    pub kernfs_node_id: u32,
    /// `struct path::mnt`.
    pub path_mnt: u32,
    /// `struct mount::mnt` (the `vfsmount` embedded in a `struct mount`).
    pub mount_mnt: u32,
    /// `struct mount::mnt_ns`.
    pub mount_mnt_ns: u32,
    /// `struct path::dentry`.
    pub path_dentry: u32,
    /// `struct super_block::s_magic`.
    pub sb_magic: u32,
    /// `struct dentry::d_parent`.
    pub dentry_parent: u32,
    /// `struct dentry::d_name` + `struct qstr::len`.
    pub dentry_name_len: u32,
    /// `struct vfsmount::mnt_root`.
    pub vfsmount_mnt_root: u32,
    /// `struct mount::mnt_parent`.
    pub mount_parent: u32,
    /// `struct mount::mnt_mountpoint`.
    pub mount_mountpoint: u32,
    /// `struct task_struct::fs`.
    pub task_fs: u32,
    /// `struct fs_struct::root` (a `struct path`: the task's root directory).
    pub fs_root: u32,
    /// `struct unix_sock::addr` (the socket's bound `struct unix_address`).
    pub unix_sock_addr: u32,
    /// `struct unix_address::len`.
    pub unix_address_len: u32,
    /// `struct unix_address::name` (a `struct sockaddr_un`).
    pub unix_address_name: u32,
    /// `struct socket::sk`.
    pub socket_sk: u32,
    /// `struct bpf_sock_addr_kern::uaddr` (the address a cgroup sock_addr program judges).
    pub sock_addr_kern_uaddr: u32,
    /// `struct bpf_sock_addr_kern::uaddrlen`; 0 on kernels before 6.7, which have neither the
    /// field nor the AF_UNIX cgroup hooks that need it.
    pub sock_addr_kern_uaddrlen: u32,
    /// Non-zero once filled in by the daemon; programs that need offsets refuse to judge without.
    pub valid: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 144);
