//! `agentguard run --agent NAME [--user USER[:GROUP]] -- CMD [ARGS...]`.

use std::{
    ffi::{CString, OsString},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    process::ExitCode,
    str::FromStr,
};

use agentguard::{
    cgroup::Hierarchy,
    control::{
        AGENT_SOCKET_ENV, DEFAULT_AGENT_SOCKET,
        client::Client,
        proto::{Reply, Request},
    },
    sandbox::{landlock, privs},
};
use anyhow::{Context, bail};
use clap::Args;

use super::SocketArg;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Agent (or `agent/sub-agent`) to run as.
    #[arg(long)]
    agent: String,
    /// For a sub-agent: the parent instance to nest in (default: the newest one).
    #[arg(long)]
    parent: Option<String>,
    /// Run as this user (and group) instead of root.
    #[arg(long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// Agent-facing socket, used instead of --socket when `run` is itself inside an agent
    /// instance (an agent starting one of its sub-agents).
    #[arg(long, env = AGENT_SOCKET_ENV, default_value = DEFAULT_AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Everything that can fail without the daemon fails before an instance exists.
    let user = args.user.as_deref().map(privs::resolve_user).transpose()?;
    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("command arguments must not contain NUL bytes")?;
    let Some(program) = argv.first().cloned() else {
        bail!("no command given");
    };

    // An agent starts its sub-agents through the agent socket; the daemon knows it by its cgroup.
    let inside_agent = Hierarchy::discover()
        .and_then(|h| h.contains_pid(std::process::id()))
        .unwrap_or(false);
    if inside_agent && user.is_some() {
        bail!("--user cannot be used from inside an agent (it has no privileges to switch users)");
    }
    let mut client = if inside_agent {
        Client::connect(&args.agent_socket)?
    } else {
        args.socket.connect()?
    };
    let reply = client.call(&Request::Run {
        agent: args.agent.clone(),
        parent: args.parent.clone(),
    })?;
    drop(client);
    let Reply::Launched { instance, sandbox } = reply else {
        bail!("unexpected reply from the daemon: {reply:?}");
    };

    if let Some(spec) = &sandbox.landlock {
        let applied =
            landlock::apply(spec, std::process::id()).context("cannot apply file rules")?;
        for p in applied.skipped {
            eprintln!(
                "agentguard run: {}: does not exist, not granted",
                p.display()
            );
        }
    }
    let keep = sandbox
        .capabilities
        .iter()
        .map(|c| caps::Capability::from_str(c).map_err(|e| anyhow::anyhow!("{c}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    privs::drop_privileges(user.as_ref(), &keep)?;
    privs::close_inherited_fds()?;
    // SAFETY: single-threaded here; the variable is read by the agent only.
    unsafe { std::env::set_var("AGENTGUARD_INSTANCE", &instance) };

    let err = nix::unistd::execvp(&program, &argv).err();
    let code = match err {
        Some(nix::errno::Errno::ENOENT) => 127,
        _ => 126,
    };
    eprintln!(
        "agentguard run: cannot execute {}: {}",
        program.to_string_lossy(),
        err.map_or_else(|| "unknown error".to_owned(), |e| e.desc().to_owned())
    );
    Ok(ExitCode::from(code))
}
