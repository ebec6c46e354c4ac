//! Reading a live log in order, segment by segment, picking up what the writer appends.
//!
//! Used for `log show` with and without `--follow`. A reader cannot tell a frame still being
//! written from a torn one, so an incomplete frame at the end of the newest segment is waited
//! for; once a newer segment exists it was a torn tail and is skipped. Records are handed out
//! at most once (by sequence number), so a writer cutting a torn tail on restart does not
//! make records repeat.

use std::{fs, path::PathBuf};

use super::{
    encode::{self, FrameError},
    error::{AuditError, io_at},
    header::SEGMENT_HEADER_LEN,
    record::Record,
    segment::{self, SegmentFile},
};

/// What one [`Tail::poll`] produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// New records, in order.
    pub records: Vec<Record>,
    /// What was skipped and why (damage, a torn tail), for stderr.
    pub warnings: Vec<String>,
    /// More is readable right now (the next segment); poll again without waiting.
    pub more: bool,
}

/// A reading position in a log.
#[derive(Debug)]
pub struct Tail {
    dir: PathBuf,
    current: Option<SegmentFile>,
    /// File offset of the first byte not yet taken.
    offset: u64,
    /// Bytes read from `offset` on.
    buf: Vec<u8>,
    last_seq: Option<u64>,
    /// Inode of the current segment, to notice it being replaced.
    ino: Option<u64>,
    /// Records below this sequence number are not handed out.
    start_seq: u64,
}

