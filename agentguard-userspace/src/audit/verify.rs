//! Checking a log: every hash, sequence number, header and (with the seed) seal; naming the
//! first thing wrong and what kind of change explains it.
//!
//! Classification uses the evidence each frame carries: its own hash (content changed?), its
//! `prev` (does it follow the record before it?) and its sequence number (is it where it
//! belongs?). When a frame does not follow, a window of records after it (and before it) is
//! searched for the missing or duplicated ones, to tell a deletion from a reordering from an
//! insertion. The window is [`WINDOW`] records: a record moved further than that is reported
//! as deleted where it is missing.

use std::{collections::VecDeque, fmt, path::Path};

use super::{
    chain::{Anchor, Hash, Head},
    clock,
    error::AuditError,
    files,
    header::SegmentHeader,
    reader::{Location, Scanned, ScannedFrame, Scanner},
    record::{Body, Record},
    seal::{SealKey, SealSeed},
    segment::{self, SegmentFile},
    writer::DEFAULT_SEAL_EVERY,
};

/// Records searched before and after a break to classify it.
pub const WINDOW: usize = 4096;
/// Records beyond `seal_every` a writer may leave unsealed (a seal by count comes after the
/// record that reaches the count; `Recovered` records at start-up add a few).
const LONG_STRETCH_SLACK: u64 = 16;

/// What kind of change explains the first problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A record's content differs from what was written (its hash, or the next record's link,
    /// no longer matches).
    Modified,
    /// A record was added that the writer did not write.
    Inserted,
    /// Records are missing from the middle (or start) of the log.
    Deleted,
    /// Records are all there, in the wrong order.
    Reordered,
    /// The log ends before a head anchored outside the host.
    Truncated,
    /// A seal does not verify: the chain was rewritten by someone without the key (or the
    /// key is wrong), or seals are missing.
    BadSeal,
    /// The last segment ends inside a record (a crash; the daemon cuts it on its next start).
    TornTail,
    /// `log.header` or a segment header is damaged, missing or inconsistent.
    BadHeader,
}

