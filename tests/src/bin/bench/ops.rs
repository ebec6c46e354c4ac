//! The measured loops. Each does a short warm-up (page cache, dentry cache, the daemon's first
//! event for a new instance), then times `n` iterations with a monotonic clock.

use std::{
    ffi::CString,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    fcntl::{OFlag, open as sys_open},
    sys::{
        socket::{
            AddressFamily, MsgFlags, SockFlag, SockType, SockaddrLike as _, SockaddrStorage,
            connect as sock_connect, sendto, setsockopt, socket, sockopt,
        },
        stat::Mode,
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, fork},
};
use serde_json::{Value, json};

/// What one loop measured.
pub struct Measured {
    op: &'static str,
    n: u64,
    elapsed: Duration,
    errors: u64,
    /// errno of the first failure, to tell a refusal (EPERM/EACCES) from a harness fault.
    first_errno: Option<i32>,
    /// ns/op of each batch, sorted.
    batches: Vec<f64>,
    /// Single-iteration batches slower than [`STALL`].
    stalls: u64,
}

/// An iteration this slow is a stall (a dropped SYN waits 1 s for its retransmission, a
/// preempted exec waits for a busy CPU), not overhead.
const STALL: Duration = Duration::from_millis(100);

impl Measured {
    pub fn json(&self) -> Value {
        let mean = if self.n == 0 {
            0.0
        } else {
            self.elapsed.as_secs_f64() * 1e9 / self.n as f64
        };
        let at = |q: f64| {
            let i = ((self.batches.len() as f64 - 1.0) * q).round() as usize;
            self.batches.get(i).copied().unwrap_or(0.0)
        };
        json!({
            "op": self.op,
            "n": self.n,
            // The median batch: what an operation costs when nothing else on the machine
            // (a compiler, the daemon writing the log) takes the CPU away in the middle of it.
            "ns_per_op": at(0.5),
            "p99_ns": at(0.99),
            "max_ns": self.batches.last().copied().unwrap_or(0.0),
            // Everything, interruptions included.
            "mean_ns_per_op": mean,
            "errors": self.errors,
            "first_errno": self.first_errno,
            "stalls": self.stalls,
        })
    }
}

/// Iterations before timing starts: enough to warm caches, few enough not to matter.
fn warm_up(n: u64) -> u64 {
    (n / 10).clamp(1, 200)
}

/// Runs `once` `n` times after a warm-up, counting failures, timing each batch of `batch`
/// iterations: one clock read per batch is negligible even for a 500 ns open, and the median
/// batch shrugs off the batches that were preempted.
fn timed(
    op: &'static str,
    n: u64,
    batch: u64,
    mut once: impl FnMut() -> Result<(), i32>,
) -> Measured {
    for _ in 0..warm_up(n) {
        let _ = once();
    }
    let batch = batch.max(1);
    let mut errors = 0;
    let mut first_errno = None;
    let mut batches = Vec::with_capacity(usize::try_from(n / batch + 1).unwrap_or(0));
    let mut stalls = 0;
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let size = batch.min(n - done);
        let t = Instant::now();
        for _ in 0..size {
            if let Err(errno) = once() {
                errors += 1;
                first_errno.get_or_insert(errno);
            }
        }
        let took = t.elapsed();
        stalls += u64::from(size == 1 && took >= STALL);
        batches.push(took.as_secs_f64() * 1e9 / size as f64);
        done += size;
    }
    let elapsed = start.elapsed();
    batches.sort_by(f64::total_cmp);
    Measured {
        op,
        n,
        elapsed,
        errors,
        first_errno,
        batches,
        stalls,
    }
}

pub fn addr(text: &str) -> Result<SocketAddr> {
    text.parse()
        .with_context(|| format!("{text:?} is not ADDR:PORT"))
}

/// open(O_RDONLY) + close of `path`.
pub fn open(path: &str, n: u64) -> Result<Measured> {
    let path = CString::new(path).context("path with a NUL byte")?;
    Ok(timed("open", n, 100, || {
        sys_open(
            path.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(drop)
        .map_err(|e| e as i32)
    }))
}

fn family(a: &SocketAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// TCP socket + connect + close. The socket lingers 0 s so close sends a reset instead of
/// leaving TIME_WAIT: tens of thousands of connects would otherwise exhaust the ephemeral
/// ports within a run.
fn connect_once(to: &SockaddrStorage, fam: AddressFamily) -> Result<(), i32> {
    let fd = socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(|e| e as i32)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&fd, sockopt::Linger, &linger).map_err(|e| e as i32)?;
    sock_connect(fd.as_raw_fd(), to).map_err(|e| e as i32)
}

/// TCP connect + close to `a`.
pub fn connect(a: &SocketAddr, n: u64) -> Measured {
    let to = SockaddrStorage::from(*a);
    let fam = family(a);
    timed("connect", n, 1, || connect_once(&to, fam))
}

/// fork + exec of `path` (no arguments) + wait. std's `Command` is what agents' runtimes use
/// too (posix_spawn, i.e. clone(CLONE_VFORK) + exec, where it can).
pub fn exec(path: &str, n: u64) -> Measured {
    timed("exec", n, 1, || match Command::new(path).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(-1),
        Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
    })
}

