//! Every map, declared once. The maps userspace shares (policy, state, events, budgets, counters)
//! are pinned by name so that enforcement outlives the daemon and a restarted daemon re-adopts
//! the same state (see the userspace loader); their names must equal agentguard-common's
//! `maps::*`, which a userspace unit test checks against the built object. [`SENT`] and
//! [`SCRATCH`] are the programs' own memory: not pinned, recreated empty on each load.

use crate::scratch::{SLOTS, Slot};
use agentguard_common::{
    agent::{
        AgentConfig, AgentKey, Bucket, BucketKey, CgroupEntry, Counters, EventBudget, GlobalState,
    },
    maps::{
        ALERTS_BYTES, EVENTS_BYTES, LOST_SLOTS, MAX_AGENT_BUCKETS, MAX_AGENT_CONFIGS, MAX_CGROUPS,
        MAX_COUNTERS, MAX_EXEC_RULES, MAX_NET_RULES, MAX_PATH_RULES, MAX_PROC_BUCKETS,
        MAX_UNIX_RULES,
    },
    offsets::KernelOffsets,
    rules::{ExecKey, NetKey, PathKey, RuleRef, UnixKey},
};
use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

#[map(name = "AG_CGROUPS")]
pub static CGROUPS: HashMap<u64, CgroupEntry> = HashMap::pinned(MAX_CGROUPS, 0);

#[map(name = "AG_AGENT_CFG")]
pub static AGENT_CONFIG: HashMap<AgentKey, AgentConfig> = HashMap::pinned(MAX_AGENT_CONFIGS, 0);

#[map(name = "AG_NET_RULES")]
pub static NET_RULES: LpmTrie<NetKey, RuleRef> = LpmTrie::pinned(MAX_NET_RULES, 0);

#[map(name = "AG_EXEC_RULES")]
pub static EXEC_RULES: HashMap<ExecKey, RuleRef> = HashMap::pinned(MAX_EXEC_RULES, 0);

#[map(name = "AG_PATH_RULES")]
pub static PATH_RULES: LpmTrie<PathKey, RuleRef> = LpmTrie::pinned(MAX_PATH_RULES, 0);

#[map(name = "AG_STATE")]
pub static STATE: Array<GlobalState> = Array::pinned(1, 0);

#[map(name = "AG_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "AG_ALERTS")]
pub static ALERTS: RingBuf = RingBuf::pinned(ALERTS_BYTES, 0);

#[map(name = "AG_LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::pinned(LOST_SLOTS, 0);

#[map(name = "AG_EVT_BUDGET")]
pub static EVENT_BUDGETS: HashMap<u64, EventBudget> = HashMap::pinned(MAX_CGROUPS, 0);

#[map(name = "AG_PROC_BKT")]
pub static PROC_BUCKETS: LruHashMap<BucketKey, Bucket> = LruHashMap::pinned(MAX_PROC_BUCKETS, 0);

#[map(name = "AG_AGENT_BKT")]
pub static AGENT_BUCKETS: HashMap<BucketKey, Bucket> = HashMap::pinned(MAX_AGENT_BUCKETS, 0);

#[map(name = "AG_UNIX_RULES")]
pub static UNIX_RULES: HashMap<UnixKey, RuleRef> = HashMap::pinned(MAX_UNIX_RULES, 0);

#[map(name = "AG_COUNTERS")]
pub static COUNTERS: PerCpuHashMap<u64, Counters> = PerCpuHashMap::pinned(MAX_COUNTERS, 0);

/// A datagram destination per socket, for counting only new destinations against budgets.
#[repr(C)]
pub struct SentKey {
    /// `bpf_get_socket_cookie` of the sending socket.
    pub cookie: u64,
    /// Destination address (IPv6 or IPv4-mapped).
    pub addr: [u8; 16],
    /// Destination port, network byte order.
    pub port_be: [u8; 2],
    /// Explicit padding.
    pub _pad: [u8; 6],
}

/// Destinations each socket has sent to recently (LRU: old ones are forgotten).
#[map(name = "AG_SENT")]
pub static SENT: LruHashMap<SentKey, u8> = LruHashMap::with_max_entries(65_536, 0);

/// Per-CPU scratch space for path lookups (too large for the 512-byte BPF stack), one slot per
/// program run (see [`crate::scratch`]).
#[map(name = "AG_SCRATCH")]
pub static SCRATCH: PerCpuArray<Slot<crate::file::Scratch>> =
    PerCpuArray::with_max_entries(SLOTS, 0);

/// Per-CPU scratch space for the AF_UNIX address being judged (a 120-byte key, copied into the
/// event too: kept off the 512-byte BPF stack), one slot per program run.
#[map(name = "AG_UNIX_SCRATCH")]
pub static UNIX_SCRATCH: PerCpuArray<Slot<UnixScratch>> = PerCpuArray::with_max_entries(SLOTS, 0);

/// The key being judged, and room after it for the NUL `bpf_probe_read_kernel_str` writes
/// after a pathname that fills all of `sun_path`.
#[repr(C)]
pub struct UnixScratch {
    /// The key.
    pub key: UnixKey,
    /// Written by the helper, never read.
    pub terminator: u32,
}

/// `struct file::f_path`, separately from [`AG_OFFSETS`]: the verifier must see it as a
/// constant (read straight from frozen `.rodata`) to accept `bpf_d_path(&file->f_path)`.
#[unsafe(no_mangle)]
pub static AG_FILE_F_PATH: Global<u32> = Global::new(0);

/// Kernel struct offsets, set by the loader from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static AG_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    binprm_file: 0,
    binprm_filename: 0,
    file_inode: 0,
    file_path: 0,
    file_mode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    dentry_name: 0,
    dentry_inode: 0,
    binprm_buf: 0,
    file_flags: 0,
    task_tgid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    path_mnt: 0,
    mount_mnt: 0,
    mount_mnt_ns: 0,
    path_dentry: 0,
    sb_magic: 0,
    dentry_parent: 0,
    dentry_name_len: 0,
    vfsmount_mnt_root: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    task_fs: 0,
    fs_root: 0,
    unix_sock_addr: 0,
    unix_address_len: 0,
    unix_address_name: 0,
    socket_sk: 0,
    sock_addr_kern_uaddr: 0,
    sock_addr_kern_uaddrlen: 0,
    valid: 0,
});
