//! The `agentguard` binary: parses the command line and hands over to one module per
//! subcommand. Only `daemon` starts an async runtime: client commands stay single-threaded,
//! which `run` needs to apply Landlock and credentials to the whole process before exec.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentguard: {}", cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
