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
/// Default of [`LogOptions::seal_every`].
pub const DEFAULT_SEAL_EVERY: u64 = 10_000;
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
            seal_every: DEFAULT_SEAL_EVERY,
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

    /// The log directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.opts.dir
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

    /// Seals the records appended since the last seal now (nothing to do for an unsealed log or
    /// when nothing was appended since): a clean shutdown leaves no unsealed tail.
    pub fn seal_now(&mut self) -> Result<(), AuditError> {
        if self.sealer.as_ref().is_some_and(|s| s.since > 0) {
            self.seal()
        } else {
            self.flush()
        }
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::audit::{
        self, Class, SealSeed,
        follow::Tail,
        testutil::{Surgery, action, options},
        verify::Seals,
    };

    fn read_all(dir: &std::path::Path) -> Vec<Record> {
        let mut tail = Tail::new(dir);
        let mut out = Vec::new();
        loop {
            let batch = tail.poll().expect("poll");
            assert!(batch.warnings.is_empty(), "{:?}", batch.warnings);
            out.extend(batch.records);
            if !batch.more {
                return out;
            }
        }
    }

    #[test]
    fn records_round_trip_and_continue_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        assert_eq!(log.head().seq, None);
        let bodies: Vec<Body> = (0..50).map(action).collect();
        for (i, body) in bodies.iter().enumerate() {
            assert_eq!(
                log.append(i as u64, 7, body.clone()).expect("append"),
                i as u64
            );
        }
        let head = log.head();
        drop(log);
        assert_eq!(audit::head(dir.path()).expect("head"), head);
        let mut log = AuditLog::open(options(dir.path())).expect("reopen");
        assert_eq!(log.head(), head);
        assert_eq!(log.append(99, 7, action(99)).expect("append"), 50);
        log.flush().expect("flush");
        let records = read_all(dir.path());
        assert_eq!(records.len(), 51);
        for (i, r) in records.iter().take(50).enumerate() {
            assert_eq!((r.seq, r.wall_ns, r.mono_ns), (i as u64, i as u64, 7));
            assert_eq!(r.body, bodies[i]);
        }
        let report = audit::verify(dir.path(), None, Some(log.head().anchor())).expect("verify");
        assert!(report.intact(), "{report}");
        assert_eq!(report.seals, Seals::Unsealed);
    }

    #[test]
    fn rotation_keeps_the_chain_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions {
            segment_bytes: 4096,
            ..options(dir.path())
        };
        let mut log = AuditLog::open(opts.clone()).expect("open");
        for i in 0..300 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        let segments = segment::list(dir.path()).expect("list");
        assert!(segments.len() > 5, "{} segments", segments.len());
        for s in &segments {
            assert!(fs::metadata(&s.path).expect("stat").len() <= 4096);
            let first = Surgery::open(dir.path(), s.first_seq);
            assert_eq!(first.record(0).seq, s.first_seq);
        }
        // The first record of each segment chains to the last of the one before.
        for pair in segments.windows(2) {
            let a = Surgery::open(dir.path(), pair[0].first_seq);
            let b = Surgery::open(dir.path(), pair[1].first_seq);
            assert_eq!(b.prev(0), a.hash(a.frames.len() - 1));
        }
        let mut log = AuditLog::open(opts).expect("reopen");
        log.append(1, 1, action(1)).expect("append");
        drop(log);
        let records = read_all(dir.path());
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (0..301).collect::<Vec<_>>()
        );
        let report = audit::verify(dir.path(), None, None).expect("verify");
        assert!(report.intact(), "{report}");
        assert_eq!(report.records, 301);
    }

    #[test]
    fn torn_tail_is_cut_and_described() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        for i in 0..20 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        // A crash: the last record half written, then junk where the disk had no data yet.
        let seg = dir.path().join(segment::file_name(0));
        let intact = Surgery::open(dir.path(), 0);
        let full = fs::metadata(&seg).expect("stat").len();
        let last_len = intact.frames[19].len() as u64;
        let f = OpenOptions::new().write(true).open(&seg).expect("open seg");
        f.set_len(full - last_len / 2).expect("truncate");
        drop(f);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open seg");
        f.write_all(&[0u8; 100]).expect("junk");
        drop(f);
        let cut = full - last_len / 2 + 100 - (full - last_len);

        let report = audit::verify(dir.path(), None, None).expect("verify");
        assert_eq!(report.problem.expect("torn").class, Class::TornTail);

        let log = AuditLog::open(options(dir.path())).expect("recover");
        assert_eq!(log.head().seq, Some(19));
        drop(log);
        let records = read_all(dir.path());
        assert_eq!(records.len(), 20);
        match &records[19].body {
            Body::Recovered {
                segment,
                cut_bytes,
                last_seq,
                reason,
            } => {
                assert_eq!(segment, &segment::file_name(0));
                assert_eq!(*cut_bytes, cut);
                assert_eq!(*last_seq, Some(18));
                assert!(reason.contains("torn tail"), "{reason}");
            }
            other => panic!("expected Recovered, got {other:?}"),
        }
        let report = audit::verify(dir.path(), None, None).expect("verify");
        assert!(report.intact(), "{report}");
        // Nothing more to cut on the next start.
        drop(AuditLog::open(options(dir.path())).expect("reopen"));
        assert_eq!(read_all(dir.path()).len(), 20);
    }

    #[test]
    fn damage_in_the_middle_is_left_for_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        for i in 0..20 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        let mut s = Surgery::open(dir.path(), 0);
        s.frames[10][0] ^= 0xff;
        s.save();
        let before = fs::metadata(dir.path().join(segment::file_name(0)))
            .expect("stat")
            .len();
        let log = AuditLog::open(options(dir.path())).expect("open");
        assert_eq!(
            log.head().seq,
            Some(20),
            "continues after the intact records"
        );
        drop(log);
        assert!(
            fs::metadata(dir.path().join(segment::file_name(0)))
                .expect("stat")
                .len()
                > before
        );
        let segments = segment::list(dir.path()).expect("list");
        let note = audit::reader::last_intact(&segments, 0)
            .expect("scan")
            .expect("a record")
            .record
            .expect("decodes");
        assert!(
            matches!(&note.body, Body::Recovered { cut_bytes: 0, reason, .. } if reason.contains("left in place")),
            "{note:?}"
        );
        let report = audit::verify(dir.path(), None, None).expect("verify");
        let problem = report.problem.expect("damage");
        assert_eq!((problem.class, problem.seq), (Class::Modified, Some(10)));
    }

    #[test]
    fn lost_total_survives_restart_and_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions {
            segment_bytes: 2048,
            ..options(dir.path())
        };
        let mut log = AuditLog::open(opts.clone()).expect("open");
        assert_eq!(log.last_lost_total(), None);
        log.append(
            0,
            0,
            Body::Lost {
                dropped: 5,
                total: 5,
            },
        )
        .expect("append");
        assert_eq!(log.last_lost_total(), Some(5));
        for i in 0..100 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        assert!(segment::list(dir.path()).expect("list").len() > 2);
        let log = AuditLog::open(opts).expect("reopen");
        assert_eq!(log.last_lost_total(), Some(5));
        drop(log);
        assert!(
            audit::verify(dir.path(), None, None)
                .expect("verify")
                .intact()
        );
    }

    #[test]
    fn seals_evolve_the_key_and_verify_with_the_seed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = audit::init(dir.path(), false).expect("init");
        let key0 = fs::read(dir.path().join(files::SEAL_KEY)).expect("key");
        let opts = LogOptions {
            seal_every: 5,
            ..options(dir.path())
        };
        let mut log = AuditLog::open(opts.clone()).expect("open");
        assert!(log.is_sealed());
        for i in 0..12 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        // Two seals (after 5 and 10 records): the stored key is now epoch 2, and the epoch-0
        // key is gone from the file.
        let stored = SealKey::load(dir.path()).expect("load").expect("key");
        assert_eq!(stored.epoch(), 2);
        let key1 = fs::read(dir.path().join(files::SEAL_KEY)).expect("key");
        assert_ne!(key0, key1);
        let mut expect = seed.first_key();
        expect.advance_to(2);
        assert_eq!(stored, expect);

        let report = audit::verify(dir.path(), Some(&seed), None).expect("verify");
        assert!(report.intact(), "{report}");
        assert_eq!(report.seals, Seals::Verified { count: 2 });
        assert_eq!(report.unsealed_tail, 2);
        let unchecked = audit::verify(dir.path(), None, None).expect("verify");
        assert!(unchecked.intact());
        assert_eq!(unchecked.seals, Seals::NotChecked { count: 2 });
        assert!(unchecked.to_string().contains("NOT checked"), "{unchecked}");

        let wrong = SealSeed::generate().expect("seed");
        let report = audit::verify(dir.path(), Some(&wrong), None).expect("verify");
        assert_eq!(report.seals, Seals::Verified { count: 0 });
        let problem = report.problem.expect("bad seal");
        assert_eq!((problem.class, problem.seq), (Class::BadSeal, Some(5)));
    }

    #[test]
    fn a_key_file_left_behind_by_a_crash_catches_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = audit::init(dir.path(), false).expect("init");
        let opts = LogOptions {
            seal_every: 5,
            ..options(dir.path())
        };
        let mut log = AuditLog::open(opts.clone()).expect("open");
        for i in 0..5 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        // As if the daemon died after the seal was on disk but before the new key was.
        seed.first_key().store(dir.path()).expect("store");
        let mut log = AuditLog::open(opts).expect("reopen");
        for i in 0..5 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        assert_eq!(
            SealKey::load(dir.path())
                .expect("load")
                .expect("key")
                .epoch(),
            2
        );
        let report = audit::verify(dir.path(), Some(&seed), None).expect("verify");
        assert!(report.intact(), "{report}");
        assert_eq!(report.seals, Seals::Verified { count: 2 });
    }

    #[test]
    fn seals_come_by_time_on_tick() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = audit::init(dir.path(), false).expect("init");
        let opts = LogOptions {
            seal_interval: Duration::ZERO,
            ..options(dir.path())
        };
        let mut log = AuditLog::open(opts).expect("open");
        log.tick().expect("tick");
        assert_eq!(log.head().seq, None, "nothing to seal yet");
        log.append(0, 0, action(0)).expect("append");
        log.tick().expect("tick");
        assert_eq!(log.head().seq, Some(1), "the seal");
        drop(log);
        let report = audit::verify(dir.path(), Some(&seed), None).expect("verify");
        assert_eq!(report.seals, Seals::Verified { count: 1 });
    }

    #[test]
    fn seal_now_covers_the_tail_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = audit::init(dir.path(), false).expect("init");
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        log.append(0, 0, action(0)).expect("append");
        log.seal_now().expect("seal");
        log.seal_now().expect("nothing new: no second seal");
        assert_eq!(log.head().seq, Some(1), "one record and one seal");
        drop(log);
        let report = audit::verify(dir.path(), Some(&seed), None).expect("verify");
        assert_eq!(report.seals, Seals::Verified { count: 1 });
        assert_eq!(report.unsealed_tail, 0);
    }

    #[test]
    fn one_writer_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _log = AuditLog::open(options(dir.path())).expect("open");
        assert!(matches!(
            AuditLog::open(options(dir.path())),
            Err(AuditError::Locked(_))
        ));
        assert!(matches!(
            audit::init(dir.path(), true),
            Err(AuditError::Locked(_))
        ));
    }

    #[test]
    fn audit_log_is_send() {
        fn send<T: Send>() {}
        send::<AuditLog>();
    }

    /// Throughput of the userspace pipeline (encode, chain, buffered write, periodic fsync,
    /// seals every 10,000 records). Run with
    /// `cargo test --release -p agentguard-userspace throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn throughput() {
        let dir = tempfile::tempdir_in(".").expect("tempdir");
        audit::init(dir.path(), false).expect("init");
        let mut log = AuditLog::open(LogOptions::new(dir.path())).expect("open");
        let bodies: Vec<Body> = (0..64).map(action).collect();
        let n = 2_000_000u64;
        let start = Instant::now();
        let mut last_tick = Instant::now();
        for i in 0..n {
            log.append(i, i, bodies[(i % 64) as usize].clone())
                .expect("append");
            if i % 1024 == 0 && last_tick.elapsed() >= Duration::from_millis(100) {
                log.tick().expect("tick");
                last_tick = Instant::now();
            }
        }
        log.flush().expect("flush");
        let secs = start.elapsed().as_secs_f64();
        let bytes: u64 = segment::list(dir.path())
            .expect("list")
            .iter()
            .map(|s| fs::metadata(&s.path).expect("stat").len())
            .sum();
        println!(
            "{n} records in {secs:.2} s: {:.0} records/s, {:.0} bytes/record",
            n as f64 / secs,
            bytes as f64 / n as f64
        );
    }
}
