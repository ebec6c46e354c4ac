//! The daemon's side: appending records, batching writes, fsyncing, rotating and sealing.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use agentguard_common::verdict::Verdict;
use serde::Serialize;

use super::{
    borrowed::{ActionRecordRef, ActionRef},
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
/// Capacity the buffer of waiting frames keeps once written: a batch and its last frame.
const PENDING_KEPT: usize = WRITE_BATCH + 4096;
/// Default of [`LogOptions::seal_every`].
pub const DEFAULT_SEAL_EVERY: u64 = 10_000;
/// `lost-events` source of the records the log itself refused (see [`LogOptions::max_pending`]).
pub const LOG_BACKLOG: &str = "log-backlog";
/// Default of [`LogOptions::max_pending`].
pub const DEFAULT_MAX_PENDING: usize = 64 * 1024 * 1024;

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
    /// Records are refused once this many bytes wait for the disk (a failing disk, or a slow
    /// one holding up a segment rotation): memory stays bounded. What is refused is counted
    /// and chained as a `lost-events` record (`source = log-backlog`) once there is room.
    pub max_pending: usize,
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
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

/// Records [`AuditLog`] refused for want of room, not yet reported in the chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Refused {
    /// Allowed actions.
    allowed: u64,
    /// Every other record (refusals and the daemon's own records).
    other: u64,
}

struct Sealer {
    /// The key of the next seal (already evolved past every seal written).
    key: SealKey,
    /// Whether `seal.key` on disk holds `key`.
    stored: bool,
    since: u64,
    last: Instant,
    /// Sequence number of the seal `key` follows: the key file may be updated once that seal
    /// is durable, not before (a crash must not leave the file ahead of the log).
    after_seal: Option<u64>,
}

/// An fsync of the log prepared under the append lock by [`AuditLog::begin_sync`] and run
/// outside it ([`SyncTicket::run`]), so appends continue while the disk works (group commit):
/// every record appended before `begin_sync` is covered by one fdatasync.
///
/// A ticket can also carry a rotation: the full segment is fsynced and only then is the next
/// one created (file, header and directory entry fsynced too), all outside the lock. Records
/// appended meanwhile are numbered and chained at once but wait in memory until the ticket is
/// ended: nothing is written into the next segment before the one before it is durable, so
/// only the last segment can have a torn tail, as recovery expects.
#[derive(Debug)]
pub struct SyncTicket {
    file: Arc<File>,
    path: PathBuf,
    written: u64,
    covers: Option<u64>,
    next: Option<NextSegment>,
}

/// The segment a rotating [`SyncTicket`] starts once the full one is durable.
#[derive(Debug)]
struct NextSegment {
    dir: PathBuf,
    header: SegmentHeader,
    started: Option<(SegmentFile, File)>,
}

impl SyncTicket {
    /// The fdatasync (and, for a rotation, the new segment). Call without holding the log,
    /// then hand the ticket to [`AuditLog::end_sync`] (or, when this failed,
    /// [`AuditLog::abandon_sync`]).
    pub fn run(&mut self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(io_at(&self.path))?;
        if let Some(next) = &mut self.next
            && next.started.is_none()
        {
            let segment = segment::create(&next.dir, next.header)?;
            let file = open_append(&segment)?;
            next.started = Some((segment, file));
        }
        Ok(())
    }
}

/// A rotation decided by the sequencer and not yet done: [`AuditLog::pending`] holds records
/// of the next segment only.
#[derive(Debug)]
struct Rotation {
    first_seq: u64,
    /// Where the full segment ends (to go on writing there if the rotation fails).
    full_len: u64,
    /// The newest `Lost` total among the records before `first_seq`, for the new header.
    lost_total: Option<u64>,
    /// A ticket doing it is outside the lock: nobody else may create the segment.
    in_flight: bool,
}

