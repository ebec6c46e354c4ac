//! `agentguard status [--json]`.

use std::process::ExitCode;

use agentguard::control::proto::{Reply, Request};
use anyhow::bail;
use clap::Args;

use super::SocketArg;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let reply = args.socket.connect()?.call(&Request::Status)?;
    let Reply::Status(s) = reply else {
        bail!("unexpected reply from the daemon: {reply:?}");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("agentguard {}  backends: {}", s.version, s.backends);
    println!(
        "policy {} ({})  lost events: {}",
        s.policy_origin,
        &s.policy_digest[..16.min(s.policy_digest.len())],
        s.lost_events
    );
    match s.open_budget_tracepoints {
        Some(true) => println!("open budgets: counted by syscall tracepoints (attached)"),
        Some(false) => println!(
            "open budgets: none in the policy (syscall tracepoints not attached: no host-wide syscall cost)"
        ),
        None => {}
    }
    for a in &s.agents {
        println!("\n{} [{}] runs as {}", a.name, a.mode, a.runs_as);
        for b in &a.budgets {
            println!("  budget: {b}");
        }
        if a.instances.is_empty() {
            println!("  (no running instances)");
        }
        for i in &a.instances {
            let pids: Vec<String> = i.pids.iter().map(ToString::to_string).collect();
            println!(
                "  {:<20} {:<8} pids [{}]  allowed {} denied {} (throttled {}) audit-denied {}",
                i.name,
                i.state,
                pids.join(" "),
                i.allowed,
                i.denied,
                i.throttled,
                i.audit_denied
            );
            for u in &i.budget_use {
                println!("    {u}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
