//! Probe commands for what an agent may never do whatever its policy (bpf, signals outside its
//! instance, sockets agentguard does not judge). Each prints `ok` or `errno=N` like the rest.

use std::{io, process::ExitCode};

/// The commands this module answers.
pub const COMMANDS: &[&str] = &["bpf-obj-get", "kill", "kill-own-child", "socket"];

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn num<T: std::str::FromStr>(s: &str) -> io::Result<T> {
    s.parse()
        .map_err(|_| io::Error::other(format!("not a number: {s}")))
}

/// `bpf(BPF_OBJ_GET)` on a pinned object: a descriptor to it is what detaching a link or
/// rewriting a map starts with.
fn bpf_obj_get(pin: &str) -> io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = std::ffi::CString::new(pin).map_err(io::Error::other)?;
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags; the rest zero.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: attr outlives the call and is larger than the kernel reads for this command.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    })?;
    // SAFETY: the descriptor the kernel just returned to us.
    unsafe { libc::close(i32::try_from(fd).unwrap_or(-1)) };
    Ok(())
}

fn kill(pid: &str, sig: &str) -> io::Result<()> {
    // SAFETY: kill(2) with integer arguments.
    check(unsafe { libc::kill(num(pid)?, num(sig)?) }.into()).map(drop)
}

/// Starts a child (this probe, sleeping) and sends it SIGTERM: a signal inside the instance.
fn kill_own_child() -> io::Result<()> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["sleep", "30"])
        .spawn()?;
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    // SAFETY: kill(2) with integer arguments, to our own child.
    let sent = check(unsafe { libc::kill(pid, libc::SIGTERM) }.into());
    if sent.is_err() {
        let _ = child.kill();
    }
    child.wait()?;
    sent.map(drop)
}

fn socket(family: &str, ty: &str, protocol: &str) -> io::Result<()> {
    // SAFETY: socket(2) with integer arguments.
    let fd = unsafe { libc::socket(num(family)?, num(ty)?, num(protocol)?) };
    check(fd.into())?;
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Runs one command of [`COMMANDS`].
pub fn run(cmd: &str, args: &[&str], report: fn(io::Result<()>) -> ExitCode) -> ExitCode {
    match (cmd, args) {
        ("bpf-obj-get", [pin]) => report(bpf_obj_get(pin)),
        ("kill", [pid, sig]) => report(kill(pid, sig)),
        ("kill-own-child", []) => report(kill_own_child()),
        ("socket", [family, ty, protocol]) => report(socket(family, ty, protocol)),
        _ => {
            eprintln!(
                "usage: agentguard-probe bpf-obj-get PIN | kill PID SIG | kill-own-child | socket FAMILY TYPE PROTOCOL"
            );
            ExitCode::from(2)
        }
    }
}
