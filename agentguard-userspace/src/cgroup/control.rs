//! Freeze, thaw and kill through cgroup v2 interface files, waiting on `cgroup.events` with
//! inotify (the kernel reports `frozen` and `populated` changes as file modifications).

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use inotify::{Inotify, WatchMask};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::hierarchy::{CgroupError, io_err};

/// Why a freeze, thaw or kill did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A cgroup file operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The kernel did not report the state in time.
    #[error("{path}: not {state} after {waited:?}{detail}")]
    Timeout {
        /// The cgroup.
        path: PathBuf,
        /// What was awaited (`frozen`, `thawed`, `empty`).
        state: &'static str,
        /// How long.
        waited: Duration,
        /// What is still running, e.g. tasks in uninterruptible sleep.
        detail: String,
    },
}

fn read_events(cgroup: &Path) -> Result<String, CgroupError> {
    let path = cgroup.join("cgroup.events");
    fs::read_to_string(&path).map_err(io_err(&path))
}

fn event_flag(events: &str, key: &str) -> bool {
    events
        .lines()
        .filter_map(|l| l.split_once(' '))
        .any(|(k, v)| k == key && v.trim() == "1")
}

/// Whether any process is in the cgroup or below it.
pub fn populated(cgroup: &Path) -> Result<bool, CgroupError> {
    Ok(event_flag(&read_events(cgroup)?, "populated"))
}

/// Every process in the cgroup and its descendants.
pub fn procs(cgroup: &Path) -> Result<Vec<u32>, CgroupError> {
    let mut out = Vec::new();
    let file = cgroup.join("cgroup.procs");
    let text = fs::read_to_string(&file).map_err(io_err(&file))?;
    out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    for entry in fs::read_dir(cgroup).map_err(io_err(cgroup))? {
        let entry = entry.map_err(io_err(cgroup))?;
        if entry.file_type().map_err(io_err(cgroup))?.is_dir() {
            out.extend(procs(&entry.path())?);
        }
    }
    Ok(out)
}

/// Waits until `done(cgroup.events)` holds, woken by inotify rather than polling on a timer.
fn wait_for(
    cgroup: &Path,
    state: &'static str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> Result<Duration, ControlError> {
    let start = Instant::now();
    let events_path = cgroup.join("cgroup.events");
    // An emptied instance may be removed by the daemon while this waits: for "empty", a cgroup
    // that no longer exists is the awaited state. Removed between our open and our read, its
    // file says ENODEV (a kernfs node deactivated under an open file), not ENOENT.
    let gone = |e: &std::io::Error| {
        state == "empty"
            && (e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV))
    };
    let mut inotify = Inotify::init().map_err(io_err(&events_path))?;
    match inotify.watches().add(&events_path, WatchMask::MODIFY) {
        Ok(_) => {}
        Err(e) if gone(&e) => return Ok(start.elapsed()),
        Err(e) => return Err(io_err(&events_path)(e).into()),
    }
    let mut buf = [0u8; 1024];
    loop {
        // Checked after the watch exists, so a change between check and wait is not missed.
        let events = match fs::read_to_string(&events_path) {
            Ok(text) => text,
            Err(e) if gone(&e) => return Ok(start.elapsed()),
            Err(e) => return Err(io_err(&events_path)(e).into()),
        };
        if done(&events) {
            return Ok(start.elapsed());
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(ControlError::Timeout {
                path: cgroup.to_owned(),
                state,
                waited: timeout,
                detail: stuck_tasks(cgroup),
            });
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => {
                // Drain; the contents do not matter, only that the file changed.
                let _ = inotify.read_events(&mut buf);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io_err(&events_path)(std::io::Error::from(e)).into()),
        }
    }
}

/// Names the tasks that keep a freeze or kill from completing (state `D` is uninterruptible
/// sleep, which delays a freeze).
fn stuck_tasks(cgroup: &Path) -> String {
    let pids = procs(cgroup).unwrap_or_default();
    let described: Vec<String> = pids
        .iter()
        .take(10)
        .map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let comm = stat
                .split_once(" (")
                .and_then(|(_, r)| r.rsplit_once(") "))
                .map(|(c, rest)| (c.to_owned(), rest.chars().next().unwrap_or('?')));
            match comm {
                Some((c, s)) => format!("{pid} ({c}, state {s})"),
                None => pid.to_string(),
            }
        })
        .collect();
    if described.is_empty() {
        String::new()
    } else {
        format!("; still running: {}", described.join(", "))
    }
}

/// Freezes the cgroup and its descendants; returns once the kernel reports `frozen 1`.
pub fn freeze(cgroup: &Path, timeout: Duration) -> Result<Duration, ControlError> {
    let file = cgroup.join("cgroup.freeze");
    fs::write(&file, "1").map_err(io_err(&file))?;
    wait_for(cgroup, "frozen", timeout, |e| event_flag(e, "frozen"))
}

/// Thaws the cgroup; returns once the kernel reports `frozen 0`.
pub fn thaw(cgroup: &Path, timeout: Duration) -> Result<Duration, ControlError> {
    let file = cgroup.join("cgroup.freeze");
    fs::write(&file, "0").map_err(io_err(&file))?;
    wait_for(cgroup, "thawed", timeout, |e| !event_flag(e, "frozen"))
}

/// Kills every process in the cgroup and its descendants at once (`cgroup.kill`); returns once
/// the cgroup is empty. Works on frozen cgroups too.
pub fn kill(cgroup: &Path, timeout: Duration) -> Result<Duration, ControlError> {
    let file = cgroup.join("cgroup.kill");
    match fs::write(&file, "1") {
        // Emptied and removed already: what a kill asks for.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Duration::ZERO),
        other => other.map_err(io_err(&file))?,
    }
    wait_unpopulated(cgroup, timeout)
}

/// Waits until no process is left in the cgroup.
pub fn wait_unpopulated(cgroup: &Path, timeout: Duration) -> Result<Duration, ControlError> {
    wait_for(cgroup, "empty", timeout, |e| !event_flag(e, "populated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events() {
        let e = "populated 1\nfrozen 0\n";
        assert!(event_flag(e, "populated"));
        assert!(!event_flag(e, "frozen"));
        assert!(!event_flag(e, "missing"));
    }
}
