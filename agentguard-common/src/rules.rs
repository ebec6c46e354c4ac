//! Rule keys. Each lookup is O(1) (hash) or O(key length) (LPM trie), never O(rules).
//!
//! The LPM keys put the exact-match fields (agent, generation, port or access) first, so a
//! prefix length always covers them in full and only the address or path bits vary.

use core::mem::size_of;

/// The value of every rule map: which policy rule matched, for the log.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    /// Index of the rule in the compiled policy of that generation.
    pub rule_id: u32,
}
const _: () = assert!(size_of::<RuleRef>() == 4);

/// `rule_id` of an event no rule matched (default deny, or no rules of that kind).
pub const NO_RULE: u32 = u32::MAX;

/// Data of an LPM key in [`crate::maps::NET_RULES`]. Addresses are IPv6; IPv4 is stored and
/// looked up as IPv4-mapped (`::ffff:a.b.c.d`), so one trie serves both families and an
/// IPv4-mapped IPv6 destination is judged exactly as the IPv4 address it stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetKey {
    /// Agent id.
    pub agent_id: u32,
    /// Policy generation.
    pub generation: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Destination port, network byte order.
    pub port_be: [u8; 2],
    /// Destination address (IPv6 or IPv4-mapped), network byte order.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NetKey>() == 24);

/// Bits of [`NetKey`] before the address: always matched in full.
pub const NET_KEY_FIXED_BITS: u32 = 64;

/// Data of an LPM key in [`crate::maps::PATH_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKey {
    /// Agent id.
    pub agent_id: u32,
    /// Policy generation.
    pub generation: u8,
    /// [`crate::verdict::ACCESS_READ`] or [`crate::verdict::ACCESS_WRITE`].
    pub access: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// Path bytes; a prefix rule is stored with a trailing `/`.
    pub path: [u8; PATH_KEY_LEN],
}
const _: () = assert!(size_of::<PathKey>() == 256);

/// Bytes of path a [`PathKey`] holds: the LPM trie allows 256 bytes of key data in all.
pub const PATH_KEY_LEN: usize = 248;
/// Bits of [`PathKey`] before the path: always matched in full.
pub const PATH_KEY_FIXED_BITS: u32 = 64;

impl Default for PathKey {
    fn default() -> Self {
        Self {
            agent_id: 0,
            generation: 0,
            access: 0,
            _pad: [0; 2],
            path: [0; PATH_KEY_LEN],
        }
    }
}

/// Key of [`crate::maps::EXEC_RULES`]: a binary's identity as the kernel sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecKey {
    /// Agent id.
    pub agent_id: u32,
    /// Policy generation.
    pub generation: u32,
    /// The kernel's `s_dev` of the file's superblock (`major << 20 | minor`, not stat's encoding).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}
const _: () = assert!(size_of::<ExecKey>() == 24);

/// Bytes of `sun_path` in `struct sockaddr_un`.
pub const UNIX_PATH_LEN: usize = 108;

/// Key of [`crate::maps::UNIX_RULES`]: one AF_UNIX address, matched exactly.
///
/// `path` holds the address in the kernel's own encoding: a pathname socket's path up to (not
/// including) its first NUL byte, or for an abstract socket a NUL byte followed by the name.
/// `len` counts the significant bytes (an abstract name may contain or end in NUL bytes, so
/// the zero padding alone cannot tell `\0a` from `\0a\0`); the rest of `path` is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixKey {
    /// Agent id.
    pub agent_id: u32,
    /// Policy generation.
    pub generation: u32,
    /// Significant bytes of `path`.
    pub len: u32,
    /// The address, zero-padded.
    pub path: [u8; UNIX_PATH_LEN],
}
const _: () = assert!(size_of::<UnixKey>() == 12 + UNIX_PATH_LEN);

impl Default for UnixKey {
    fn default() -> Self {
        Self {
            agent_id: 0,
            generation: 0,
            len: 0,
            path: [0; UNIX_PATH_LEN],
        }
    }
}

/// Converts a userspace `st_dev` (glibc encoding) to the kernel's internal `s_dev`.
pub const fn kernel_dev(major: u32, minor: u32) -> u64 {
    ((major as u64) << 20) | minor as u64
}