impl Class {
    /// Its name in output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Modified => "modified",
            Self::Inserted => "inserted",
            Self::Deleted => "deleted",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
            Self::BadSeal => "bad seal",
            Self::TornTail => "torn tail",
            Self::BadHeader => "bad header",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The first thing wrong with a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What kind of change explains it.
    pub class: Class,
    /// Sequence number of the first bad record (as written in it, or where it should be).
    pub seq: Option<u64>,
    /// Where it is.
    pub location: Option<Location>,
    /// What exactly is wrong.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.class)?;
        if let Some(seq) = self.seq {
            write!(f, " at seq {seq}")?;
        }
        if let Some(loc) = &self.location {
            write!(f, " ({loc})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// How far seals could be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seals {
    /// The log has no seals (never `log init`ed, or younger than one sealing interval).
    Unsealed,
    /// Seals are present but no key was given, so they were not checked.
    NotChecked {
        /// Seals found.
        count: u64,
    },
    /// Every seal verified with the key.
    Verified {
        /// Seals verified.
        count: u64,
    },
}

/// The newest seal seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastSeal {
    /// Its epoch.
    pub epoch: u64,
    /// Its record's sequence number.
    pub seq: u64,
    /// Its record's wall time.
    pub wall_ns: u64,
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Records checked (up to the first problem).
    pub records: u64,
    /// Segment files.
    pub segments: usize,
    /// The head reached (the last record checked).
    pub head: Head,
    /// How far seals were checked.
    pub seals: Seals,
    /// The newest seal.
    pub last_seal: Option<LastSeal>,
    /// Records after the newest seal (protected by the chain alone).
    pub unsealed_tail: u64,
    /// Whether an anchor was given and found in the log.
    pub anchor_found: Option<bool>,
    /// Things worth knowing that are not failures.
    pub notes: Vec<String>,
    /// The first thing wrong; `None` for an intact log.
    pub problem: Option<Problem>,
}

impl Report {
    /// Whether the log is intact: every check passed.
    pub fn intact(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => writeln!(f, "log intact")?,
            Some(p) => writeln!(f, "LOG NOT INTACT: {p}")?,
        }
        writeln!(
            f,
            "records: {} in {} segment(s); head {}",
            self.records, self.segments, self.head
        )?;
        match self.seals {
            Seals::Unsealed => writeln!(
                f,
                "seals: none (unsealed log: only the hash chain was checked)"
            )?,
            Seals::NotChecked { count } => writeln!(
                f,
                "seals: {count} present, NOT checked (no --key): the hash chain alone does not \
                 stop someone on the host from rewriting and re-chaining the log"
            )?,
            Seals::Verified { count } => writeln!(f, "seals: {count} verified")?,
        }
        if let Some(s) = self.last_seal {
            writeln!(
                f,
                "last seal: epoch {} at seq {} ({}); {} record(s) after it are covered by the chain only",
                s.epoch,
                s.seq,
                clock::rfc3339(s.wall_ns, 3),
                self.unsealed_tail
            )?;
        }
        match self.anchor_found {
            Some(true) => writeln!(f, "anchored head: found")?,
            Some(false) => writeln!(f, "anchored head: NOT found")?,
            None => writeln!(
                f,
                "anchored head: none given (a cut at the end is undetectable without one)"
            )?,
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// A frame's evidence, kept for classification.
#[derive(Clone, Debug)]
struct Meta {
    seq: u64,
    prev: Hash,
    hash: Hash,
    index: usize,
    offset: u64,
}

impl Meta {
    fn of(frame: &ScannedFrame, record: &Record) -> Self {
        Self {
            seq: record.seq,
            prev: frame.prev,
            hash: frame.hash,
            index: frame.index,
            offset: frame.offset,
        }
    }
}

struct Verifier<'a> {
    segments: Vec<SegmentFile>,
    anchor: Option<Anchor>,
    key: Option<SealKey>,
    report: Report,
    expected: u64,
    prev: Hash,
    behind: VecDeque<Meta>,
    next_epoch: u64,
    seal_count: u64,
    lost: Option<u64>,
    header: Option<SegmentHeader>,
    first_in_segment: bool,
    seed: Option<&'a SealSeed>,
    long_stretch_noted: bool,
}

/// Verifies the log in `dir`: with `seed`, seals too; with `anchor`, that the log still
/// reaches a head recorded earlier.
pub fn verify(
    dir: &Path,
    seed: Option<&SealSeed>,
    anchor: Option<Anchor>,
) -> Result<Report, AuditError> {
    let segments = segment::list(dir)?;
    let mut report = Report {
        records: 0,
        segments: segments.len(),
        head: Head {
            seq: None,
            hash: [0; 32],
        },
        seals: Seals::Unsealed,
        last_seal: None,
        unsealed_tail: 0,
        anchor_found: anchor.map(|_| false),
        notes: Vec::new(),
        problem: None,
    };
    let header = match files::read_log_header(dir) {
        Ok(Some(header)) => header,
        Ok(None) if segments.is_empty() => return Err(AuditError::NoLog(dir.to_path_buf())),
        Ok(None) => {
            report.problem = Some(Problem {
                class: Class::BadHeader,
                seq: None,
                location: None,
                detail: "log.header is missing: the genesis value the chain starts from is gone"
                    .to_owned(),
            });
            return Ok(report);
        }
        Err(AuditError::BadHeader { error, .. }) => {
            report.problem = Some(Problem {
                class: Class::BadHeader,
                seq: None,
                location: None,
                detail: format!("log.header: {error}"),
            });
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.head.hash = header.genesis;
    let mut v = Verifier {
        segments,
        anchor,
        key: seed.map(SealSeed::first_key),
        report,
        expected: 0,
        prev: header.genesis,
        behind: VecDeque::with_capacity(WINDOW),
        next_epoch: 0,
        seal_count: 0,
        lost: None,
        header: None,
        first_in_segment: false,
        seed,
        long_stretch_noted: false,
    };
    let problem = v.run()?;
    Ok(v.finish(problem))
}

impl Verifier<'_> {
    fn location(&self, index: usize, offset: u64) -> Location {
        Location {
            segment: self
                .segments
                .get(index)
                .map(SegmentFile::name)
                .unwrap_or_default(),
            offset,
        }
    }

    fn problem(
        &self,
        class: Class,
        seq: Option<u64>,
        at: Option<(usize, u64)>,
        detail: String,
    ) -> Problem {
        Problem {
            class,
            seq,
            location: at.map(|(i, o)| self.location(i, o)),
            detail,
        }
    }

    fn run(&mut self) -> Result<Option<Problem>, AuditError> {
        let mut scanner = Scanner::new(self.segments.clone(), 0);
        let last_index = self.segments.len().saturating_sub(1);
        while let Some(item) = scanner.next_item()? {
            let problem = match item {
                Scanned::Segment {
                    index,
                    file,
                    header,
                    ..
                } => self.segment_start(index, &file, header),
                Scanned::Damaged {
                    index,
                    offset,
                    len,
                    reason,
                    at_end,
                } => Some(if at_end && index == last_index {
                    self.problem(
                        Class::TornTail,
                        Some(self.expected),
                        Some((index, offset)),
                        format!(
                            "the last {len} bytes are not a whole record ({reason}): a write was \
                             cut short, e.g. by a crash; the daemon cuts them when it next starts"
                        ),
                    )
                } else {
                    self.problem(
                        Class::Modified,
                        Some(self.expected),
                        Some((index, offset)),
                        format!(
                            "{len} bytes here are not a record ({reason}), and they are not a \
                             torn tail: intact records or segments follow"
                        ),
                    )
                }),
                Scanned::Frame(frame) => self.frame(&frame)?,
            };
            if problem.is_some() {
                return Ok(problem);
            }
        }
        Ok(None)
    }

    fn segment_start(
        &mut self,
        index: usize,
        file: &SegmentFile,
        header: Result<SegmentHeader, super::header::HeaderError>,
    ) -> Option<Problem> {
        let at = Some((index, 0));
        let header = match header {
            Ok(h) => h,
            Err(e) => {
                return Some(self.problem(
                    Class::BadHeader,
                    None,
                    at,
                    format!("segment header: {e}"),
                ));
            }
        };
        if header.first_seq != file.first_seq {
            return Some(self.problem(
                Class::BadHeader,
                Some(file.first_seq),
                at,
                format!(
                    "the file is named for seq {} but its header says {}",
                    file.first_seq, header.first_seq
                ),
            ));
        }
        if header.lost_total != self.lost && self.expected == header.first_seq {
            return Some(self.problem(
                Class::BadHeader,
                Some(file.first_seq),
                at,
                format!(
                    "the header carries lost total {:?} but the records before it say {:?}",
                    header.lost_total, self.lost
                ),
            ));
        }
        self.header = Some(header);
        self.first_in_segment = true;
        None
    }

    fn frame(&mut self, frame: &ScannedFrame) -> Result<Option<Problem>, AuditError> {
        let at = Some((frame.index, frame.offset));
        let broken = match (&frame.record, frame.self_consistent) {
            (Ok(_), true) => None,
            (_, false) => Some("the record's content does not match its hash".to_owned()),
            (Err(e), true) => Some(format!(
                "hash matches but the bytes are not a record this agentguard knows ({e})"
            )),
        };
        if let Some(what) = broken {
            if frame.index + 1 == self.segments.len()
                && !self.intact_after(frame.index, frame.end)?
            {
                // What recovery would cut: nothing intact follows.
                return Ok(Some(self.problem(
                    Class::TornTail,
                    Some(self.expected),
                    at,
                    format!(
                        "the log ends in bytes that are not an intact record ({what}): a write \
                         cut short by a crash (or a damaged last record); the daemon cuts them \
                         on its next start and logs a Recovered record"
                    ),
                )));
            }
            return Ok(Some(self.problem(
                Class::Modified,
                frame.seq().or(Some(self.expected)),
                at,
                what,
            )));
        }
        let Ok(record) = &frame.record else {
            return Ok(None);
        };
        let meta = Meta::of(frame, record);
        if record.seq != self.expected || frame.prev != self.prev {
            return self.classify(&meta).map(Some);
        }
        if self.first_in_segment {
            self.first_in_segment = false;
            if let Some(h) = self.header
                && h.first_seq != record.seq
            {
                return Ok(Some(self.problem(
                    Class::BadHeader,
                    Some(record.seq),
                    Some((frame.index, 0)),
                    format!(
                        "the segment says it starts at seq {} but starts at {}",
                        h.first_seq, record.seq
                    ),
                )));
            }
        }
        if let Body::Seal { epoch, mac } = &record.body
            && let Some(p) = self.seal(&meta, *epoch, mac)
        {
            return Ok(Some(p));
        }
        if let Body::Lost { total, .. } = record.body {
            self.lost = Some(total);
        }
        if let Some(anchor) = self.anchor
            && let Some(p) = self.check_anchor(&meta, anchor)
        {
            return Ok(Some(p));
        }
        if let Body::Seal { epoch, .. } = record.body {
            self.note_long_stretch(record.seq);
            self.report.last_seal = Some(LastSeal {
                epoch,
                seq: record.seq,
                wall_ns: record.wall_ns,
            });
            self.report.unsealed_tail = 0;
        } else {
            self.report.unsealed_tail += 1;
        }
        self.report.records += 1;
        self.report.head = Head {
            seq: Some(record.seq),
            hash: frame.hash,
        };
        self.prev = frame.hash;
        self.expected += 1;
        if self.behind.len() == WINDOW {
            self.behind.pop_front();
        }
        self.behind.push_back(meta);
        Ok(None)
    }

    fn seal(&mut self, meta: &Meta, epoch: u64, mac: &str) -> Option<Problem> {
        let at = Some((meta.index, meta.offset));
        let seq = Some(meta.seq);
        if epoch != self.next_epoch {
            let detail = if epoch > self.next_epoch {
                let missing = if epoch - self.next_epoch == 1 {
                    format!("seal epoch {} is missing", self.next_epoch)
                } else {
                    format!(
                        "seal epochs {}..={} are missing",
                        self.next_epoch,
                        epoch - 1
                    )
                };
                format!(
                    "seal epoch {epoch} comes where epoch {} belongs: {missing} (records were \
                     cut and the chain continued with a later key)",
                    self.next_epoch
                )
            } else {
                format!("seal epoch {epoch} repeats (expected {})", self.next_epoch)
            };
            return Some(self.problem(Class::BadSeal, seq, at, detail));
        }
        self.seal_count += 1;
        self.next_epoch = epoch + 1;
        let key = self.key.as_mut()?;
        key.advance_to(epoch);
        let ok = super::chain::parse_hash(mac).is_some_and(|m| m == key.mac(&meta.prev));
        if ok {
            return None;
        }
        let since = match self.report.last_seal {
            Some(s) => format!("after the seal at seq {}", s.seq),
            None => "from the start of the log".to_owned(),
        };
        Some(self.problem(
            Class::BadSeal,
            seq,
            at,
            format!(
                "seal epoch {epoch} does not verify: the records {since} up to this seal were \
                 changed and re-chained by someone without the key (or --key is not this \
                 log's seed)"
            ),
        ))
    }

    fn check_anchor(&mut self, meta: &Meta, anchor: Anchor) -> Option<Problem> {
        match anchor.seq {
            Some(seq) if seq == meta.seq => {
                if meta.hash == anchor.hash {
                    self.report.anchor_found = Some(true);
                    None
                } else {
                    Some(self.problem(
                        Class::Modified,
                        Some(seq),
                        Some((meta.index, meta.offset)),
                        "this record is not the anchored head: the log up to it was rewritten and \
                         re-chained after the anchor was taken"
                            .to_owned(),
                    ))
                }
            }
            None if meta.hash == anchor.hash => {
                self.report.anchor_found = Some(true);
                None
            }
            _ => None,
        }
    }

    /// Names a frame that is intact but out of place (wrong seq, or not chained to the record
    /// before it).
    fn classify(&self, a: &Meta) -> Result<Problem, AuditError> {
        let at = Some((a.index, a.offset));
        let expected = self.expected;
        if a.seq == expected {
            if expected == 0 {
                return Ok(self.problem(
                    Class::BadHeader,
                    Some(0),
                    at,
                    "the first record does not chain from the genesis value in log.header (the \
                     header or the record was replaced)"
                        .to_owned(),
                ));
            }
            let before = self.behind.back().map(|m| (m.index, m.offset));
            return Ok(self.problem(
                Class::Modified,
                Some(expected - 1),
                before.or(at),
                format!(
                    "record {} was changed and its hash recomputed: record {expected} still \
                     chains from the original",
                    expected - 1
                ),
            ));
        }
        let ahead = self.ahead(a)?;
        if a.seq > expected {
            if let Some(dup) = ahead.iter().find(|m| m.seq == a.seq) {
                return Ok(self.problem(
                    Class::Inserted,
                    Some(a.seq),
                    at,
                    format!(
                        "seq {} appears here (where {expected} belongs) and again at {}",
                        a.seq,
                        self.location(dup.index, dup.offset)
                    ),
                ));
            }
            // Moved: the record this one chains from comes later.
            if let Some(m) = ahead
                .iter()
                .find(|m| m.seq + 1 == a.seq && m.hash == a.prev)
            {
                return Ok(self.problem(
                    Class::Reordered,
                    Some(a.seq),
                    at,
                    format!(
                        "record {} comes where {expected} belongs; record {} comes later, at {}",
                        a.seq,
                        m.seq,
                        self.location(m.index, m.offset)
                    ),
                ));
            }
            // The chain carries on after it as if it were not there: it does not belong.
            if ahead
                .iter()
                .any(|m| m.seq == expected && m.prev == self.prev)
            {
                return Ok(self.problem(
                    Class::Inserted,
                    Some(a.seq),
                    at,
                    format!(
                        "record {} was inserted: the record after it continues the chain from \
                         record {}",
                        a.seq,
                        expected.wrapping_sub(1)
                    ),
                ));
            }
            if a.prev == self.prev {
                return Ok(self.problem(
                    Class::Modified,
                    Some(a.seq),
                    at,
                    format!(
                        "record claims seq {} but chains from record {}: its seq was changed",
                        a.seq,
                        expected.wrapping_sub(1)
                    ),
                ));
            }
            let n = a.seq - expected;
            return Ok(self.problem(
                Class::Deleted,
                Some(expected),
                at,
                if n == 1 {
                    format!(
                        "record {expected} is missing (record {} follows {})",
                        a.seq,
                        expected.wrapping_sub(1)
                    )
                } else {
                    format!("records {expected}..={} ({n}) are missing", a.seq - 1)
                },
            ));
        }
        // Going back: a.seq was already seen.
        let earlier = self.behind.iter().find(|m| m.seq == a.seq);
        Ok(match earlier {
            Some(r) if r.hash == a.hash => self.problem(
                Class::Inserted,
                Some(a.seq),
                at,
                format!(
                    "a copy of record {} (at {}) was inserted here",
                    a.seq,
                    self.location(r.index, r.offset)
                ),
            ),
            Some(r) if r.prev == a.prev && ahead.first().is_none_or(|n| n.prev == a.hash) => self
                .problem(
                    Class::Inserted,
                    Some(r.seq),
                    Some((r.index, r.offset)),
                    format!(
                        "{} inserted: the record at {} has the same seq and is the one the \
                         chain continues from",
                        if r.seq + 1 == expected {
                            format!("record {} was", r.seq)
                        } else {
                            format!("records {}..={} were", r.seq, expected - 1)
                        },
                        self.location(a.index, a.offset)
                    ),
                ),
            _ => self.problem(
                Class::Inserted,
                Some(a.seq),
                at,
                format!(
                    "seq goes back from {} to {}: this record does not belong here",
                    expected - 1,
                    a.seq
                ),
            ),
        })
    }

    /// Notes (once) a stretch without seals longer than a writer with default settings
    /// leaves: the trace of seals stripped from a re-chained log. Only a note, because the
    /// daemon may run with a larger `seal_every`.
    fn note_long_stretch(&mut self, at_seq: u64) {
        let limit = DEFAULT_SEAL_EVERY + LONG_STRETCH_SLACK;
        if self.key.is_none() || self.long_stretch_noted || self.report.unsealed_tail <= limit {
            return;
        }
        self.long_stretch_noted = true;
        let since = match self.report.last_seal {
            Some(s) => format!("after the seal at seq {}", s.seq),
            None => "from the start".to_owned(),
        };
        self.report.notes.push(format!(
            "{} records {since} up to seq {at_seq} have no seal, more than a daemon with the \
             default seal_every ({DEFAULT_SEAL_EVERY}) writes: unless it ran with a larger \
             setting, seals were removed",
            self.report.unsealed_tail
        ));
    }

    /// Whether an intact frame follows `offset` in segment `index`.
    fn intact_after(&self, index: usize, offset: u64) -> Result<bool, AuditError> {
        let one = self
            .segments
            .get(index..=index)
            .unwrap_or_default()
            .to_vec();
        let mut scanner = Scanner::at(one, 0, offset)?;
        while let Some(item) = scanner.next_item()? {
            if let Scanned::Frame(f) = item
                && f.self_consistent
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Up to [`WINDOW`] intact records after `a`.
    fn ahead(&self, a: &Meta) -> Result<Vec<Meta>, AuditError> {
        let mut scanner = Scanner::at(self.segments.clone(), a.index, a.offset)?;
        let mut out = Vec::new();
        let mut skipped_self = false;
        while out.len() < WINDOW
            && let Some(item) = scanner.next_item()?
        {
            if let Scanned::Frame(f) = item
                && f.self_consistent
                && let Ok(r) = &f.record
            {
                if !skipped_self {
                    skipped_self = true;
                    continue;
                }
                out.push(Meta::of(&f, r));
            }
        }
        Ok(out)
    }

    fn finish(mut self, problem: Option<Problem>) -> Report {
        if problem.is_none() {
            let next = self.expected;
            self.note_long_stretch(next);
        }
        let mut report = self.report;
        let problem = problem.or_else(|| match self.anchor {
            Some(anchor) if report.anchor_found != Some(true) => Some(match anchor.seq {
                Some(seq) => Problem {
                    class: Class::Truncated,
                    seq: Some(seq),
                    location: None,
                    detail: format!(
                        "the log ends at {}, before the anchored head at seq {seq}: records were cut",
                        report.head.seq.map_or_else(|| "its start".to_owned(), |s| format!("seq {s}"))
                    ),
                },
                None => Problem {
                    class: Class::Truncated,
                    seq: None,
                    location: None,
                    detail: "no record has the anchored hash: the log was cut before it (or \
                             rewritten; give SEQ:HASH to tell which)"
                        .to_owned(),
                },
            }),
            _ => None,
        });
        report.seals = match (self.seal_count, self.seed.is_some()) {
            (0, _) => Seals::Unsealed,
            (count, false) => Seals::NotChecked { count },
            (count, true) => Seals::Verified { count },
        };
        if problem.is_none() && self.seed.is_some() && self.seal_count == 0 && report.records > 0 {
            report.notes.push(
                "a key was given but the log has no seals: it is younger than one sealing \
                 interval, was never initialised for sealing, or its seals were stripped \
                 (compare with an anchored head)"
                    .to_owned(),
            );
        }
        if report.head.seq.is_none() && problem.is_none() {
            report.notes.push("the log is empty".to_owned());
        }
        report.problem = problem;
        report
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::audit::{
        self, AuditLog, LogOptions,
        record::Action,
        testutil::{Surgery, action, options},
    };

    /// A sealed log of 100 actions (a seal after every 10) in one segment.
    fn sealed_log() -> (tempfile::TempDir, SealSeed, Head) {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = audit::init(dir.path(), false).expect("init");
        let mut log = AuditLog::open(LogOptions {
            seal_every: 10,
            ..options(dir.path())
        })
        .expect("open");
        for i in 0..100 {
            log.append(1_700_000_000_000_000_000 + i, i, action(i))
                .expect("append");
        }
        let head = log.head();
        drop(log);
        let report = verify(dir.path(), Some(&seed), Some(head.anchor())).expect("verify");
        assert!(report.intact(), "{report}");
        assert_eq!(report.seals, Seals::Verified { count: 10 });
        (dir, seed, head)
    }

    fn problem(dir: &Path, seed: Option<&SealSeed>, head: Option<Head>) -> Problem {
        let report = verify(dir, seed, head.map(|h| h.anchor())).expect("verify");
        assert!(!report.intact());
        // Shown with --nocapture, to read the messages.
        println!("{report}");
        report.problem.expect("a problem")
    }

    /// The record with its verdict turned from denied to allowed or back.
    fn flip_verdict(mut record: Record) -> Record {
        if let Body::Action(Action { verdict, .. }) = &mut record.body {
            *verdict = if *verdict == 1 { 2 } else { 1 };
        }
        record
    }

    #[test]
    fn flipped_byte_is_modified() {
        let (dir, seed, head) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let i = s.action_at_or_after(50);
        let seq = s.record(i).seq;
        let mid = s.frames[i].len() / 2;
        s.frames[i][mid] ^= 0x20;
        s.save();
        let p = problem(dir.path(), Some(&seed), Some(head));
        assert_eq!((p.class, p.seq), (Class::Modified, Some(seq)), "{p}");
        assert_eq!(problem(dir.path(), None, None).class, Class::Modified);
    }

    #[test]
    fn record_edited_with_its_hash_fixed_is_modified() {
        let (dir, _, _) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let i = s.action_at_or_after(50);
        let record = flip_verdict(s.record(i));
        s.rewrite(i, &record);
        s.save();
        let p = problem(dir.path(), None, None);
        assert_eq!((p.class, p.seq), (Class::Modified, Some(record.seq)), "{p}");
    }

    #[test]
    fn deleted_record_is_deleted() {
        let (dir, seed, head) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let i = s.action_at_or_after(50);
        let seq = s.record(i).seq;
        s.frames.remove(i);
        s.save();
        let p = problem(dir.path(), Some(&seed), Some(head));
        assert_eq!((p.class, p.seq), (Class::Deleted, Some(seq)), "{p}");

        let mut s = Surgery::open(dir.path(), 0);
        s.frames.drain(i..i + 3);
        s.save();
        let p = problem(dir.path(), None, None);
        assert_eq!((p.class, p.seq), (Class::Deleted, Some(seq)), "{p}");
    }

    #[test]
    fn inserted_record_is_inserted() {
        let (dir, seed, head) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let i = s.action_at_or_after(50);
        // A forgery that fits after record i: the next seq, chained from i, its own hash right.
        let mut forged = flip_verdict(s.record(i));
        forged.seq += 1;
        let frame = Surgery::frame(&s.hash(i), &forged);
        s.frames.insert(i + 1, frame);
        s.save();
        let p = problem(dir.path(), Some(&seed), Some(head));
        assert_eq!((p.class, p.seq), (Class::Inserted, Some(forged.seq)), "{p}");
        let s = Surgery::open(dir.path(), 0);
        let want = Location {
            segment: segment::file_name(0),
            offset: (audit::header::SEGMENT_HEADER_LEN
                + s.frames[..=i].iter().map(Vec::len).sum::<usize>()) as u64,
        };
        assert_eq!(p.location, Some(want), "points at the forgery");
    }

    #[test]
    fn copied_record_is_inserted() {
        let (dir, _, _) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let i = s.action_at_or_after(50);
        let copy = s.frames[i].clone();
        s.frames.insert(i + 2, copy);
        s.save();
        let p = problem(dir.path(), None, None);
        assert_eq!(p.class, Class::Inserted, "{p}");
        assert!(p.detail.contains("copy"), "{p}");
    }

    #[test]
    fn garbage_record_is_inserted() {
        let (dir, _, _) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let i = s.action_at_or_after(50);
        let mut forged = s.record(i);
        forged.seq = 5000;
        s.frames.insert(i, Surgery::frame(&[7; 32], &forged));
        s.save();
        let p = problem(dir.path(), None, None);
        assert_eq!((p.class, p.seq), (Class::Inserted, Some(5000)), "{p}");
    }

    #[test]
    fn swapped_records_are_reordered() {
        let (dir, seed, head) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let i = s.action_at_or_after(50);
        let seq = s.record(i).seq;
        s.frames.swap(i, i + 1);
        s.save();
        let p = problem(dir.path(), Some(&seed), Some(head));
        assert_eq!((p.class, p.seq), (Class::Reordered, Some(seq + 1)), "{p}");

        // A record moved a few places later.
        let (dir, _, _) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let moved = s.frames.remove(i);
        s.frames.insert(i + 3, moved);
        s.save();
        assert_eq!(problem(dir.path(), None, None).class, Class::Reordered);
    }

    #[test]
    fn cut_before_a_known_head_is_truncated() {
        let (dir, seed, head) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let n = s.frames.len();
        s.frames.truncate(n - 3);
        s.save();
        let p = problem(dir.path(), Some(&seed), Some(head));
        assert_eq!((p.class, p.seq), (Class::Truncated, head.seq), "{p}");
        let bare = Anchor {
            seq: None,
            hash: head.hash,
        };
        let report = verify(dir.path(), Some(&seed), Some(bare)).expect("verify");
        assert_eq!(report.problem.expect("problem").class, Class::Truncated);
        // Without an anchor, a cut at a record boundary is invisible; the report says so.
        let report = verify(dir.path(), Some(&seed), None).expect("verify");
        assert!(report.intact());
        assert!(
            report.to_string().contains("undetectable without one"),
            "{report}"
        );
    }

    #[test]
    fn rechained_without_the_key_is_caught_by_the_seal() {
        let (dir, seed, head) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let i = s.action_at_or_after(45);
        let seq = s.record(i).seq;
        let record = flip_verdict(s.record(i));
        s.rewrite(i, &record);
        s.rechain(i);
        s.save();
        // The chain is perfect again: without the key only an anchor can tell.
        let report = verify(dir.path(), None, None).expect("verify");
        assert!(report.intact(), "{report}");
        assert_eq!(report.seals, Seals::NotChecked { count: 10 });
        let p = problem(dir.path(), None, Some(head));
        assert_eq!(p.class, Class::Modified, "{p}");
        // The first seal after the change does not verify.
        let p = problem(dir.path(), Some(&seed), None);
        assert_eq!(p.class, Class::BadSeal, "{p}");
        let seal_seq = p.seq.expect("seq");
        assert!(
            seal_seq > seq && seal_seq <= seq + 11,
            "seal {seal_seq} after {seq}"
        );
        assert!(p.detail.contains("re-chained"), "{p}");
    }

    #[test]
    fn stripped_seal_is_a_bad_seal() {
        let (dir, seed, _) = sealed_log();
        let mut s = Surgery::open(dir.path(), 0);
        let seal = (30..s.frames.len())
            .find(|&j| matches!(s.record(j).body, Body::Seal { .. }))
            .expect("a seal");
        s.frames.remove(seal);
        // Renumber and re-chain so only the seals can tell.
        for j in seal..s.frames.len() {
            let mut r = s.record(j);
            r.seq -= 1;
            s.frames[j] = Surgery::frame(&s.prev(j), &r);
        }
        s.rechain(seal);
        s.save();
        let p = problem(dir.path(), Some(&seed), None);
        assert_eq!(p.class, Class::BadSeal, "{p}");
    }

    #[test]
    fn a_long_unsealed_stretch_is_noted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = audit::init(dir.path(), false).expect("init");
        let mut log = AuditLog::open(LogOptions {
            seal_every: 0,
            ..options(dir.path())
        })
        .expect("open");
        let n = DEFAULT_SEAL_EVERY + LONG_STRETCH_SLACK + 1;
        for i in 0..n {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        let report = verify(dir.path(), Some(&seed), None).expect("verify");
        assert!(report.intact(), "{report}");
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("seals were removed")),
            "{report}"
        );
        let report = verify(dir.path(), None, None).expect("verify");
        assert!(
            report
                .notes
                .iter()
                .all(|n| !n.contains("seals were removed")),
            "{report}"
        );
    }

    #[test]
    fn replaced_genesis_is_a_bad_header() {
        let (dir, _, _) = sealed_log();
        let header = files::read_log_header(dir.path())
            .expect("read")
            .expect("header");
        let forged = audit::header::LogHeader {
            genesis: [1; 32],
            ..header
        };
        fs::write(dir.path().join(files::LOG_HEADER), forged.encode()).expect("write");
        let p = problem(dir.path(), None, None);
        assert_eq!((p.class, p.seq), (Class::BadHeader, Some(0)), "{p}");
        fs::write(dir.path().join(files::LOG_HEADER), b"junk").expect("write");
        assert_eq!(problem(dir.path(), None, None).class, Class::BadHeader);
    }

    #[test]
    fn deleted_segment_is_deleted_and_renamed_one_a_bad_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(LogOptions {
            segment_bytes: 2048,
            ..options(dir.path())
        })
        .expect("open");
        for i in 0..100 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);
        let segments = segment::list(dir.path()).expect("list");
        assert!(segments.len() > 3);
        let gone = &segments[1];
        fs::rename(&gone.path, dir.path().join("moved-away")).expect("move");
        let p = problem(dir.path(), None, None);
        assert_eq!(
            (p.class, p.seq),
            (Class::Deleted, Some(gone.first_seq)),
            "{p}"
        );
        fs::rename(dir.path().join("moved-away"), &gone.path).expect("move back");
        assert!(verify(dir.path(), None, None).expect("verify").intact());
        fs::rename(
            &gone.path,
            dir.path().join(segment::file_name(gone.first_seq + 1)),
        )
        .expect("rename");
        assert_eq!(problem(dir.path(), None, None).class, Class::BadHeader);
    }
}
