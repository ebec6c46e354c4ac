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
        proto::{Identity, Reply, Request, UserSpec},
    },
    sandbox::{landlock, privs, seccomp},
};
use anyhow::{Context, bail};
use clap::Args;
use nix::{
    sys::{
        signal::{SigHandler, SigSet, SigmaskHow, Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, fork, getppid, setsid},
};

use super::SocketArg;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Agent (or `agent/sub-agent`) to run as.
    #[arg(long)]
    agent: String,
    /// For a sub-agent: the parent instance to nest in (default: the newest one).
    #[arg(long)]
    parent: Option<String>,
    /// Run as this user (and group) instead of the policy's `user` or a dynamic uid; root only
    /// where the policy says `user = "root"`.
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

/// Set for the agent: its instance name.
const INSTANCE_ENV: &str = "AGENTGUARD_INSTANCE";

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Everything that can fail without the daemon fails before an instance exists.
    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("command arguments must not contain NUL bytes")?;
    if argv.is_empty() {
        bail!("no command given");
    }
    // The agent gets a session of its own, without the operator's terminal (no TIOCSTI into
    // it, no signals from its job control); this launcher stays in the operator's session,
    // forwards termination signals and reports the agent's exit. Blocking them before the fork
    // loses none that arrive in between.
    let supervised = supervised_signals();
    let before = supervised
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .context("cannot block signals")?;
    // SAFETY: `run` is single-threaded (only `daemon` starts a runtime), so the child may run
    // arbitrary code after the fork.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { child } => supervise(child, &supervised),
        ForkResult::Child => {
            before
                .thread_set_mask()
                .context("cannot restore the signal mask")?;
            setsid().context("cannot start a new session for the agent")?;
            launch(args, argv)
        }
    }
}

/// The signals the launcher passes on to the agent, and SIGCHLD, which ends its wait.
fn supervised_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ] {
        set.add(sig);
    }
    set
}

/// Waits for the agent, forwarding signals to it, and exits as it did: with its code, or
/// killed by the same signal.
fn supervise(child: Pid, supervised: &SigSet) -> anyhow::Result<ExitCode> {
    loop {
        let sig = supervised.wait().context("sigwait")?;
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)).context("waitpid")? {
            WaitStatus::Exited(_, code) => return Ok(ExitCode::from(exit_byte(code))),
            WaitStatus::Signaled(_, sig, _) => return Ok(die_like(sig)),
            _ => {}
        }
    }
}

fn exit_byte(code: i32) -> u8 {
    u8::try_from(code & 0xff).unwrap_or(1)
}

/// Ends this process with `sig`, so the caller sees the agent's death (e.g. SIGKILL from a
/// `kill` or a budget); `128 + sig` where the signal's default action would not end it.
fn die_like(sig: Signal) -> ExitCode {
    // SAFETY: resetting a disposition to the default installs no handler code.
    let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    let mut only = SigSet::empty();
    only.add(sig);
    let _ = only.thread_unblock();
    let _ = nix::sys::signal::raise(sig);
    ExitCode::from(exit_byte(128 + sig as i32))
}

/// In the agent's process: join the instance, confine, exec. Returns only on failure.
fn launch(args: RunArgs, argv: Vec<CString>) -> anyhow::Result<ExitCode> {
    let launcher = getppid();
    let Some(program) = argv.first().cloned() else {
        bail!("no command given");
    };

    // An agent starts its sub-agents through the agent socket; the daemon knows it by its cgroup.
    // File rules may hide /proc/self/mountinfo from an agent; the instance variable `run` gave
    // it then tells (it only picks the socket: the daemon judges the caller by its cgroup).
    let inside_agent = Hierarchy::discover()
        .and_then(|h| h.contains_pid(std::process::id()))
        .unwrap_or_else(|_| std::env::var_os(INSTANCE_ENV).is_some());
    if inside_agent && args.user.is_some() {
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
        user: args.user.clone(),
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
    let user = match &sandbox.identity {
        Identity::Inherited | Identity::Root => None,
        Identity::User(user) => Some(user.clone()),
        Identity::Dynamic { uid } => Some(UserSpec {
            uid: *uid,
            gid: *uid,
            groups: Vec::new(),
            name: format!("dynamic uid {uid}"),
        }),
    };
    privs::drop_privileges(user.as_ref(), &keep)?;
    privs::close_inherited_fds()?;
    // The credential change above cleared any parent-death signal: set it now, then make sure
    // the launcher did not already die in between.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("prctl(PR_SET_PDEATHSIG)")?;
    if getppid() != launcher {
        bail!("the launcher exited before the agent started");
    }
    // SAFETY: single-threaded here; the variable is read by the agent only.
    unsafe { std::env::set_var(INSTANCE_ENV, &instance) };
    // Last, so nothing above runs under the filter.
    let filters = seccomp::filters(&sandbox.allow_syscalls)?;
    seccomp::install(&filters)?;

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
