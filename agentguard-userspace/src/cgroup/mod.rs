//! Agent identity is a cgroup: `<cgroup2>/agentguard/<agent>/<n>` for an instance of an agent and
//! `<instance>/<sub-agent>/<m>` for a sub-agent instance nested inside it, so freezing or
//! killing an instance covers its sub-agents.

mod control;
mod hierarchy;

pub use control::{ControlError, freeze, kill, populated, procs, thaw, wait_unpopulated};
pub use hierarchy::{CgroupError, Hierarchy, Instance};

/// Name of agentguard's directory under the cgroup2 mount.
pub const ROOT_NAME: &str = "agentguard";
