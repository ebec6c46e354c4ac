//! The daemon's side: appending records, batching writes, fsyncing, rotating and sealing.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{
    chain::Head,
    clock, encode,
    error::{AuditError, io_at},
    files,
    header::{SEGMENT_HEADER_LEN, SegmentHeader},
    record::{Body, Record},
    recovery,
    seal::SealKey,
    segment::{self, SegmentFile},
};

/// Frames are handed to the kernel once this many bytes wait (or on `tick`/`flush`).
const WRITE_BATCH: usize = 256 * 1024;
/// Records waiting for a failing disk are refused past this many bytes.
const MAX_PENDING: usize = 64 * 1024 * 1024;

/// How the log is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// The log directory (the daemon uses `<state-dir>/log`).
    pub dir: PathBuf,
    /// A segment is closed and a new one started before it would exceed this many bytes.
    pub segment_bytes: u64,
    /// Written records are fsynced at least this often (by `tick`): the power-loss window.
    pub fsync_interval: Duration,
    /// A seal is appended at least this often while records arrive (by `tick`).
    pub seal_interval: Duration,
    /// ... and after at most this many records (0: only by time).
    pub seal_every: u64,
}

impl LogOptions {
    /// Defaults: 64 MiB segments, fsync every 200 ms, a seal every 60 s or 10,000 records.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 * 1024 * 1024,
            fsync_interval: Duration::from_millis(200),
            seal_interval: Duration::from_secs(60),
            seal_every: 10_000,
        }
    }
}

struct Sealer {
    /// The key of the next seal (already evolved past every seal written).
    key: SealKey,
    /// Whether `seal.key` on disk holds `key`.
    stored: bool,
    since: u64,
    last: Instant,
}

