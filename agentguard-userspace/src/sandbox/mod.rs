//! What `agentguard run` applies to itself between joining its instance cgroup and exec:
//! Landlock file rules (fallback backend), no_new_privs, capabilities, user switch, and closing
//! every inherited file descriptor. Everything here runs in the single-threaded launcher.

pub mod elf;
pub mod landlock;
pub mod privs;
pub mod seccomp;
