//! Events the programs send through the [`crate::maps::EVENTS`] ring buffer.
//!
//! Every event starts with an [`EventHeader`]; its `kind` says which struct follows. Kinds are
//! stable numbers (they reach the audit log). The kernel never sends [`EventKind::Lost`]: the
//! daemon synthesises it from the [`crate::maps::LOST`] counter so a gap shows in the chain.

use core::mem::size_of;

use crate::COMM_LEN;

stable_enum! {
    /// The kind of an event. Stable numbers.
    pub enum EventKind: u16, from_u16 {
        /// A TCP or UDP connect ([`NetEvent`]).
        Connect = 1 => "connect",
        /// A UDP/raw send with an explicit destination ([`NetEvent`]).
        Send = 2 => "send",
        /// An exec ([`ExecEvent`]).
        Exec = 3 => "exec",
        /// A file open ([`FileEvent`]).
        FileOpen = 4 => "file-open",
        /// A path operation: create, delete, rename, link, truncate, ... ([`FileEvent`]).
        PathOp = 5 => "path-op",
        /// A namespace, mount or ptrace attempt ([`FileEvent`] with the op and no path).
        Privileged = 6 => "privileged",
        /// An AF_UNIX stream/seqpacket connect or datagram connect ([`FileEvent`]: op
        /// [`FileOp::UnixConnect`], the address in `path`, `@` for an abstract name).
        UnixConnect = 7 => "unix-connect",
        /// An AF_UNIX datagram sent to an address ([`FileEvent`]: op [`FileOp::UnixSend`]).
        UnixSend = 8 => "unix-send",
        /// Kernel events were dropped (synthesised by the daemon, never sent by the kernel).
        Lost = 15 => "lost",
    }
}

/// The path or file name in the event was cut to fit.
pub const EVENT_TRUNCATED: u32 = 1 << 0;
/// A budget is exhausted and its policy asks the daemon to freeze the instance.
pub const EVENT_ESCALATE_FREEZE: u32 = 1 << 1;
/// A budget is exhausted and its policy asks the daemon to kill the instance.
pub const EVENT_ESCALATE_KILL: u32 = 1 << 2;
/// The process is inside the agentguard subtree but in no known instance (fail closed).
pub const EVENT_UNKNOWN_CGROUP: u32 = 1 << 3;
/// The agent's own rules allowed it; a parent agent's rules did not.
pub const EVENT_PARENT_DENIED: u32 = 1 << 4;
/// The path was too long to judge (denied).
pub const EVENT_PATH_TOO_LONG: u32 = 1 << 5;
/// The action was judged against the agent's own `/proc/<pid>` entries (`/proc/self`).
pub const EVENT_PROC_SELF: u32 = 1 << 6;
/// The action targeted agentguard's own state (cgroupfs, bpffs), which no agent may change.
pub const EVENT_PROTECTED_FS: u32 = 1 << 7;
/// Every per-CPU scratch slot was taken by runs preempted inside agentguard's programs on this
/// CPU: the action could not be judged, so it was refused (fail closed).
pub const EVENT_SCRATCH_BUSY: u32 = 1 << 8;

/// Common start of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// [`EventKind`] as a number.
    pub kind: u16,
    /// [`crate::verdict::Verdict`] as a number.
    pub verdict: u8,
    /// [`crate::verdict::Backend`] as a number.
    pub backend: u8,
    /// Matching rule ([`crate::rules::NO_RULE`] when none).
    pub rule_id: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the action was judged.
    pub ktime_ns: u64,
    /// cgroup id of the instance the process runs in.
    pub cgroup_id: u64,
    /// Agent id (0 when unknown).
    pub agent_id: u32,
    /// Policy generation the verdict used.
    pub generation: u32,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real uid of the task.
    pub uid: u32,
    /// `EVENT_*` flags.
    pub flags: u32,
    /// The task's comm, NUL-padded.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<EventHeader>() == 64);

/// TCP/UDP protocol numbers as carried in [`NetEvent::protocol`].
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;

/// A network verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetEvent {
    /// Common header.
    pub header: EventHeader,
    /// Destination, IPv6 or IPv4-mapped, network byte order.
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// Address family of the socket (`AF_INET` or `AF_INET6`).
    pub family: u16,
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`], ...).
    pub protocol: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<NetEvent>() == 64 + 24);

/// Bytes of file name an [`ExecEvent`] carries.
pub const EXEC_PATH_LEN: usize = 256;

/// An exec verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    /// Common header.
    pub header: EventHeader,
    /// Kernel `s_dev` of the binary.
    pub dev: u64,
    /// Inode number of the binary.
    pub ino: u64,
    /// The file name the exec was asked for (as passed to execve), NUL-terminated.
    pub filename: [u8; EXEC_PATH_LEN],
}
const _: () = assert!(size_of::<ExecEvent>() == 64 + 16 + EXEC_PATH_LEN);

/// Bytes of path a [`FileEvent`] carries.
pub const FILE_PATH_LEN: usize = 256;

stable_enum! {
    /// File and privileged operations, as carried in [`FileEvent::op`]. Stable numbers.
    pub enum FileOp: u16, from_u16 {
        /// open(2) and friends.
        Open = 1 => "open",
        /// Creating a regular file, device or socket.
        Create = 2 => "create",
        /// mkdir.
        Mkdir = 3 => "mkdir",
        /// unlink.
        Unlink = 4 => "unlink",
        /// rmdir.
        Rmdir = 5 => "rmdir",
        /// rename (source or destination).
        Rename = 6 => "rename",
        /// hard link.
        Link = 7 => "link",
        /// symlink.
        Symlink = 8 => "symlink",
        /// truncate.
        Truncate = 9 => "truncate",
        /// chmod.
        Chmod = 10 => "chmod",
        /// chown.
        Chown = 11 => "chown",
        /// mount, remount, bind mount, pivot_root.
        Mount = 20 => "mount",
        /// creating a user namespace.
        UserNamespace = 21 => "user-namespace",
        /// ptrace (or /proc access of ptrace strength) to a process outside the instance.
        Ptrace = 22 => "ptrace",
        /// a `bpf(2)` command (the path field says which: `cmd=N`).
        Bpf = 23 => "bpf",
        /// a signal to a process outside the instance and its sub-agents (`sig=N`, target pid).
        Signal = 24 => "signal",
        /// creating a socket of a kind agentguard does not judge (`family=F type=T protocol=P`).
        Socket = 25 => "socket",
        /// connecting an AF_UNIX socket (the address in the path field).
        UnixConnect = 26 => "unix-connect",
        /// sending an AF_UNIX datagram to an address (the address in the path field).
        UnixSend = 27 => "unix-send",
    }
}

/// A file or privileged-operation verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEvent {
    /// Common header.
    pub header: EventHeader,
    /// [`FileOp`] as a number.
    pub op: u16,
    /// Access asked for: [`crate::verdict::ACCESS_READ`] | [`crate::verdict::ACCESS_WRITE`].
    pub access: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// For [`FileOp::Ptrace`] and [`FileOp::Signal`]: the target pid; otherwise 0.
    pub target_pid: u32,
    /// The path as the kernel resolved it, NUL-terminated.
    pub path: [u8; FILE_PATH_LEN],
}
const _: () = assert!(size_of::<FileEvent>() == 64 + 8 + FILE_PATH_LEN);
