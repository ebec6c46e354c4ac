//! Operator -> daemon: the control socket protocol (JSON lines, bounded in length), its client,
//! and peer checks on both ends.

pub mod client;
pub mod frame;
pub mod peer;
pub mod proto;

/// Default path of the administrator socket.
pub const DEFAULT_SOCKET: &str = "/run/agentguard/agentguard.sock";
/// Environment variable naming the socket for every client command.
pub const SOCKET_ENV: &str = "AGENTGUARD_SOCKET";
/// Default path of the agent-facing socket (world-connectable; agents start sub-agents there).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/agentguard/agent.sock";
/// Environment variable naming the agent socket.
pub const AGENT_SOCKET_ENV: &str = "AGENTGUARD_AGENT_SOCKET";
