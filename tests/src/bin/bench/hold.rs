//! Loads that stay put for xtask to act on: an instance of N sleeping processes (freeze
//! latency) and a connect loop that stops at its first refusal (budget breach to freeze).

use std::{io::Write as _, net::SocketAddr, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result};
use nix::{
    sys::{
        socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, connect, socket},
        time::TimeSpec,
    },
    time::{ClockId, clock_gettime},
    unistd::{ForkResult, fork, pause},
};
use serde_json::{Value, json};

/// This process's cgroup v2 path (`/agentguard/bench/3`), from /proc/self/cgroup.
pub fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned()
}

/// Prints one JSON line now (xtask reads it while this process lives on).
fn announce(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush().context("stdout")
}

fn sleep_forever() -> ! {
    loop {
        pause();
    }
}

/// Forks `n` children that sleep forever, says so, and sleeps too; ends when the instance is
/// killed.
pub fn sleepers(n: u64) -> Result<Value> {
    for _ in 0..n {
        // SAFETY: single-threaded process; the child only calls pause().
        if let ForkResult::Child = unsafe { fork() }.context("fork")? {
            sleep_forever();
        }
    }
    announce(&json!({ "sleepers": n, "cgroup": own_cgroup() }))?;
    sleep_forever()
}

pub fn monotonic_ns() -> i64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap_or(TimeSpec::new(0, 0));
    t.tv_sec() * 1_000_000_000 + t.tv_nsec()
}

/// Says it is ready (`{"ready": true}`) and waits for a line on stdin: xtask starts every
/// instance of a load this way and releases them together, so that the load's send window does
/// not include the `agentguard run` start-ups.
pub fn wait_for_go() -> Result<()> {
    announce(&json!({ "ready": true }))?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).context("stdin")?;
    Ok(())
}

/// Says where it runs, waits for a line on stdin (xtask starts watching the cgroup first), then
/// connects to `a` until the first refusal (at most `max` times) and reports when it came, in
/// CLOCK_MONOTONIC nanoseconds (the clock xtask reads too), then waits to be frozen and killed.
pub fn breach(a: &SocketAddr, max: u64) -> Result<Value> {
    announce(&json!({ "cgroup": own_cgroup() }))?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).context("stdin")?;
    let to = SockaddrStorage::from(*a);
    let fam = if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    for i in 0..max {
        let fd = socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).context("socket")?;
        if let Err(e) = connect(fd.as_raw_fd(), &to) {
            let at = monotonic_ns();
            announce(&json!({
                "refused_at_ns": at,
                "errno": e as i32,
                "connects": i,
                "cgroup": own_cgroup(),
            }))?;
            sleep_forever();
        }
    }
    Ok(json!({ "refused_at_ns": null, "connects": max, "cgroup": own_cgroup() }))
}
