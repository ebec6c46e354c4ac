//! `agentguard denials [--json] [--since DURATION]`: recent refusals, for an agent to read.
//!
//! Inside an agent instance it asks the agent socket, where the daemon answers by the caller's
//! cgroup: its own instance and its sub-agents, nothing of any other agent. Outside one it asks
//! the administrator socket, which lists every instance's.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use agentguard::{
    audit::clock,
    cgroup::Hierarchy,
    control::{
        AGENT_SOCKET_ENV, DEFAULT_AGENT_SOCKET,
        client::Client,
        proto::{Reply, Request},
    },
};
use anyhow::bail;
use clap::Args;

use super::SocketArg;

#[derive(Debug, Args)]
pub struct DenialsArgs {
    /// One JSON object per refusal.
    #[arg(long)]
    json: bool,
    /// Only refusals this recent (`30s`, `10m`, `2h`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    #[command(flatten)]
    socket: SocketArg,
    /// Agent-facing socket, used when `denials` runs inside an agent instance.
    #[arg(long, env = AGENT_SOCKET_ENV, default_value = DEFAULT_AGENT_SOCKET)]
    agent_socket: PathBuf,
}

pub fn run(args: DenialsArgs) -> anyhow::Result<ExitCode> {
    // A sandboxed agent may not be allowed to read /proc/self/cgroup or the mount table:
    // when it cannot tell, it asks the agent socket, which judges it by its cgroup anyway.
    let inside_agent = Hierarchy::discover()
        .and_then(|h| h.contains_pid(std::process::id()))
        .unwrap_or(true);
    let mut client = if inside_agent {
        Client::connect(&args.agent_socket)?
    } else {
        args.socket.connect()?
    };
    let since_ns = args.since.map(|d| {
        let (wall, _) = agentguard::audit::now();
        wall.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    });
    let reply = client.call(&Request::Denials { since_ns })?;
    let Reply::Denials { denials } = reply else {
        bail!("unexpected reply from the daemon: {reply:?}");
    };
    for d in &denials {
        if args.json {
            let mut v = serde_json::to_value(d)?;
            v["time"] = clock::rfc3339(d.wall_ns, 3).into();
            println!("{v}");
        } else {
            // Debug formatting escapes what the agent controls (paths with newlines).
            println!(
                "{} {} {} {:?}: {} [{}]{}",
                clock::rfc3339(d.wall_ns, 3),
                d.instance,
                d.action,
                d.target,
                d.verdict,
                d.reason,
                d.allow_with
                    .as_ref()
                    .map(|a| format!("; allowed by: {a}"))
                    .unwrap_or_default()
            );
        }
    }
    if denials.is_empty() && !args.json {
        eprintln!("no refusals");
    }
    Ok(ExitCode::SUCCESS)
}
