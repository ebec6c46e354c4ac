//! `agentguard daemon`.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use agentguard::{
    control::{AGENT_SOCKET_ENV, DEFAULT_AGENT_SOCKET},
    daemon::{self, DEFAULT_STATE_DIR, Options},
    dns,
};
use clap::Args;
use tracing_subscriber::EnvFilter;

use super::SocketArg;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// Where the log and daemon state live.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(flatten)]
    socket: SocketArg,
    /// Agent-facing socket: processes inside an agent instance start their sub-agents here.
    #[arg(long, env = AGENT_SOCKET_ENV, default_value = DEFAULT_AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// On a clean exit, also remove the programs: agents are no longer enforced. Without it,
    /// enforcement stays in place after the daemon exits.
    #[arg(long)]
    unload_on_exit: bool,
    /// Longest time in seconds between two lookups of a DNS name (and the interval for names
    /// from the hosts file, which have no TTL). Hidden: tests shorten it; see docs/dns.md.
    #[arg(long, hide = true, value_name = "SECS", default_value_t = dns::timing::DEFAULT_CEILING.as_secs())]
    dns_ttl_ceiling: u64,
    /// Seconds an address stays allowed after it disappeared from its name's answers. Hidden:
    /// tests shorten it; see docs/dns.md.
    #[arg(long, hide = true, value_name = "SECS", default_value_t = dns::timing::DEFAULT_GRACE.as_secs())]
    dns_grace: u64,
}

pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(Options {
        policy: args.policy,
        state_dir: args.state_dir,
        socket: args.socket.socket,
        agent_socket: args.agent_socket,
        unload_on_exit: args.unload_on_exit,
        dns: dns::Timing::new(
            Duration::from_secs(args.dns_ttl_ceiling),
            Duration::from_secs(args.dns_grace),
        ),
    }))?;
    Ok(ExitCode::SUCCESS)
}