/// The open, appendable log. One per directory (an exclusive lock is held).
pub struct AuditLog {
    opts: LogOptions,
    _lock: File,
    segment: SegmentFile,
    /// Shared with a [`SyncTicket`] in flight.
    file: Arc<File>,
    /// Bytes of the current segment handed to the kernel.
    on_disk: u64,
    /// Frames not yet handed to the kernel.
    pending: Vec<u8>,
    unsynced: bool,
    /// Writes handed to the kernel so far (a ticket whose count is still current leaves
    /// nothing unsynced).
    writes: u64,
    /// Newest record known to be fsynced.
    durable: Option<u64>,
    last_sync: Instant,
    next_seq: u64,
    head: Head,
    sealer: Option<Sealer>,
    lost_total: Option<u64>,
    rotation: Option<Rotation>,
    refused: Refused,
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
        let file = Arc::new(open_append(&segment)?);
        let durable = rec.head.seq;
        let mut log = Self {
            opts,
            _lock: lock,
            segment,
            file,
            on_disk,
            pending: Vec::with_capacity(PENDING_KEPT),
            unsynced: false,
            writes: 0,
            durable,
            last_sync: Instant::now(),
            next_seq: rec.head.seq.map_or(0, |s| s + 1),
            head: rec.head,
            sealer,
            lost_total: rec.lost_total,
            rotation: None,
            refused: Refused::default(),
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
        let allowed = matches!(&body, Body::Action(a) if a.verdict() == Some(Verdict::Allowed));
        self.make_room(wall_ns, mono_ns, allowed)?;
        let lost = match &body {
            Body::Lost { total, .. } => Some(*total),
            _ => None,
        };
        let seq = self.push(wall_ns, mono_ns, body)?;
        if lost.is_some() {
            self.lost_total = lost;
        }
        self.count_for_seal();
        Ok(seq)
    }

    /// Appends an action record from its borrowed form, without building the owned record:
    /// the same bytes as `append(wall_ns, mono_ns, Body::Action(action.to_owned_action()))`.
    pub fn append_action(
        &mut self,
        wall_ns: u64,
        mono_ns: u64,
        action: &ActionRef<'_>,
    ) -> Result<u64, AuditError> {
        let allowed = Verdict::from_u8(action.verdict) == Some(Verdict::Allowed);
        self.make_room(wall_ns, mono_ns, allowed)?;
        let seq = self.push_with(|seq| ActionRecordRef {
            seq,
            wall_ns,
            mono_ns,
            action,
        })?;
        self.count_for_seal();
        Ok(seq)
    }

