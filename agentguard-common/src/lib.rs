//! The ABI shared by agentguard's eBPF programs and its userspace.
//!
//! Every type that crosses the kernel/user boundary is defined here exactly once, `#[repr(C)]`,
//! with explicit padding fields (so no uninitialised bytes leave the kernel) and a compile-time
//! size assertion (so a layout change is a build error, not a silent misread). Enumerations that
//! travel as integers have stable numeric values: they are written into the audit log and must
//! keep their meaning across releases.
//!
//! The `user` feature adds userspace-only views: `aya::Pod` impls and safe decoding.
#![no_std]

#[macro_use]
mod stable;

pub mod agent;
pub mod event;
pub mod maps;
pub mod offsets;
pub mod rules;
pub mod verdict;

#[cfg(feature = "user")]
pub mod user;

/// Bumped whenever a map layout or an event layout changes incompatibly. Pinned state lives under
/// a bpffs directory named after it, so a new daemon never reads maps written by an old layout.
pub const ABI_VERSION: u32 = 1;

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
