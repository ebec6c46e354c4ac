//! Command-line interface: one file per subcommand, each thin over the library.

mod completions;
mod credential;
mod daemon;
mod denials;
mod doctor;
mod kill_switch;
mod log;
mod log_prune;
mod man;
mod policy;
mod run;
mod secret;
mod status;
mod tag;
mod teardown;

use std::{path::PathBuf, process::ExitCode};

use agentguard::control::{DEFAULT_SOCKET, SOCKET_ENV, client::Client};
use clap::{Args, Parser, Subcommand};

/// Kernel-enforced zero trust for AI agents: every agent in its own cgroup, an allowlist of
/// binaries, destinations and paths, budgets, a kill switch and a tamper-evident log.
#[derive(Debug, Parser)]
#[command(name = "agentguard", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the enforcement daemon in the foreground.
    Daemon(Box<daemon::DaemonArgs>),
    /// Run a command as a new instance of an agent.
    Run(run::RunArgs),
    /// Adopt a running process into a new instance of an agent.
    Tag(tag::TagArgs),
    /// Freeze agent instances (and their sub-agents).
    Freeze(kill_switch::KillSwitchArgs),
    /// Thaw frozen agent instances.
    Thaw(kill_switch::KillSwitchArgs),
    /// Kill agent instances (and every process in them).
    Kill(kill_switch::KillSwitchArgs),
    /// Show agents, instances, budgets and verdict counts.
    Status(status::StatusArgs),
    /// Read, verify and anchor the tamper-evident log.
    Log(log::LogArgs),
    /// Check or apply a policy file.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Store, list and remove the credentials the tool gateway injects.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Inside an agent: check out (and return) a credential its policy grants.
    #[command(subcommand)]
    Credential(credential::CredentialCommand),
    /// Report what this host can enforce and which backend enforces it.
    Doctor(doctor::DoctorArgs),
    /// Recent refusals: inside an agent, its own and its sub-agents'; what would allow each.
    Denials(denials::DenialsArgs),
    /// Remove every agentguard program, map pin and cgroup (uninstall; clean test state).
    Teardown(teardown::TeardownArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the manual page, or write every page into a directory.
    Man(man::ManArgs),
}

/// The control socket of a daemon.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// Control socket of the daemon.
    #[arg(long, env = SOCKET_ENV, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

impl SocketArg {
    /// Connects to the daemon.
    pub fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.socket)?)
    }
}

/// Runs the parsed command.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Daemon(a) => daemon::run(*a),
        Command::Run(a) => run::run(a),
        Command::Tag(a) => tag::run(a),
        Command::Freeze(a) => kill_switch::run(kill_switch::Op::Freeze, a),
        Command::Thaw(a) => kill_switch::run(kill_switch::Op::Thaw, a),
        Command::Kill(a) => kill_switch::run(kill_switch::Op::Kill, a),
        Command::Status(a) => status::run(a),
        Command::Policy(c) => policy::run(c),
        Command::Log(a) => log::run(a),
        Command::Secret(c) => secret::run(c),
        Command::Credential(c) => credential::run(c),
        Command::Doctor(a) => doctor::run(a),
        Command::Denials(a) => denials::run(a),
        Command::Teardown(a) => teardown::run(a),
        Command::Completions(a) => completions::run(&a),
        Command::Man(a) => man::run(&a),
    }
}

/// An error and its causes on one line, skipping causes whose text the message already
/// includes (library errors often quote their source).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
