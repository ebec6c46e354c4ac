//! `agentguard policy check FILE` and `agentguard policy apply FILE`.

use std::{path::PathBuf, process::ExitCode};

use agentguard::{
    control::proto::{Reply, Request},
    policy::{self, PolicyError, compile, resolve},
};
use anyhow::{Context, bail};
use clap::Subcommand;

use super::SocketArg;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate a policy without touching the kernel (exit 0 valid, 1 invalid).
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Validate a policy and make the daemon apply it atomically.
    Apply {
        /// The policy file.
        file: PathBuf,
        #[command(flatten)]
        socket: SocketArg,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::Apply { file, socket } => apply(&file, &socket),
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let result = policy::load(file).and_then(|p| {
        resolve::binaries(&p)
            .map(|b| (p, b))
            .map_err(PolicyError::Invalid)
    });
    match result {
        Ok((p, binaries)) => {
            let resolved = resolve::Resolved {
                binaries,
                ..Default::default()
            };
            let compiled = compile::compile(&p, 0, &resolved);
            println!(
                "{}: ok ({} agent(s), {} rule(s), blake3 {})",
                file.display(),
                p.agents.len(),
                compiled.rules.len(),
                p.digest_hex()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ PolicyError::Invalid(_)) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn apply(file: &std::path::Path, socket: &SocketArg) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let reply = socket.connect()?.call(&Request::PolicyApply {
        origin: file.display().to_string(),
        text,
    })?;
    let Reply::Applied {
        digest,
        generation,
        rules,
        warnings,
    } = reply
    else {
        bail!("unexpected reply from the daemon: {reply:?}");
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "applied {} (generation {generation}, {rules} rules, blake3 {digest})",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}