/// What each process of a UDP load does `n` times: send a datagram (judged by the `sendmsg`
/// hook), connect its UDP socket (judged by the `connect` hook, and no packet: about a third
/// of the cost, so that two cores can offer the pipeline more events than they could send), or
/// probe: datagrams in batches of [`PROBE_BATCH`] to one `sendmmsg`, flagged `MSG_PROBE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Udp {
    Send,
    Connect,
    Probe,
}

/// Datagrams per `sendmmsg` of the probe load.
const PROBE_BATCH: usize = 64;

/// `MSG_PROBE` (include/linux/socket.h; libc does not export it): the kernel judges the
/// datagram (the cgroup `sendmsg` hook, as for any send) and routes it, but builds no packet,
/// as for tracepath's path-MTU probes. With an empty payload `sendmmsg` goes on to the next
/// datagram (it stops at the first one whose data was not consumed).
const MSG_PROBE: libc::c_int = 0x10;

pub fn udp(a: &SocketAddr, n: u64, procs: u64, how: Udp) -> Result<Value> {
    if procs == 0 {
        bail!("udp needs at least one process");
    }
    let start = Instant::now();
    let start_ns = crate::hold::monotonic_ns();
    let mut children = Vec::new();
    for _ in 0..procs {
        // SAFETY: this process is single-threaded, so the child may do anything the parent
        // could; it only sends datagrams and leaves with _exit.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                let errors = udp_sender(a, n, how);
                // SAFETY: _exit ends the child without running the parent's atexit handlers or
                // flushing its copy of stdout.
                unsafe { libc::_exit(i32::from(errors > 0)) }
            }
            ForkResult::Parent { child } => children.push(child),
        }
    }
    let mut failed = 0;
    for child in children {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            _ => failed += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let end_ns = crate::hold::monotonic_ns();
    let sends = n * procs;
    Ok(json!({
        "op": match how {
            Udp::Send => "udp",
            Udp::Connect => "udp-connect",
            Udp::Probe => "udp-probe",
        },
        // CLOCK_MONOTONIC (the clock xtask reads too): the load's send window runs from
        // xtask's release of every instance to the last one's end.
        "start_ns": start_ns,
        "end_ns": end_ns,
        "procs": procs,
        "sends": sends,
        "secs": secs,
        "sends_per_s": sends as f64 / secs,
        "failed_procs": failed,
    }))
}

/// Sends `n` datagrams, or connects `n` times; returns how many failed.
fn udp_sender(a: &SocketAddr, n: u64, how: Udp) -> u64 {
    let Ok(fd) = socket(family(a), SockType::Datagram, SockFlag::SOCK_CLOEXEC, None) else {
        return n;
    };
    let to = SockaddrStorage::from(*a);
    match how {
        Udp::Send => (0..n)
            .filter(|_| {
                sendto(fd.as_raw_fd(), b"agentguard-bench", &to, MsgFlags::empty()).is_err()
            })
            .count() as u64,
        Udp::Connect => (0..n)
            .filter(|_| sock_connect(fd.as_raw_fd(), &to).is_err())
            .count() as u64,
        Udp::Probe => probe(fd.as_raw_fd(), &to, n),
    }
}

/// `n` empty datagrams to `to` flagged [`MSG_PROBE`], [`PROBE_BATCH`] to a `sendmmsg`: every
/// one judged (and logged) like a send, one syscall per batch. Returns how many failed.
fn probe(fd: std::os::fd::RawFd, to: &SockaddrStorage, n: u64) -> u64 {
    // SAFETY: an all-zero mmsghdr is a valid empty message (null iovec of length 0).
    let mut batch: [libc::mmsghdr; PROBE_BATCH] = unsafe { std::mem::zeroed() };
    for m in &mut batch {
        // sendmmsg only reads the address; `to` outlives every call below.
        m.msg_hdr.msg_name = to.as_ptr().cast_mut().cast();
        m.msg_hdr.msg_namelen = to.len();
    }
    let mut failed = 0;
    let mut left = n;
    while left > 0 {
        let k = left.min(PROBE_BATCH as u64);
        // SAFETY: `batch` holds at least `k` initialised headers whose address points at `to`.
        let sent = unsafe { libc::sendmmsg(fd, batch.as_mut_ptr(), k as libc::c_uint, MSG_PROBE) };
        failed += k - u64::try_from(sent).unwrap_or(0).min(k);
        left -= k;
    }
    failed
}
