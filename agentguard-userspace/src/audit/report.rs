//! What `verify` found: the report, and the classes of problems it names.

use std::fmt;

use super::{chain::Head, clock, reader::Location, segment::SegmentFile};

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
    /// Seals were checked with the key (all of them, if the log is intact).
    Verified {
        /// Seals that verified before the first problem.
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

/// A log whose start was removed by retention, and the record that says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedStart {
    /// The first record kept (where checking started).
    pub first_kept_seq: u64,
    /// The `Pruned` record naming this start.
    pub record_seq: u64,
    /// Its wall time.
    pub wall_ns: u64,
    /// The retention rule it applied.
    pub rule: String,
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
    /// When the log starts after seq 0 because retention removed its start: the record that
    /// names the removed head the kept log chains from.
    pub pruned: Option<PrunedStart>,
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
        if let Some(p) = &self.pruned {
            writeln!(
                f,
                "pruned start: records before seq {} were removed by retention ({}; pruned record \
                 at seq {}, {}); the chain was checked from the removed head it names",
                p.first_kept_seq,
                p.rule,
                p.record_seq,
                clock::rfc3339(p.wall_ns, 3)
            )?;
        }
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

/// A problem at segment `at.0`, offset `at.1`.
pub(super) fn problem_at(
    segments: &[SegmentFile],
    class: Class,
    seq: Option<u64>,
    at: Option<(usize, u64)>,
    detail: String,
) -> Problem {
    Problem {
        class,
        seq,
        location: at.map(|(index, offset)| Location::in_segments(segments, index, offset)),
        detail,
    }
}
