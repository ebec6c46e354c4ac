//! Probe commands for the kernel-side confinement tests. Each prints `ok` or `errno=N` like the
//! rest of the probe.

use std::{io, process::ExitCode};

/// The commands this module answers.
pub const COMMANDS: &[&str] = &[
    "kill-own-child",
    "after-line",
    "send-loop",
    "in-other-mount-ns",
    "own-mount-ns-then-wait",
];

/// Sends `n` UDP datagrams to `host:port` whatever each answer; prints `sent=OK refused=EPERMS`
/// (a flood of actions, each of them judged and each an event).
fn send_loop(host: &str, port: &str, n: &str) -> io::Result<()> {
    let to: std::net::SocketAddr = format!("{host}:{port}").parse().map_err(io::Error::other)?;
    let n: usize = n.parse().map_err(io::Error::other)?;
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let (mut sent, mut refused) = (0usize, 0usize);
    for _ in 0..n {
        match s.send_to(b"agentguard", to) {
            Ok(_) => sent += 1,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => refused += 1,
            Err(e) => return Err(e),
        }
    }
    println!("sent={sent} refused={refused}");
    Ok(())
}

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

/// Moves to a mount namespace of its own (a copy of the current one), says `ready` (or the
/// error) on stdout, then waits to be killed.
fn own_mount_ns_then_wait() -> ExitCode {
    match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
        Ok(()) => println!("ready"),
        Err(e) => {
            println!("unshare errno={}", e as i32);
            return ExitCode::FAILURE;
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(60));
    ExitCode::SUCCESS
}

/// Reads (`read`) or makes as a directory (`mkdir`) `path` as a process of this instance sees it from
/// another mount namespace, through `/proc/<pid>/root`: the same file, on that namespace's copy
/// of its mount. Fails with what [`own_mount_ns_then_wait`] said when the child could not make
/// the namespace.
fn in_other_mount_ns(op: &str, path: &str) -> io::Result<()> {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("own-mount-ns-then-wait")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        io::BufReader::new(out).read_line(&mut line)?;
    }
    let result = if line.trim() == "ready" {
        let there = format!("/proc/{}/root{path}", child.id());
        match op {
            "read" => std::fs::read(there).map(drop),
            "mkdir" => std::fs::create_dir(there),
            _ => Err(io::Error::other(format!("unknown operation {op}"))),
        }
    } else {
        Err(io::Error::other(format!(
            "no mount namespace: {}",
            line.trim()
        )))
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Runs one command of [`COMMANDS`].
pub fn run(cmd: &str, args: &[&str], report: fn(io::Result<()>) -> ExitCode) -> ExitCode {
    match (cmd, args) {
        ("kill-own-child", []) => report(kill_own_child()),
        ("send-loop", [host, port, n]) => match send_loop(host, port, n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report(Err(e)),
        },
        ("after-line", rest) if !rest.is_empty() => report(after_line(rest)),
        ("own-mount-ns-then-wait", []) => own_mount_ns_then_wait(),
        ("in-other-mount-ns", [op, path]) => report(in_other_mount_ns(op, path)),
        _ => {
            eprintln!(
                "usage: agentguard-probe kill-own-child | after-line PROBE-ARGS... | send-loop HOST PORT N | in-other-mount-ns read|mkdir PATH | own-mount-ns-then-wait"
            );
            ExitCode::from(2)
        }
    }
}