/// The open, appendable log. One per directory (an exclusive lock is held).
pub struct AuditLog {
    opts: LogOptions,
    _lock: File,
    segment: SegmentFile,
    file: File,
    /// Bytes of the current segment handed to the kernel.
    on_disk: u64,
    /// Frames not yet handed to the kernel.
    pending: Vec<u8>,
    unsynced: bool,
    last_sync: Instant,
    next_seq: u64,
    head: Head,
    sealer: Option<Sealer>,
    lost_total: Option<u64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.opts.dir)
            .field("segment", &self.segment.name())
            .field("head", &self.head)
            .field("sealed", &self.sealer.is_some())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating if needed) the log in `opts.dir`, recovering from a crash: a torn tail
    /// is cut and a `Recovered` record appended saying what was cut.
    pub fn open(opts: LogOptions) -> Result<Self, AuditError> {
        let dir = opts.dir.clone();
        files::ensure_dir(&dir)?;
        let lock = files::lock(&dir)?;
        let segments = segment::list(&dir)?;
        let header = match files::read_log_header(&dir)? {
            Some(header) => header,
            None if segments.is_empty() => files::create_log_header(&dir, clock::now().0)?,
            None => return Err(AuditError::HeaderMissing(dir)),
        };
        let key = SealKey::load(&dir)?;
        let mut rec = recovery::recover(&header, &segments, key.is_some())?;
        let sealer = match key {
            Some(key) => Some(catch_up(
                key,
                rec.last_seal_epoch,
                rec.unsealed,
                &mut rec.notes,
                &dir,
            )?),
            None => None,
        };
        let (segment, on_disk) = match segments.last() {
            Some(last) => (last.clone(), rec.segment_len),
            None => {
                let first = segment::create(
                    &dir,
                    SegmentHeader {
                        first_seq: 0,
                        lost_total: None,
                    },
                )?;
                (first, SEGMENT_HEADER_LEN as u64)
            }
        };
        let file = open_append(&segment)?;
        let mut log = Self {
            opts,
            _lock: lock,
            segment,
            file,
            on_disk,
            pending: Vec::with_capacity(WRITE_BATCH + 4096),
            unsynced: false,
            last_sync: Instant::now(),
            next_seq: rec.head.seq.map_or(0, |s| s + 1),
            head: rec.head,
            sealer,
            lost_total: rec.lost_total,
        };
        if !rec.notes.is_empty() {
            for note in rec.notes {
                let (wall, mono) = clock::now();
                log.push(wall, mono, note)?;
                if let Some(sealer) = &mut log.sealer {
                    sealer.since += 1;
                }
            }
            log.flush()?;
        }
        Ok(log)
    }

    /// Appends a record; returns its sequence number. Buffered: it reaches the kernel on the
    /// next `tick` (or once a batch fills) and the disk on the next fsync.
    pub fn append(&mut self, wall_ns: u64, mono_ns: u64, body: Body) -> Result<u64, AuditError> {
        if self.pending.len() >= MAX_PENDING {
            // The last chance before refusing: maybe the disk is back.
            if self.write_pending().is_err() {
                return Err(AuditError::Backlog(self.pending.len()));
            }
        }
        let lost = match &body {
            Body::Lost { total, .. } => Some(*total),
            _ => None,
        };
        let seq = self.push(wall_ns, mono_ns, body)?;
        if lost.is_some() {
            self.lost_total = lost;
        }
        if let Some(sealer) = &mut self.sealer {
            sealer.since += 1;
            if self.opts.seal_every > 0 && sealer.since >= self.opts.seal_every {
                // The record is in; a failing seal or fsync is retried and reported by `tick`.
                if let Err(e) = self.seal() {
                    tracing::warn!("sealing the log: {e}");
                }
            }
        }
        Ok(seq)
    }

    /// Housekeeping, to call about every 100 ms: hands batched records to the kernel, fsyncs
    /// when `fsync_interval` has passed, seals when `seal_interval` has.
    pub fn tick(&mut self) -> Result<(), AuditError> {
        self.write_pending()?;
        if let Some(sealer) = &self.sealer
            && sealer.since > 0
            && sealer.last.elapsed() >= self.opts.seal_interval
        {
            return self.seal();
        }
        let key_unstored = self.sealer.as_ref().is_some_and(|s| !s.stored);
        if (self.unsynced && self.last_sync.elapsed() >= self.opts.fsync_interval) || key_unstored {
            self.sync()?;
        }
        Ok(())
    }

    /// Writes and fsyncs everything appended so far.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.unsynced = true;
        self.sync()
    }

    /// The chain head, including records not yet on disk.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The `total` of the newest `Lost` record, found at open or appended since: the kernel drop
    /// count already accounted for in the log.
    pub fn last_lost_total(&self) -> Option<u64> {
        self.lost_total
    }

    /// Whether seals are being written (`log init` was run for this log).
    pub fn is_sealed(&self) -> bool {
        self.sealer.is_some()
    }

    /// Appends a seal over the current head, makes it durable, then destroys its key.
    fn seal(&mut self) -> Result<(), AuditError> {
        let Some(sealer) = &self.sealer else {
            return Ok(());
        };
        let body = Body::Seal {
            epoch: sealer.key.epoch(),
            mac: hex::encode(sealer.key.mac(&self.head.hash)),
        };
        let (wall, mono) = clock::now();
        self.push(wall, mono, body)?;
        if let Some(sealer) = &mut self.sealer {
            // Evolve in memory at once (the old key must not outlive its seal); the file
            // follows once the seal is on disk, so a crash never leaves the file ahead of the
            // log by more than one epoch (which `open` catches up).
            sealer.key.evolve();
            sealer.stored = false;
            sealer.since = 0;
            sealer.last = Instant::now();
        }
        self.flush()
    }

    /// Writes pending frames, fsyncs them, then stores an evolved key.
    fn sync(&mut self) -> Result<(), AuditError> {
        self.write_pending()?;
        if self.unsynced {
            self.file.sync_data().map_err(io_at(&self.segment.path))?;
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        if let Some(sealer) = &mut self.sealer
            && !sealer.stored
        {
            sealer.key.store(&self.opts.dir)?;
            sealer.stored = true;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), AuditError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.pending) {
            // Part of the batch may be in the file; later frames written after it would sit
            // behind a torn frame, so cut back to the last whole batch and retry later.
            if let Err(cut) = self.file.set_len(self.on_disk) {
                tracing::warn!(
                    "cutting a partial write from {}: {cut}",
                    self.segment.name()
                );
            }
            return Err(io_at(&self.segment.path)(e));
        }
        self.on_disk += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
        Ok(())
    }

    fn push(&mut self, wall_ns: u64, mono_ns: u64, body: Body) -> Result<u64, AuditError> {
        let seq = self.next_seq;
        let record = Record {
            seq,
            wall_ns,
            mono_ns,
            body,
        };
        let start = self.pending.len();
        let hash = encode::append_frame(&mut self.pending, &self.head.hash, &record)?;
        let in_segment = self.on_disk + start as u64;
        let frame_len = (self.pending.len() - start) as u64;
        if in_segment > SEGMENT_HEADER_LEN as u64
            && in_segment + frame_len > self.opts.segment_bytes
        {
            let frame = self.pending.split_off(start);
            match self.rotate(seq) {
                Ok(()) => self.pending = frame,
                Err(e) => {
                    // Keep logging into the old segment rather than lose records.
                    tracing::warn!("starting a new log segment: {e}");
                    self.pending.extend_from_slice(&frame);
                }
            }
        }
        self.head = Head {
            seq: Some(seq),
            hash,
        };
        self.next_seq += 1;
        if self.pending.len() >= WRITE_BATCH
            && let Err(e) = self.write_pending()
        {
            // Kept in memory; `tick` retries and reports.
            tracing::warn!("writing the log: {e}");
        }
        Ok(seq)
    }

    /// Closes the current segment (durably) and starts one whose first record is `first_seq`.
    fn rotate(&mut self, first_seq: u64) -> Result<(), AuditError> {
        self.write_pending()?;
        self.file.sync_data().map_err(io_at(&self.segment.path))?;
        self.unsynced = false;
        let segment = segment::create(
            &self.opts.dir,
            SegmentHeader {
                first_seq,
                lost_total: self.lost_total,
            },
        )?;
        self.file = open_append(&segment)?;
        self.segment = segment;
        self.on_disk = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("flushing the log on close: {e}");
        }
    }
}

