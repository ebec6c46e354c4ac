//! `agentguard credential checkout|return NAME`: inside an agent instance, a credential its
//! policy grants (`credentials`), for a tool the gateway cannot front.
//!
//! Always over the agent socket: the daemon knows the caller by its cgroup, not by anything
//! this command sends.

use std::{path::PathBuf, process::ExitCode};

use agentguard::control::{
    AGENT_SOCKET_ENV, DEFAULT_AGENT_SOCKET,
    client::Client,
    proto::{Reply, Request},
};
use anyhow::bail;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct AgentSocketArg {
    /// Agent-facing socket of the daemon.
    #[arg(long, env = AGENT_SOCKET_ENV, default_value = DEFAULT_AGENT_SOCKET)]
    agent_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Print a granted credential's value on standard output (lease and TTL on standard error).
    Checkout {
        /// Secret name, as the agent's `credentials` lists it.
        name: String,
        /// Print `{"name", "value", "lease", "ttl_s"}` as one JSON object instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: AgentSocketArg,
    },
    /// End this instance's lease on a credential.
    Return {
        /// Secret name.
        name: String,
        #[command(flatten)]
        socket: AgentSocketArg,
    },
}

pub fn run(cmd: CredentialCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CredentialCommand::Checkout { name, json, socket } => {
            let reply = Client::connect(&socket.agent_socket)?
                .call(&Request::CredentialCheckout { name })?;
            let Reply::Credential {
                name,
                value,
                lease,
                ttl_s,
            } = reply
            else {
                bail!("unexpected reply from the daemon: {reply:?}");
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "value": value.0, "lease": lease, "ttl_s": ttl_s})
                );
            } else {
                println!("{}", value.0);
                eprintln!("credential {name:?}: lease {lease}, {ttl_s}s left");
            }
        }
        CredentialCommand::Return { name, socket } => {
            let reply = Client::connect(&socket.agent_socket)?
                .call(&Request::CredentialReturn { name: name.clone() })?;
            let Reply::CredentialReturned { lease } = reply else {
                bail!("unexpected reply from the daemon: {reply:?}");
            };
            println!("credential {name:?}: lease {lease} ended");
        }
    }
    Ok(ExitCode::SUCCESS)
}