impl Tail {
    /// Starts at the beginning of the log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            current: None,
            offset: SEGMENT_HEADER_LEN as u64,
            buf: Vec::new(),
            last_seq: None,
            ino: None,
            start_seq: 0,
        }
    }

    /// Starts at record `seq`: reading begins with the segment that holds it (the one with
    /// the greatest first sequence number not above it, by file name), so the segments
    /// before it are not read at all, and the records before it in that segment are skipped.
    pub fn from_seq(dir: impl Into<PathBuf>, seq: u64) -> Self {
        Self {
            start_seq: seq,
            ..Self::new(dir)
        }
    }

    /// Reads what is new in the current segment, moving to the next one when it is done.
    pub fn poll(&mut self) -> Result<Batch, AuditError> {
        let mut batch = Batch::default();
        // Listed before reading: a segment is complete before its successor is created, so a
        // successor seen here means the current file's remaining bytes are all there is.
        let segments = segment::list(&self.dir)?;
        let current = match &self.current {
            Some(c) => c.clone(),
            None => match segments
                .iter()
                .rev()
                .find(|s| s.first_seq <= self.start_seq)
                .or(segments.first())
            {
                Some(first) => {
                    self.current = Some(first.clone());
                    first.clone()
                }
                None => return Ok(batch),
            },
        };
        let next = segments
            .iter()
            .find(|s| s.first_seq > current.first_seq)
            .cloned();
        self.read_more(&current, &mut batch)?;
        if self.current.is_none() {
            batch.more = true;
            return Ok(batch);
        }
        let stuck = self.parse(&current, &mut batch);
        if let Some(next) = next {
            if let Some(reason) = stuck {
                batch.warnings.push(format!(
                    "{}: skipped {} bytes at offset {} at the end of the segment ({reason})",
                    current.name(),
                    self.buf.len(),
                    self.offset
                ));
            }
            self.current = Some(next);
            self.ino = None;
            self.offset = SEGMENT_HEADER_LEN as u64;
            self.buf.clear();
            batch.more = true;
        }
        Ok(batch)
    }

    /// Reads from the first byte not yet taken to the end of the file. An incomplete frame is
    /// read again on every poll rather than kept: the writer may have cut it meanwhile and
    /// written a different record in its place.
    fn read_more(&mut self, current: &SegmentFile, batch: &mut Batch) -> Result<(), AuditError> {
        self.buf.clear();
        let meta = match fs::metadata(&current.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_at(&current.path)(e)),
        };
        let ino = meta.as_ref().map(std::os::unix::fs::MetadataExt::ino);
        if self.ino.is_some() && ino != self.ino {
            // agentguard never deletes or replaces segments, but `log init --force` moves
            // them into an archive and a new log starts: start over with it.
            batch.warnings.push(format!(
                "{}: replaced (the log was re-initialised?); starting over",
                current.name()
            ));
            *self = Self::from_seq(self.dir.clone(), self.start_seq);
            return Ok(());
        }
        self.ino = ino;
        let len = match meta {
            Some(m) => m.len(),
            None => return Ok(()),
        };
        if len < self.offset {
            // Cut below what was already taken (not something agentguard does): start the
            // segment over and let the sequence numbers drop what was already shown.
            batch.warnings.push(format!(
                "{}: the file got shorter; re-reading it",
                current.name()
            ));
            self.offset = SEGMENT_HEADER_LEN as u64;
        }
        if len > self.offset {
            self.buf = segment::read_from(&current.path, self.offset)?;
        }
        Ok(())
    }

    /// Takes whole frames off `buf`; returns why it stopped if bytes are left.
    fn parse(&mut self, current: &SegmentFile, batch: &mut Batch) -> Option<FrameError> {
        let mut at = 0;
        let stuck = loop {
            let Some(rest) = self.buf.get(at..).filter(|r| !r.is_empty()) else {
                break None;
            };
            match encode::parse_frame(rest) {
                Ok(frame) if frame.self_consistent() => {
                    match frame.record() {
                        Ok(record) if record.seq < self.start_seq => {
                            self.last_seq = Some(record.seq);
                        }
                        Ok(record) if self.last_seq.is_none_or(|s| record.seq > s) => {
                            self.last_seq = Some(record.seq);
                            batch.records.push(record);
                        }
                        Ok(_) => {}
                        Err(e) => batch.warnings.push(format!(
                            "{} @ {}: skipped an unreadable record ({e})",
                            current.name(),
                            self.offset + at as u64
                        )),
                    }
                    at += frame.len;
                }
                Ok(_) => match encode::find_frame(rest, 1) {
                    Some(skip) => {
                        batch.warnings.push(format!(
                            "{} @ {}: skipped a record that does not match its hash",
                            current.name(),
                            self.offset + at as u64
                        ));
                        at += skip;
                    }
                    None => break Some(FrameError::BadMagic),
                },
                Err(FrameError::Short { .. }) => {
                    break Some(FrameError::Short {
                        have: rest.len(),
                        need: 0,
                    });
                }
                Err(e) => match encode::find_frame(rest, 1) {
                    Some(skip) => {
                        batch.warnings.push(format!(
                            "{} @ {}: skipped {skip} damaged bytes ({e})",
                            current.name(),
                            self.offset + at as u64
                        ));
                        at += skip;
                    }
                    None => break Some(e),
                },
            }
        };
        self.buf.drain(..at);
        self.offset += at as u64;
        stuck
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::OpenOptions, io::Write};

    use super::*;
    use crate::audit::{
        AuditLog, LogOptions,
        record::{Body, Record},
        testutil::{action, options},
    };

    fn drain(tail: &mut Tail) -> (Vec<u64>, Vec<String>) {
        let mut seqs = Vec::new();
        let mut warnings = Vec::new();
        loop {
            let batch = tail.poll().expect("poll");
            seqs.extend(batch.records.iter().map(|r| r.seq));
            warnings.extend(batch.warnings);
            if !batch.more {
                return (seqs, warnings);
            }
        }
    }

    fn small(dir: &std::path::Path) -> LogOptions {
        LogOptions {
            segment_bytes: 2048,
            ..options(dir)
        }
    }

    #[test]
    fn follows_appends_across_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tail = Tail::new(dir.path());
        assert_eq!(drain(&mut tail).0, Vec::<u64>::new(), "no log yet");
        let mut log = AuditLog::open(small(dir.path())).expect("open");
        for i in 0..10 {
            log.append(i, i, action(i)).expect("append");
        }
        log.flush().expect("flush");
        assert_eq!(drain(&mut tail).0, (0..10).collect::<Vec<_>>());
        assert_eq!(drain(&mut tail).0, Vec::<u64>::new());
        for i in 10..100 {
            log.append(i, i, action(i)).expect("append");
        }
        log.flush().expect("flush");
        let (seqs, warnings) = drain(&mut tail);
        assert_eq!(seqs, (10..100).collect::<Vec<_>>());
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn starts_at_a_sequence_number_without_reading_earlier_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(small(dir.path())).expect("open");
        for i in 0..100 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        let segments = segment::list(dir.path()).expect("list");
        assert!(segments.len() > 2, "{segments:?}");
        let from = segments[2].first_seq + 1;
        // A damaged earlier segment is never read: no warning about it.
        fs::write(&segments[0].path, b"damaged").expect("write");
        let (seqs, warnings) = drain(&mut Tail::from_seq(dir.path(), from));
        assert_eq!(seqs, (from..100).collect::<Vec<_>>());
        assert!(warnings.is_empty(), "{warnings:?}");
        let (seqs, _) = drain(&mut Tail::from_seq(dir.path(), 1000));
        assert!(seqs.is_empty(), "past the end: {seqs:?}");
    }

    #[test]
    fn waits_for_an_incomplete_frame_and_takes_the_recovered_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        for i in 0..5 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        let seg = dir.path().join(segment::file_name(0));
        let mut frame = Vec::new();
        encode::append_frame(
            &mut frame,
            &[0; 32],
            &Record {
                seq: 5,
                wall_ns: 0,
                mono_ns: 0,
                body: action(5),
            },
        )
        .expect("encode");
        let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
        f.write_all(&frame[..frame.len() / 2]).expect("write");
        drop(f);
        let mut tail = Tail::new(dir.path());
        let (seqs, warnings) = drain(&mut tail);
        assert_eq!(seqs, (0..5).collect::<Vec<_>>());
        assert!(
            warnings.is_empty(),
            "still being written, as far as a reader knows"
        );
        drop(AuditLog::open(options(dir.path())).expect("recover"));
        let batch = tail.poll().expect("poll");
        assert!(batch.warnings.is_empty(), "{:?}", batch.warnings);
        assert_eq!(batch.records.len(), 1);
        assert!(matches!(batch.records[0].body, Body::Recovered { .. }));
    }

    #[test]
    fn starts_over_when_the_log_is_reinitialised() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::audit::init(dir.path(), false).expect("init");
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        for i in 0..3 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        let mut tail = Tail::new(dir.path());
        assert_eq!(drain(&mut tail).0, [0, 1, 2]);
        crate::audit::init(dir.path(), true).expect("re-init");
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        log.append(0, 0, action(0)).expect("append");
        drop(log);
        let (seqs, warnings) = drain(&mut tail);
        assert_eq!(seqs, [0]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn skips_a_torn_tail_once_a_newer_segment_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(small(dir.path())).expect("open");
        for i in 0..30 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        let segments = segment::list(dir.path()).expect("list");
        assert!(segments.len() > 1);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&segments[0].path)
            .expect("open");
        f.write_all(b"\xA5AGR\x10\x00").expect("write");
        drop(f);
        let (seqs, warnings) = drain(&mut Tail::new(dir.path()));
        assert_eq!(seqs, (0..30).collect::<Vec<_>>());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
