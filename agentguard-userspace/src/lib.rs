//! agentguard: kernel-enforced zero trust for AI agents on Linux.
//!
//! The library behind the `agentguard` binary. Three one-directional flows:
//! - policy -> kernel: [`policy`] (parse, validate, resolve, compile) then [`ebpf::writer`];
//! - kernel -> log: [`events`] (ring buffer ingestion) then [`audit`] (the chained log);
//! - operator -> agents: [`control`] (socket protocol) then [`daemon`] and [`cgroup`].
pub mod audit;
pub mod policy;
pub mod sys;