    /// Whether a record would be taken now without waiting for the disk.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.opts.max_pending
    }

    /// Refuses a record (counting it) when too much waits for the disk; once there is room
    /// again, first chains a `lost-events` record for what was refused, so that the loss is in
    /// the log, not only in the daemon's messages.
    fn make_room(&mut self, wall_ns: u64, mono_ns: u64, allowed: bool) -> Result<(), AuditError> {
        if !self.has_room() {
            // The last chance before refusing: maybe the disk is back.
            if self.rotate_now().is_err() || self.write_pending().is_err() || !self.has_room() {
                if allowed {
                    self.refused.allowed += 1;
                } else {
                    self.refused.other += 1;
                }
                return Err(AuditError::Backlog(self.pending.len()));
            }
        }
        if self.refused != Refused::default() {
            let Refused { allowed, other } = self.refused;
            self.push(
                wall_ns,
                mono_ns,
                Body::LostEvents {
                    source: LOG_BACKLOG.into(),
                    agent: String::new(),
                    instance: String::new(),
                    cgroup_id: 0,
                    allowed,
                    refusals: other,
                },
            )?;
            self.refused = Refused::default();
            self.count_for_seal();
        }
        Ok(())
    }

    fn count_for_seal(&mut self) {
        if let Some(sealer) = &mut self.sealer {
            sealer.since += 1;
            if self.opts.seal_every > 0 && sealer.since >= self.opts.seal_every {
                // The record is in; a failing seal or fsync is retried and reported by `tick`.
                if let Err(e) = self.seal() {
                    tracing::warn!("sealing the log: {e}");
                }
            }
        }
    }

    /// Housekeeping, to call about every 100 ms: hands batched records to the kernel, fsyncs
    /// when `fsync_interval` has passed, seals when `seal_interval` has.
    ///
    /// Runs the fsync under `&mut self`; the daemon uses [`Self::begin_sync`] and
    /// [`Self::end_sync`] instead, so appends go on while the disk works.
    pub fn tick(&mut self) -> Result<(), AuditError> {
        if let Some(mut ticket) = self.begin_sync()? {
            if let Err(e) = ticket.run() {
                self.abandon_sync(ticket);
                return Err(e);
            }
            self.end_sync(ticket)?;
        }
        Ok(())
    }

    /// The first half of `tick` (under the append lock): hands batched records to the kernel,
    /// seals when `seal_interval` has passed, and returns the fsync to run when one is due
    /// (`fsync_interval` passed, or a seal's evolved key waits to be stored).
    pub fn begin_sync(&mut self) -> Result<Option<SyncTicket>, AuditError> {
        if let Some(sealer) = &self.sealer
            && sealer.since > 0
            && sealer.last.elapsed() >= self.opts.seal_interval
        {
            self.seal()?;
        }
        if self.rotation.is_some() {
            return Ok(self.rotation_ticket());
        }
        self.write_pending()?;
        let key_unstored = self.sealer.as_ref().is_some_and(|s| !s.stored);
        if !(self.unsynced && self.last_sync.elapsed() >= self.opts.fsync_interval || key_unstored)
        {
            return Ok(None);
        }
        if !self.unsynced {
            // Only the key is behind (its seal is durable): store it now.
            self.sync()?;
            return Ok(None);
        }
        Ok(Some(SyncTicket {
            file: self.file.clone(),
            path: self.segment.path.clone(),
            written: self.writes,
            covers: self.head.seq,
            next: None,
        }))
    }

    /// The second half (under the append lock again), after [`SyncTicket::run`] succeeded:
    /// notes what is durable, moves to a segment the ticket started (writing the records that
    /// waited for it) and stores an evolved seal key whose seal now is durable.
    pub fn end_sync(&mut self, ticket: SyncTicket) -> Result<(), AuditError> {
        if Arc::ptr_eq(&ticket.file, &self.file) && ticket.written == self.writes {
            self.unsynced = false;
        }
        self.durable = self.durable.max(ticket.covers);
        self.last_sync = Instant::now();
        if let Some(NextSegment {
            started: Some((segment, file)),
            ..
        }) = ticket.next
        {
            self.start_segment(segment, file);
            self.write_pending()?;
        }
        self.store_key_if_durable()
    }

    /// After [`SyncTicket::run`] failed: nothing is known durable by it. A rotation it
    /// carried is given up and the waiting records go on into the full segment rather than
    /// being lost (the next full batch tries again).
    pub fn abandon_sync(&mut self, ticket: SyncTicket) {
        if ticket.next.is_some()
            && let Some(rotation) = self.rotation.take()
        {
            self.on_disk = rotation.full_len;
        }
    }

    /// The ticket that does the decided rotation (`None` when none is decided or a ticket
    /// already does it). Touches no record: the sequencer may be mid-record when it is called.
    fn rotation_ticket(&mut self) -> Option<SyncTicket> {
        let rotation = self.rotation.as_mut().filter(|r| !r.in_flight)?;
        rotation.in_flight = true;
        Some(SyncTicket {
            file: self.file.clone(),
            path: self.segment.path.clone(),
            written: self.writes,
            covers: rotation.first_seq.checked_sub(1),
            next: Some(NextSegment {
                dir: self.opts.dir.clone(),
                header: SegmentHeader {
                    first_seq: rotation.first_seq,
                    lost_total: rotation.lost_total,
                },
                started: None,
            }),
        })
    }

    /// Switches appends to `segment` (freshly created, header only).
    fn start_segment(&mut self, segment: SegmentFile, file: File) {
        self.file = Arc::new(file);
        self.segment = segment;
        self.on_disk = SEGMENT_HEADER_LEN as u64;
        self.unsynced = false;
        self.rotation = None;
    }

    /// Does a decided rotation here, under `&mut self` (a caller without a committer, a flush,
    /// or records outgrowing memory): fails when a ticket is doing it outside the lock.
    fn rotate_now(&mut self) -> Result<(), AuditError> {
        match &self.rotation {
            None => Ok(()),
            Some(r) if r.in_flight => Err(AuditError::Rotating(self.opts.dir.clone())),
            Some(_) => match self.rotation_ticket() {
                Some(mut ticket) => match ticket.run() {
                    Ok(()) => self.end_sync(ticket),
                    Err(e) => {
                        self.abandon_sync(ticket);
                        Err(e)
                    }
                },
                None => Ok(()),
            },
        }
    }

    /// Sequence number of the newest record known to be fsynced (`None`: none is).
    pub fn durable(&self) -> Option<u64> {
        self.durable
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
            self.seal()?;
        }
        self.flush()
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
        let seq = self.push(wall, mono, body)?;
        if let Some(sealer) = &mut self.sealer {
            // Evolve in memory at once (the old key must not outlive its seal); the file
            // follows once the seal is on disk (the next sync, which `tick` does at once while
            // a key waits), so a crash never leaves the file ahead of the log by more than one
            // epoch (which `open` catches up).
            sealer.key.evolve();
            sealer.stored = false;
            sealer.since = 0;
            sealer.last = Instant::now();
            sealer.after_seal = Some(seq);
        }
        Ok(())
    }

    /// Stores the evolved seal key once the seal it follows is durable.
    fn store_key_if_durable(&mut self) -> Result<(), AuditError> {
        if let Some(sealer) = &mut self.sealer
            && !sealer.stored
            && sealer.after_seal <= self.durable
        {
            sealer.key.store(&self.opts.dir)?;
            sealer.stored = true;
        }
        Ok(())
    }

    /// Writes pending frames (after a decided rotation), fsyncs them, then stores an evolved
    /// key.
    fn sync(&mut self) -> Result<(), AuditError> {
        self.rotate_now()?;
        self.write_pending()?;
        if self.unsynced {
            self.file.sync_data().map_err(io_at(&self.segment.path))?;
            self.unsynced = false;
        }
        self.durable = self.head.seq;
        self.last_sync = Instant::now();
        self.store_key_if_durable()
    }

    fn write_pending(&mut self) -> Result<(), AuditError> {
        // During a rotation the frames belong to the next segment: they wait for it.
        if self.pending.is_empty() || self.rotation.is_some() {
            return Ok(());
        }
        self.writes += 1;
        if let Err(e) = (&*self.file).write_all(&self.pending) {
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
        // Records waiting for a rotation can grow the buffer far past a batch (up to
        // `max_pending`): give that memory back instead of keeping it resident for good.
        if self.pending.capacity() > PENDING_KEPT {
            self.pending.shrink_to(PENDING_KEPT);
        }
        self.unsynced = true;
        Ok(())
    }

    fn push(&mut self, wall_ns: u64, mono_ns: u64, body: Body) -> Result<u64, AuditError> {
        self.push_with(|seq| Record {
            seq,
            wall_ns,
            mono_ns,
            body,
        })
    }

    /// The sequencer: numbers, frames and chains one record (`record(seq)`, a [`Record`] or a
    /// borrowed view encoding to the same bytes).
    fn push_with<R: Serialize>(
        &mut self,
        record: impl FnOnce(u64) -> R,
    ) -> Result<u64, AuditError> {
        let seq = self.next_seq;
        let record = record(seq);
        let start = self.pending.len();
        let hash = encode::append_frame(&mut self.pending, &self.head.hash, &record)?;
        let in_segment = self.on_disk + start as u64;
        let frame_len = (self.pending.len() - start) as u64;
        if in_segment > SEGMENT_HEADER_LEN as u64
            && in_segment + frame_len > self.opts.segment_bytes
        {
            let frame = self.pending.split_off(start);
            // The next segment filled before the one before it was started: start that one
            // here (unless a committer is doing it; then this segment grows past the size).
            if !self.rotation.as_ref().is_some_and(|r| r.in_flight)
                && let Err(e) = self.rotate_now()
            {
                tracing::warn!("starting a new log segment: {e}");
            }
            if self.rotation.is_none() {
                match self.write_pending() {
                    Ok(()) => {
                        // Everything before `seq` is in this segment: the next one starts at
                        // `seq`, made by the next ticket (outside the lock) or `rotate_now`.
                        self.rotation = Some(Rotation {
                            first_seq: seq,
                            full_len: self.on_disk,
                            lost_total: self.lost_total,
                            in_flight: false,
                        });
                        self.on_disk = SEGMENT_HEADER_LEN as u64;
                    }
                    // Keep logging into the old segment rather than lose records.
                    Err(e) => tracing::warn!("starting a new log segment: {e}"),
                }
            }
            self.pending.extend_from_slice(&frame);
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
        after_seal: None,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::audit::{
        self, Class, SealSeed,
        borrowed::{ActionRef, TargetRef},
        record::{Action, Target},
        testutil::{Surgery, action, options, read_all},
        verify::Seals,
    };

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

    /// Appends until a rotation is decided; returns the first sequence number of the next
    /// segment.
    fn fill_segment(log: &mut AuditLog) -> u64 {
        let mut i = log.head().seq.map_or(0, |s| s + 1);
        while log.rotation.is_none() {
            log.append(i, i, action(i)).expect("append");
            i += 1;
        }
        log.rotation.as_ref().map_or(0, |r| r.first_seq)
    }

    /// A log in a fresh directory whose segments rotate after 4 KiB.
    fn small_segments() -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions {
            segment_bytes: 4096,
            ..options(dir.path())
        };
        let log = AuditLog::open(opts).expect("open");
        (dir, log)
    }

    /// A rotation's fsyncs run in a ticket outside the append lock: appends go on meanwhile
    /// (numbered and chained, waiting in memory), nothing reaches the next segment before the
    /// full one is durable, a crash image taken then recovers to an intact chain holding every
    /// record reported durable, and ending the ticket writes the waiting records in order.
    #[test]
    fn rotation_fsyncs_outside_the_append_lock() {
        let (dir, mut log) = small_segments();
        let first_seq = fill_segment(&mut log);
        let mut ticket = log
            .begin_sync()
            .expect("begin")
            .expect("a rotation is a ticket");
        assert!(
            log.begin_sync().expect("begin").is_none(),
            "one rotation at a time"
        );
        // Appends while the ticket is out (the daemon would have released the lock).
        for i in 0..5 {
            log.append(i, i, action(i))
                .expect("append during the rotation");
        }
        let head = log.head().seq.expect("records");
        assert_eq!(head, first_seq + 5);
        let segments = segment::list(dir.path()).expect("list");
        assert_eq!(segments.len(), 1, "the next segment waits for the ticket");
        assert!(
            log.durable() < Some(first_seq),
            "nothing after the full segment is durable"
        );
        // A crash now: the disk holds the full segment only; recovery keeps its records.
        let crash = tempfile::tempdir().expect("tempdir");
        for e in fs::read_dir(dir.path()).expect("ls") {
            let name = e.expect("entry").file_name();
            fs::copy(dir.path().join(&name), crash.path().join(&name)).expect("copy");
        }
        let recovered = AuditLog::open(options(crash.path())).expect("recover");
        assert!(recovered.head().seq >= log.durable());
        drop(recovered);
        assert!(
            audit::verify(crash.path(), None, None)
                .expect("verify")
                .intact()
        );

        ticket.run().expect("fsync and new segment");
        log.end_sync(ticket).expect("end");
        assert_eq!(log.durable(), Some(first_seq - 1));
        let segments = segment::list(dir.path()).expect("list");
        assert_eq!(
            segments.iter().map(|s| s.first_seq).collect::<Vec<_>>(),
            [0, first_seq]
        );
        log.flush().expect("flush");
        assert_eq!(log.durable(), Some(head));
        drop(log);
        let records = read_all(dir.path());
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (0..=head).collect::<Vec<_>>()
        );
        let report = audit::verify(dir.path(), None, None).expect("verify");
        assert!(report.intact(), "{report}");
    }

    /// A rotation whose ticket failed is given up: the records that waited for it go into the
    /// full segment, the next record decides the rotation again, and the chain stays intact.
    #[test]
    fn a_failed_rotation_keeps_logging_in_the_full_segment() {
        let (dir, mut log) = small_segments();
        let first_seq = fill_segment(&mut log);
        let ticket = log.begin_sync().expect("begin").expect("a rotation");
        log.abandon_sync(ticket);
        assert!(log.rotation.is_none());
        log.flush().expect("flush");
        assert_eq!(
            log.durable(),
            log.head().seq,
            "the waiting record is in the full segment"
        );
        assert_eq!(segment::list(dir.path()).expect("list").len(), 1);
        let next = fill_segment(&mut log);
        assert!(next > first_seq);
        log.tick().expect("tick: the rotation");
        drop(log);
        let segments = segment::list(dir.path()).expect("list");
        assert_eq!(
            segments.iter().map(|s| s.first_seq).collect::<Vec<_>>(),
            [0, next]
        );
        let report = audit::verify(dir.path(), None, None).expect("verify");
        assert!(report.intact(), "{report}");
        assert_eq!(report.records, next + 1);
    }

    /// Records refused for want of room (a rotation's fsync holding everything up) are not
    /// lost without a trace: once the rotation is done, the next record is preceded by a
    /// `log-backlog` gap counting them (allowed actions apart), and the chain is intact.
    #[test]
    fn records_refused_for_want_of_room_are_chained_as_a_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(LogOptions {
            segment_bytes: 4096,
            max_pending: 8192,
            ..options(dir.path())
        })
        .expect("open");
        fill_segment(&mut log);
        let mut ticket = log.begin_sync().expect("begin").expect("a rotation");
        // The rotation is in flight: records wait in memory until the bound, then are refused.
        let mut taken = 0u64;
        let mut refused = Refused::default();
        let mut i = 1000;
        while refused.allowed < 5 || refused.other < 5 {
            let body = action(i);
            let allowed = matches!(&body, Body::Action(a) if a.verdict() == Some(Verdict::Allowed));
            match log.append(i, i, body) {
                Ok(_) => taken += 1,
                Err(AuditError::Backlog(_)) if allowed => refused.allowed += 1,
                Err(AuditError::Backlog(_)) => refused.other += 1,
                Err(e) => panic!("append: {e}"),
            }
            i += 1;
        }
        assert!(taken > 0 && !log.has_room());
        ticket.run().expect("rotation");
        log.end_sync(ticket).expect("end");
        assert!(log.has_room());
        let next = log
            .append(i, i, action(i))
            .expect("append after the rotation");
        log.flush().expect("flush");
        drop(log);

        let records = read_all(dir.path());
        let gaps: Vec<_> = records
            .iter()
            .filter_map(|r| match &r.body {
                Body::LostEvents {
                    source,
                    allowed,
                    refusals,
                    ..
                } => Some((r.seq, source.as_str(), *allowed, *refusals)),
                _ => None,
            })
            .collect();
        assert_eq!(
            gaps,
            [(next - 1, LOG_BACKLOG, refused.allowed, refused.other)],
            "one gap, right before the first record taken again"
        );
        let report = audit::verify(dir.path(), None, None).expect("verify");
        assert!(report.intact(), "{report}");
    }

    fn lock(log: &std::sync::Mutex<AuditLog>) -> std::sync::MutexGuard<'_, AuditLog> {
        log.lock().expect("not poisoned")
    }

    /// What the daemon does: producers append (owned and borrowed records) under the lock
    /// while a committer fsyncs outside it, with seals; a crash image taken mid-way (the key
    /// file, then the segments, as the disk could hold them) recovers to an intact, sealed chain
    /// that holds every record the log had reported durable, and the full log is one serial
    /// chain with each producer's records in order.
    #[test]
    fn two_producers_group_commit_and_a_crash_image_keep_the_chain() {
        use std::sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        };

        const PER_PRODUCER: u64 = 3000;
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = audit::init(dir.path(), false).expect("init");
        let opts = LogOptions {
            seal_every: 250,
            fsync_interval: Duration::ZERO,
            segment_bytes: 256 * 1024,
            ..options(dir.path())
        };
        let log = Arc::new(Mutex::new(AuditLog::open(opts).expect("open")));
        let done = Arc::new(AtomicBool::new(false));
        let committer = {
            let (log, done) = (log.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let ticket = lock(&log).begin_sync().expect("begin");
                    if let Some(mut t) = ticket {
                        t.run().expect("fdatasync");
                        lock(&log).end_sync(t).expect("end");
                    }
                }
            })
        };
        let producers: Vec<_> = (0..2u64)
            .map(|p| {
                let log = log.clone();
                std::thread::spawn(move || {
                    let owned = action(p);
                    let Body::Action(a) = &owned else {
                        unreachable!("testutil::action is an action")
                    };
                    let comm = format!("producer{p}");
                    for i in 0..PER_PRODUCER {
                        let mut log = lock(&log);
                        if p == 0 {
                            let borrowed = ActionRef {
                                pid: i as u32,
                                comm: comm.as_str().into(),
                                ..borrowed_of(a)
                            };
                            log.append_action(i, p, &borrowed).expect("append");
                        } else {
                            let mut a = a.clone();
                            a.pid = i as u32;
                            a.comm.clone_from(&comm);
                            log.append(i, p, Body::Action(a)).expect("append");
                        }
                    }
                })
            })
            .collect();

        // The crash image, taken while both producers and the committer run.
        while lock(&log).head().seq.is_none_or(|s| s < PER_PRODUCER) {
            std::thread::yield_now();
        }
        let durable = lock(&log).durable();
        let crash = tempfile::tempdir().expect("tempdir");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        // The key file first: the daemon stores a key only after its seal is durable, so an
        // older key with newer segments is what a disk can hold, never the reverse.
        names.sort_by_key(|n| *n != *files::SEAL_KEY);
        for name in names {
            fs::copy(dir.path().join(&name), crash.path().join(&name)).expect("copy");
        }

        for p in producers {
            p.join().expect("producer");
        }
        done.store(true, Ordering::Relaxed);
        committer.join().expect("committer");
        drop(Arc::into_inner(log).expect("last reference"));

        let report = audit::verify(dir.path(), Some(&seed), None).expect("verify");
        assert!(report.intact(), "{report}");
        let records = read_all(dir.path());
        let mut next_pid = [0u32; 2];
        for r in &records {
            if let Body::Action(a) = &r.body {
                let p = usize::from(a.comm == "producer1");
                assert_eq!(a.pid, next_pid[p], "producer {p} in order");
                next_pid[p] += 1;
            }
        }
        assert_eq!(next_pid, [PER_PRODUCER as u32; 2]);
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (0..records.len() as u64).collect::<Vec<_>>()
        );

        let recovered = AuditLog::open(options(crash.path())).expect("recover");
        assert!(
            recovered.head().seq >= durable,
            "every durable record survives: head {:?}, durable {durable:?}",
            recovered.head()
        );
        drop(recovered);
        let report = audit::verify(crash.path(), Some(&seed), None).expect("verify");
        assert!(report.intact(), "{report}");
    }

    fn borrowed_of(a: &Action) -> ActionRef<'_> {
        let Target::Net {
            addr,
            port,
            protocol,
            name,
        } = &a.target
        else {
            unreachable!("testutil::action is a network action")
        };
        ActionRef {
            kind: a.kind,
            verdict: a.verdict,
            backend: a.backend,
            agent: &a.agent,
            instance: &a.instance,
            cgroup_id: a.cgroup_id,
            pid: a.pid,
            tid: a.tid,
            uid: a.uid,
            comm: a.comm.as_str().into(),
            target: TargetRef::Net {
                addr: *addr,
                port: *port,
                protocol: *protocol,
                name: name.as_deref(),
            },
            rule: a.rule.as_deref(),
            flags: a.flags,
            generation: a.generation,
        }
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
