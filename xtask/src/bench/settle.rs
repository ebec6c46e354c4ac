//! Waiting for the daemon to catch up: the log is written in batches (about every 100 ms), so a
//! count is read once it has stopped changing. "Stopped changing" is watched on the sizes of
//! the state directory's files (a `stat` each); the record count (`log head`, which re-reads
//! and hashes the last segment) is read once, at the end.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::daemon::Env;

/// Two equal readings this far apart mean the daemon has written what it had.
const QUIET: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_secs(120);

/// Total bytes of the files under `dir` (the log's segments, its header and index).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The log's record count once it has stopped growing, and when it last grew.
pub fn log_settled(env: &Env) -> Result<(u64, Instant)> {
    let start = Instant::now();
    let mut last = bytes_under(&env.state);
    let mut last_change = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = bytes_under(&env.state);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= QUIET {
            return Ok((env.log_records()?, last_change));
        }
        if start.elapsed() > TIMEOUT {
            bail!("the log kept growing for {TIMEOUT:?}");
        }
    }
}

/// The log's record count once it has stopped growing.
pub fn log_records(env: &Env) -> Result<u64> {
    log_settled(env).map(|(n, _)| n)
}
