//! Probe commands for the kernel-side confinement tests. Each prints `ok` or `errno=N` like the
//! rest of the probe.

use std::{io, process::ExitCode};

/// The commands this module answers.
pub const COMMANDS: &[&str] = &["kill-own-child", "after-line"];

/// Starts a child (this probe, sleeping) and sends it SIGTERM: a signal inside the instance.
fn kill_own_child() -> io::Result<()> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["sleep", "30"])
        .spawn()?;
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    // SAFETY: kill(2) with integer arguments, to our own child.
    let sent = if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    if sent.is_err() {
        let _ = child.kill();
    }
    child.wait()?;
    sent
}

/// Waits for one line on stdin, then becomes `agentguard-probe ARGS...` (same pid): the test
/// adopts this process with `agentguard tag` in between, so the action is the adopted one's.
fn after_line(args: &[&str]) -> io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut line = String::new();
    io::stdin().read_line(&mut line)?;
    Err(std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .exec())
}

/// Runs one command of [`COMMANDS`].
pub fn run(cmd: &str, args: &[&str], report: fn(io::Result<()>) -> ExitCode) -> ExitCode {
    match (cmd, args) {
        ("kill-own-child", []) => report(kill_own_child()),
        ("after-line", rest) if !rest.is_empty() => report(after_line(rest)),
        _ => {
            eprintln!("usage: agentguard-probe kill-own-child | after-line PROBE-ARGS...");
            ExitCode::from(2)
        }
    }
}
