//! Probe commands that race judged actions against each other on one CPU: what a hostile agent
//! does to make the kernel judge one action with another action's state. Every thread of the
//! probe is pinned to the CPU it started on, so a thread preempted inside a BPF program is
//! followed on that CPU by another thread of the probe running the same program.
//!
//! Half the threads act on an allowed target and half on a refused one, a fixed number of times
//! each; the probe prints one line of counts:
//! `allowed_ok=A allowed_refused=B denied_ok=C denied_refused=D other=E` (refused: EPERM or
//! EACCES; other: any other outcome, with the first such error on stderr).

use std::{
    io,
    os::unix::net::UnixDatagram,
    process::ExitCode,
    sync::atomic::{AtomicUsize, Ordering},
};

/// The commands this module answers.
pub const COMMANDS: &[&str] = &["race-open", "race-unix-dgram"];

/// Outcome counts, shared by the threads.
#[derive(Default)]
struct Counts {
    allowed_ok: AtomicUsize,
    allowed_refused: AtomicUsize,
    denied_ok: AtomicUsize,
    denied_refused: AtomicUsize,
    other: AtomicUsize,
}

impl Counts {
    fn add(&self, denied: bool, r: io::Result<()>) {
        let slot = match (&r, denied) {
            (Ok(()), false) => &self.allowed_ok,
            (Ok(()), true) => &self.denied_ok,
            (Err(e), false) if refused(e) => &self.allowed_refused,
            (Err(e), true) if refused(e) => &self.denied_refused,
            (Err(e), _) => {
                if self.other.load(Ordering::Relaxed) == 0 {
                    eprintln!("unexpected outcome (denied target: {denied}): {e}");
                }
                &self.other
            }
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// EPERM (BPF LSM, cgroup programs) or EACCES (Landlock).
fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

/// Pins the calling thread (and so every thread it starts afterwards) to the CPU it runs on.
fn pin_to_this_cpu() -> io::Result<usize> {
    // SAFETY: sched_getcpu takes no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it (cpu is a CPU the
    // kernel just ran us on, so below CPU_SETSIZE).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cpu)
}

fn num(s: &str) -> io::Result<usize> {
    s.parse()
        .map_err(|_| io::Error::other(format!("not a number: {s}")))
}

/// Runs `threads` threads on each side, each doing `n` actions, all on one CPU.
fn race(threads: &str, n: &str, act: impl Fn(bool) -> io::Result<()> + Sync) -> io::Result<Counts> {
    let (threads, n) = (num(threads)?, num(n)?);
    pin_to_this_cpu()?;
    let counts = Counts::default();
    std::thread::scope(|s| {
        for t in 0..2 * threads {
            let denied = t % 2 == 1;
            let (counts, act) = (&counts, &act);
            s.spawn(move || {
                for _ in 0..n {
                    counts.add(denied, act(denied));
                }
            });
        }
    });
    Ok(counts)
}

fn print(c: &Counts) {
    println!(
        "allowed_ok={} allowed_refused={} denied_ok={} denied_refused={} other={}",
        c.allowed_ok.load(Ordering::Relaxed),
        c.allowed_refused.load(Ordering::Relaxed),
        c.denied_ok.load(Ordering::Relaxed),
        c.denied_refused.load(Ordering::Relaxed),
        c.other.load(Ordering::Relaxed),
    );
}

/// `race-open ALLOWED DENIED THREADS N`: opens for reading.
fn race_open(allowed: &str, denied: &str, threads: &str, n: &str) -> io::Result<Counts> {
    race(threads, n, |d| {
        std::fs::File::open(if d { denied } else { allowed }).map(drop)
    })
}

/// `race-unix-dgram ALLOWED DENIED THREADS N`: datagrams to bound AF_UNIX sockets (the test
/// drains them), one sending socket per send so no send buffer fills up.
fn race_unix_dgram(allowed: &str, denied: &str, threads: &str, n: &str) -> io::Result<Counts> {
    let to = |p: &str| std::os::unix::net::SocketAddr::from_pathname(p);
    let (allowed, denied) = (to(allowed)?, to(denied)?);
    race(threads, n, |d| {
        let s = UnixDatagram::unbound()?;
        s.send_to_addr(b"agentguard", if d { &denied } else { &allowed })
            .map(drop)
    })
}

/// Runs one command of [`COMMANDS`].
pub fn run(cmd: &str, args: &[&str], report: fn(io::Result<()>) -> ExitCode) -> ExitCode {
    let counts = match (cmd, args) {
        ("race-open", [allowed, denied, threads, n]) => race_open(allowed, denied, threads, n),
        ("race-unix-dgram", [allowed, denied, threads, n]) => {
            race_unix_dgram(allowed, denied, threads, n)
        }
        _ => Err(io::Error::other(format!(
            "usage: {cmd} ALLOWED DENIED THREADS N"
        ))),
    };
    match counts {
        Ok(c) => {
            print(&c);
            ExitCode::SUCCESS
        }
        Err(e) => report(Err(e)),
    }
}
