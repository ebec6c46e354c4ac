//! Walking a log's frames in order, across segments, without trusting any of them.
//!
//! The [`Scanner`] reports what it finds and judges nothing: a frame whose hash does not match
//! is still reported (with `self_consistent: false`), bytes that are not a frame are reported
//! as [`Scanned::Damaged`] up to the next real frame. Recovery, `verify`, `head` and `show`
//! each decide what that means for them.

use std::fmt;

use super::{
    chain::{Hash, Head},
    encode::{self, FrameError},
    error::AuditError,
    header::{HeaderError, SEGMENT_HEADER_LEN, SegmentHeader},
    record::Record,
    segment::SegmentFile,
};

/// Where something is in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Segment file name.
    pub segment: String,
    /// Byte offset in it.
    pub offset: u64,
}

impl Location {
    /// Byte `offset` of segment `index` among `segments` (an unknown index names no segment).
    pub fn in_segments(segments: &[SegmentFile], index: usize, offset: u64) -> Self {
        Self {
            segment: segments
                .get(index)
                .map(SegmentFile::name)
                .unwrap_or_default(),
            offset,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} @ {}", self.segment, self.offset)
    }
}

/// A frame found by the [`Scanner`].
#[derive(Clone, Debug)]
pub struct ScannedFrame {
    /// Index of its segment in the scanner's list.
    pub index: usize,
    /// Where it starts in its segment.
    pub offset: u64,
    /// Offset just past it.
    pub end: u64,
    /// The hash it claims to chain from.
    pub prev: Hash,
    /// Its stored hash.
    pub hash: Hash,
    /// Whether `hash` is the hash of `prev` and its payload.
    pub self_consistent: bool,
    /// Its record, if the payload decodes.
    pub record: Result<Record, String>,
}

impl ScannedFrame {
    /// The record's sequence number, if it decodes.
    pub fn seq(&self) -> Option<u64> {
        self.record.as_ref().ok().map(|r| r.seq)
    }
}

/// One thing the [`Scanner`] found.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "items are made and consumed one at a time; boxing frames would allocate per record"
)]
pub enum Scanned {
    /// The start of a segment file.
    Segment {
        /// Index in the scanner's list.
        index: usize,
        /// The file.
        file: SegmentFile,
        /// Its header, or why it is not one.
        header: Result<SegmentHeader, HeaderError>,
        /// The file's size.
        len: u64,
    },
    /// A frame.
    Frame(ScannedFrame),
    /// Bytes that are not a frame.
    Damaged {
        /// Index of the segment.
        index: usize,
        /// Where they start in it.
        offset: u64,
        /// How many bytes, up to the next intact frame or the end of the segment.
        len: u64,
        /// Why they are not a frame.
        reason: FrameError,
        /// No intact frame follows them in this segment.
        at_end: bool,
    },
}

/// Reads frames in log order, one segment file in memory at a time.
pub struct Scanner {
    segments: Vec<SegmentFile>,
    next: usize,
    current: Option<Current>,
}

struct Current {
    index: usize,
    bytes: Vec<u8>,
    pos: usize,
}

impl Scanner {
    /// Scans `segments` from `start` (an index into them) on.
    pub fn new(segments: Vec<SegmentFile>, start: usize) -> Self {
        Self {
            segments,
            next: start,
            current: None,
        }
    }

    /// Scans from offset `offset` of segment `index` (no `Segment` item for it).
    pub fn at(segments: Vec<SegmentFile>, index: usize, offset: u64) -> Result<Self, AuditError> {
        let mut scanner = Self::new(segments, index + 1);
        if let Some(file) = scanner.segments.get(index) {
            let bytes = file.read()?;
            let pos = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            scanner.current = Some(Current { index, bytes, pos });
        }
        Ok(scanner)
    }

    /// The segments being scanned.
    pub fn segments(&self) -> &[SegmentFile] {
        &self.segments
    }

