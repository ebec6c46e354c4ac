//! `agentguard tag --agent NAME --pid PID`.

use std::process::ExitCode;

use agentguard::control::proto::{Reply, Request};
use anyhow::bail;
use clap::Args;

use super::SocketArg;

#[derive(Debug, Args)]
pub struct TagArgs {
    /// Agent (or `agent/sub-agent`) to adopt the process into.
    #[arg(long)]
    agent: String,
    /// The running process.
    #[arg(long)]
    pid: u32,
    /// For a sub-agent: the parent instance to nest in (default: the newest one).
    #[arg(long)]
    parent: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn run(args: TagArgs) -> anyhow::Result<ExitCode> {
    let reply = args.socket.connect()?.call(&Request::Tag {
        agent: args.agent,
        pid: args.pid,
        parent: args.parent,
    })?;
    let Reply::Tagged { instance, warnings } = reply else {
        bail!("unexpected reply from the daemon: {reply:?}");
    };
    println!("{instance}");
    for w in warnings {
        eprintln!("agentguard tag: warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}