fn open_append(segment: &SegmentFile) -> Result<File, AuditError> {
    OpenOptions::new()
        .append(true)
        .open(&segment.path)
        .map_err(io_at(&segment.path))
}

/// Brings a stored key past the log's newest seal: a crash between writing a seal and storing
/// the evolved key leaves the file one epoch behind.
fn catch_up(
    mut key: SealKey,
    last_seal: Option<u64>,
    unsealed: u64,
    notes: &mut Vec<Body>,
    dir: &std::path::Path,
) -> Result<Sealer, AuditError> {
    let next = last_seal.map_or(0, |e| e + 1);
    if key.epoch() < next {
        key.advance_to(next);
        key.store(dir)?;
    } else if key.epoch() > next {
        // Seals the key file has moved past are not in the log: it was cut or damaged
        // beyond its last seal. Say so; `verify` reports the gap as a bad seal.
        notes.push(Body::Recovered {
            segment: String::new(),
            cut_bytes: 0,
            last_seq: None,
            reason: format!(
                "seal key is at epoch {} but the log's newest seal is {}: seals are missing",
                key.epoch(),
                last_seal.map_or_else(|| "none".to_owned(), |e| format!("epoch {e}")),
            ),
        });
    }
    Ok(Sealer {
        key,
        stored: true,
        since: unsealed,
        last: Instant::now(),
    })
}