    /// Where byte `offset` of segment `index` is, for messages.
    pub fn location(&self, index: usize, offset: u64) -> Location {
        Location::in_segments(&self.segments, index, offset)
    }

    /// The next item, `Ok(None)` past the last segment.
    pub fn next_item(&mut self) -> Result<Option<Scanned>, AuditError> {
        if let Some(current) = &mut self.current {
            if let Some(item) = current.next_item() {
                return Ok(Some(item));
            }
            self.current = None;
        }
        let Some(file) = self.segments.get(self.next).cloned() else {
            return Ok(None);
        };
        let index = self.next;
        self.next += 1;
        let bytes = file.read()?;
        let header = SegmentHeader::decode(&bytes);
        let len = bytes.len() as u64;
        self.current = Some(Current {
            index,
            pos: SEGMENT_HEADER_LEN.min(bytes.len()),
            bytes,
        });
        Ok(Some(Scanned::Segment {
            index,
            file,
            header,
            len,
        }))
    }
}

impl Current {
    fn damaged(&mut self, reason: FrameError) -> Scanned {
        let at = self.pos;
        let next = encode::find_frame(&self.bytes, at + 1);
        let end = next.unwrap_or(self.bytes.len());
        self.pos = end;
        Scanned::Damaged {
            index: self.index,
            offset: at as u64,
            len: (end - at) as u64,
            reason,
            at_end: next.is_none(),
        }
    }

    fn next_item(&mut self) -> Option<Scanned> {
        let at = self.pos;
        let rest = self.bytes.get(at..).filter(|r| !r.is_empty())?;
        let frame = match encode::parse_frame(rest) {
            Ok(frame) => frame,
            Err(reason) => return Some(self.damaged(reason)),
        };
        let self_consistent = frame.self_consistent();
        if !self_consistent {
            // A damaged length can make a "frame" swallow intact ones; prefer those.
            if let Some(next) = encode::find_frame(&self.bytes, at + 1)
                && next < at + frame.len
            {
                return Some(self.damaged(FrameError::BadLength(frame.payload.len() as u32)));
            }
        }
        let scanned = ScannedFrame {
            index: self.index,
            offset: at as u64,
            end: (at + frame.len) as u64,
            prev: frame.prev,
            hash: frame.hash,
            self_consistent,
            record: frame.record().map_err(|e| e.to_string()),
        };
        self.pos = at + frame.len;
        Some(Scanned::Frame(scanned))
    }
}

/// The chain head at or before segment `index` (`None`: before the first segment): the hash of
/// the last intact record, or `genesis` when there is none.
pub fn head_at(
    segments: &[SegmentFile],
    index: Option<usize>,
    genesis: Hash,
) -> Result<Head, AuditError> {
    let last = match index {
        Some(index) => last_intact(segments, index)?,
        None => None,
    };
    Ok(match last {
        Some(frame) => Head {
            seq: frame.seq(),
            hash: frame.hash,
        },
        None => Head {
            seq: None,
            hash: genesis,
        },
    })
}

/// The last intact (self-consistent) frame at or before segment `index`, searching back
/// through earlier segments when a segment holds none.
pub fn last_intact(
    segments: &[SegmentFile],
    mut index: usize,
) -> Result<Option<ScannedFrame>, AuditError> {
    loop {
        let Some(one) = segments.get(index..=index) else {
            return Ok(None);
        };
        let mut scanner = Scanner::new(one.to_vec(), 0);
        let mut last = None;
        while let Some(item) = scanner.next_item()? {
            if let Scanned::Frame(frame) = item
                && frame.self_consistent
                && frame.record.is_ok()
            {
                last = Some(frame);
            }
        }
        if let Some(mut frame) = last {
            frame.index = index;
            return Ok(Some(frame));
        }
        if index == 0 {
            return Ok(None);
        }
        index -= 1;
    }
}
