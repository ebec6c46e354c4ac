//! The immutable event log.
//!
//! Interim writer (JSON lines) with the API of the chained log that replaces it.
pub mod record;

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::PathBuf,
    time::Duration,
};

use record::{Body, Record};

/// Log errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O.
    #[error("audit log: {0}")]
    Io(#[from] std::io::Error),
}

/// Options.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Directory.
    pub dir: PathBuf,
    /// fsync interval.
    pub fsync_interval: Duration,
}

impl LogOptions {
    /// Defaults for `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            fsync_interval: Duration::from_millis(200),
        }
    }
}

/// Head of the chain.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    /// Last sequence.
    pub seq: Option<u64>,
    /// Last hash.
    pub hash: [u8; 32],
}

/// The log writer.
pub struct AuditLog {
    out: BufWriter<File>,
    next: u64,
    lost: Option<u64>,
}

impl AuditLog {
    /// Opens the log.
    pub fn open(opts: LogOptions) -> Result<Self, AuditError> {
        std::fs::create_dir_all(&opts.dir)?;
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.dir.join("events.jsonl"))?;
        Ok(Self {
            out: BufWriter::new(f),
            next: 0,
            lost: None,
        })
    }

    /// Appends a record.
    pub fn append(&mut self, wall_ns: u64, mono_ns: u64, body: Body) -> Result<u64, AuditError> {
        if let Body::Lost { total, .. } = &body {
            self.lost = Some(*total);
        }
        let r = Record {
            seq: self.next,
            wall_ns,
            mono_ns,
            body,
        };
        serde_json::to_writer(&mut self.out, &r).map_err(std::io::Error::from)?;
        self.out.write_all(b"\n")?;
        self.next += 1;
        Ok(r.seq)
    }

    /// Periodic work.
    pub fn tick(&mut self) -> Result<(), AuditError> {
        self.flush()
    }

    /// Write and fsync.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        Ok(())
    }

    /// Head.
    pub fn head(&self) -> Head {
        Head {
            seq: self.next.checked_sub(1),
            hash: [0; 32],
        }
    }

    /// Last logged lost total.
    pub fn last_lost_total(&self) -> Option<u64> {
        self.lost
    }
}

/// Wall and monotonic now.
pub fn now() -> (u64, u64) {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0);
    (wall, mono)
}
