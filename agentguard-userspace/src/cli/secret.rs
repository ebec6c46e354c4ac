//! `agentguard secret set|list|rm`: the credentials the tool gateway injects.

use std::{io::Read, process::ExitCode};

use agentguard::control::proto::{Reply, Request, SecretValue};
use anyhow::{Context, bail};
use clap::Subcommand;

use super::SocketArg;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret; the value is read from standard input (one trailing newline is dropped).
    Set {
        /// Secret name, as a tool's `credential` names it.
        name: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List secret names (never values).
    List {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Remove a secret.
    Rm {
        /// Secret name.
        name: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

pub fn run(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Set { name, socket } => {
            let mut value = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut value)
                .context("cannot read the secret from standard input")?;
            let value = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value)
                .to_owned();
            let reply = socket.connect()?.call(&Request::SecretSet {
                name: name.clone(),
                value: SecretValue(value),
            })?;
            let Reply::SecretStored { replaced } = reply else {
                bail!("unexpected reply from the daemon: {reply:?}");
            };
            println!(
                "secret {name:?} {}",
                if replaced { "replaced" } else { "stored" }
            );
        }
        SecretCommand::List { socket } => {
            let reply = socket.connect()?.call(&Request::SecretList)?;
            let Reply::Secrets { names } = reply else {
                bail!("unexpected reply from the daemon: {reply:?}");
            };
            for n in names {
                println!("{n}");
            }
        }
        SecretCommand::Rm { name, socket } => {
            let reply = socket
                .connect()?
                .call(&Request::SecretRm { name: name.clone() })?;
            let Reply::SecretRemoved { existed } = reply else {
                bail!("unexpected reply from the daemon: {reply:?}");
            };
            if !existed {
                eprintln!("no secret {name:?}");
                return Ok(ExitCode::FAILURE);
            }
            println!("secret {name:?} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
