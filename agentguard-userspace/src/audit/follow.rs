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
    /// File offset of `buf[0]`.
    offset: u64,
    /// Bytes read but not yet whole frames.
    buf: Vec<u8>,
    last_seq: Option<u64>,
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
            None => match segments.first() {
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
            self.offset = SEGMENT_HEADER_LEN as u64;
            self.buf.clear();
            batch.more = true;
        }
        Ok(batch)
    }

    fn read_more(&mut self, current: &SegmentFile, batch: &mut Batch) -> Result<(), AuditError> {
        let len = match fs::metadata(&current.path) {
            Ok(m) => m.len(),
            // Segments are never deleted by agentguard; tolerate an operator's cleanup.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_at(&current.path)(e)),
        };
        let have = self.offset + self.buf.len() as u64;
        if len < have {
            // The writer cut a torn tail we had partly read; re-read the segment and let the
            // sequence numbers drop what was already shown.
            batch.warnings.push(format!(
                "{}: the file got shorter; re-reading it",
                current.name()
            ));
            self.offset = SEGMENT_HEADER_LEN as u64;
            self.buf.clear();
        }
        let have = self.offset + self.buf.len() as u64;
        if len > have {
            let more = segment::read_from(&current.path, have)?;
            self.buf.extend_from_slice(&more);
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
