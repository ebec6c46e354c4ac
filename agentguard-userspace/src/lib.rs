//! agentguard: kernel-enforced zero trust for AI agents on Linux.
//!
//! The library behind the `agentguard` binary. Three one-directional flows:
//! - policy -> kernel: [`policy`] (parse, validate, resolve, compile; [`dns`] keeps the
//!   addresses of DNS names current) then [`ebpf::maps`] (the only
//!   writer of the maps);
//! - kernel -> log: [`events`] (ring buffer ingestion) then [`audit`] (the chained log);
//! - operator -> agents: [`control`] (socket protocol) then [`daemon`] and [`cgroup`].
pub mod audit;
pub mod cgroup;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod ebpf;
pub mod events;
pub mod policy;
pub mod sandbox;
pub mod sys;
