//! `agentguard teardown [--force]`: how an operator uninstalls and how tests start clean.

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use agentguard::{
    cgroup::{self, Hierarchy},
    control::proto::Request,
    ebpf::pins,
};
use anyhow::{Context, bail};
use clap::Args;

use super::SocketArg;

#[derive(Debug, Args)]
pub struct TeardownArgs {
    /// Kill running agents (and stop a running daemon) instead of refusing.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn run(args: TeardownArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("teardown must run as root");
    }
    if let Ok(mut client) = args.socket.connect() {
        if !args.force {
            bail!(
                "a daemon is running at {}: stop it first, or use --force",
                args.socket.socket.display()
            );
        }
        let _ = client.call(&Request::Shutdown { unload: true });
        wait_gone(&args.socket.socket, Duration::from_secs(15))?;
    }
    let hierarchy = Hierarchy::discover()?;
    if hierarchy.exists() && cgroup::populated(hierarchy.root())? {
        let pids = cgroup::procs(hierarchy.root())?;
        if !args.force {
            bail!(
                "agent processes are still running ({}): use --force to kill them",
                pids.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        cgroup::kill(hierarchy.root(), Duration::from_secs(10))
            .context("cannot kill agent processes")?;
        println!("killed {} agent process(es)", pids.len());
    }
    pins::remove_tree(Path::new(pins::ROOT))
        .with_context(|| format!("cannot remove {}", pins::ROOT))?;
    hierarchy.remove_all()?;
    println!("removed agentguard programs, maps and cgroups");
    Ok(ExitCode::SUCCESS)
}

/// Waits for a daemon asked to shut down to stop answering.
fn wait_gone(socket: &Path, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_ok() {
        if start.elapsed() > timeout {
            bail!("the daemon at {} did not stop", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
