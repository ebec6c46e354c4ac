//! Watching an agent instance's cgroup: its process count and `frozen` state, with the moment
//! the kernel reported it taken from CLOCK_MONOTONIC (the clock the generator stamps with).

use std::{
    fs::File,
    os::{fd::AsFd as _, unix::fs::FileExt as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    time::{ClockId, clock_gettime},
};

/// How long [`Events::wait_frozen`] re-reads `cgroup.events` before it sleeps on the
/// rate-limited notification, and how long it pauses between reads meanwhile.
const SPIN: Duration = Duration::from_millis(20);
const SPIN_STEP: Duration = Duration::from_micros(50);

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> i64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
}

/// The cgroup2 mount, from mountinfo (hybrid hosts mount it elsewhere than /sys/fs/cgroup).
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4))
        .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), PathBuf::from)
}

/// An instance cgroup, from the path a process printed (`/agentguard/hold/3`).
pub struct Instance {
    pub dir: PathBuf,
    /// `hold/3`, as the CLI names it.
    pub name: String,
}

impl Instance {
    pub fn from_cgroup(cgroup: &str) -> Result<Self> {
        let name = cgroup
            .strip_prefix("/agentguard/")
            .with_context(|| format!("{cgroup:?} is not an agentguard instance cgroup"))?
            .to_owned();
        Ok(Self {
            dir: cgroup2_mount().join(cgroup.trim_start_matches('/')),
            name,
        })
    }

    /// Processes in the instance (not in sub-agent cgroups).
    pub fn procs(&self) -> usize {
        std::fs::read_to_string(self.dir.join("cgroup.procs")).map_or(0, |s| s.lines().count())
    }

    /// Waits until the instance holds `n` processes.
    pub fn wait_procs(&self, n: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while self.procs() < n {
            if start.elapsed() > timeout {
                bail!(
                    "{} holds {} processes, not {n}, after {timeout:?}",
                    self.name,
                    self.procs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Opens `cgroup.events` for [`Events::wait_frozen`].
    pub fn events(&self) -> Result<Events> {
        let path = self.dir.join("cgroup.events");
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Events { file, path })
    }
}

/// An open `cgroup.events`. The kernel wakes pollers (POLLPRI, the same kernfs notification
/// inotify sees) when it changes, but at most once per 10 ms per file
/// (`CGROUP_FILE_NOTIFY_MIN_INTV`): the write that starts a freeze has already notified, so the
/// `frozen 1` notification of a fast freeze is held back to the 10 ms mark. The first
/// [`SPIN`] are therefore watched by re-reading the file; only then does the wait sleep on the
/// notification (costing no CPU a slow freeze needs).
pub struct Events {
    file: File,
    path: PathBuf,
}

impl Events {
    fn frozen(&self) -> Result<bool> {
        let mut buf = [0u8; 256];
        let n = self
            .file
            .read_at(&mut buf, 0)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let text = String::from_utf8_lossy(&buf[..n]);
        Ok(text.lines().any(|l| l == "frozen 1"))
    }

    /// Waits until the cgroup reports `frozen 1`; returns CLOCK_MONOTONIC ns of the moment
    /// this process saw it.
    pub fn wait_frozen(&self, timeout: Duration) -> Result<i64> {
        let start = Instant::now();
        loop {
            if self.frozen()? {
                return Ok(monotonic_ns());
            }
            if start.elapsed() > timeout {
                bail!("{} not frozen after {timeout:?}", self.path.display());
            }
            if start.elapsed() < SPIN {
                // Leave the CPU to the freezing tasks between reads (two shared cores).
                std::thread::sleep(SPIN_STEP);
                continue;
            }
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLPRI)];
            // The timeout only guards against a missed notification.
            let _ = poll(&mut fds, PollTimeout::from(10u8));
        }
    }
}
