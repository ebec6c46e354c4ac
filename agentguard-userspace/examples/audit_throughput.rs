//! The userspace event pipeline's capacity on its own: append synthetic action records to an
//! [`AuditLog`] as the daemon does (encode, hash chain, batched writes, `tick` every 100 ms,
//! fsync by interval, seals every 10,000 records when sealed), then flush. Prints one JSON
//! object. Run by `cargo xtask bench` in release mode:
//!
//! `audit_throughput RECORDS DIR [--sealed]` (DIR must not hold a log yet).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use agentguard::audit::{self, AuditLog, LogOptions, record::Body, testutil::action};
use anyhow::{Context as _, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (records, dir, sealed) = match args.as_slice() {
        [n, dir] => (n, dir, false),
        [n, dir, flag] if flag == "--sealed" => (n, dir, true),
        _ => bail!("usage: audit_throughput RECORDS DIR [--sealed]"),
    };
    let n: u64 = records.parse().context("RECORDS is not a number")?;
    let dir = PathBuf::from(dir);
    if sealed {
        audit::init(&dir, false)?;
    }
    let mut log = AuditLog::open(LogOptions::new(&dir))?;
    // Bodies are built up front: the daemon converts kernel events before appending, which
    // is the ring reader's cost, not the writer's.
    let bodies: Vec<Body> = (0..64).map(action).collect();
    let start = Instant::now();
    let mut last_tick = Instant::now();
    for i in 0..n {
        let (wall, mono) = audit::now();
        log.append(wall, mono, bodies[(i % 64) as usize].clone())?;
        if i % 1024 == 0 && last_tick.elapsed() >= Duration::from_millis(100) {
            log.tick()?;
            last_tick = Instant::now();
        }
    }
    log.flush()?;
    let secs = start.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{}",
        serde_json::json!({
            "records": n,
            "secs": secs,
            "records_per_s": n as f64 / secs,
            "bytes_per_record": bytes as f64 / n as f64,
            "sealed": sealed,
        })
    );
    Ok(())
}
