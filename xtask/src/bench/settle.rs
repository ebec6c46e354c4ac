//! Waiting for the daemon to catch up: the log is written in batches (about every 100 ms), so a
//! count is read once it has stopped changing.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::daemon::Env;

/// Two equal readings this far apart mean the daemon has written what it had.
const QUIET: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_secs(120);

/// The log's record count once it has stopped growing, and when it last grew.
pub fn log_settled(env: &Env) -> Result<(u64, Instant)> {
    let start = Instant::now();
    let mut last = env.log_records()?;
    let mut last_change = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = env.log_records()?;
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= QUIET {
            return Ok((last, last_change));
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
