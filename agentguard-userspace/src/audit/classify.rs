//! Naming a break in the chain: which change (deletion, reordering, insertion, edit) explains
//! a record that is intact but out of place.
//!
//! Each frame carries three pieces of evidence: its own hash (was its content changed?), its
//! `prev` (does it follow the record before it?) and its sequence number (is it where it
//! belongs?). When a frame does not follow, the [`WINDOW`] records before and after it are
//! searched for the missing or duplicated ones. A record moved further than that is reported
//! as deleted where it is missing.

use std::collections::VecDeque;

use super::{
    chain::Hash,
    error::AuditError,
    reader::{Location, Scanned, ScannedFrame, Scanner},
    record::Record,
    report::{self, Class, Problem},
    segment::SegmentFile,
};

/// Records searched before and after a break to classify it.
pub const WINDOW: usize = 4096;

/// A frame's evidence, kept for classification.
#[derive(Clone, Debug)]
pub(super) struct Meta {
    pub seq: u64,
    pub prev: Hash,
    pub hash: Hash,
    pub index: usize,
    pub offset: u64,
}

impl Meta {
    pub fn of(frame: &ScannedFrame, record: &Record) -> Self {
        Self {
            seq: record.seq,
            prev: frame.prev,
            hash: frame.hash,
            index: frame.index,
            offset: frame.offset,
        }
    }
}

/// What the verifier knows at a break.
pub(super) struct Evidence<'a> {
    /// The log's segments.
    pub segments: &'a [SegmentFile],
    /// The sequence number the next record should have.
    pub expected: u64,
    /// The hash the next record should chain from.
    pub prev: Hash,
    /// The last [`WINDOW`] records accepted.
    pub behind: &'a VecDeque<Meta>,
}

impl Evidence<'_> {
    fn location(&self, index: usize, offset: u64) -> Location {
        Location::in_segments(self.segments, index, offset)
    }

    fn problem(
        &self,
        class: Class,
        seq: Option<u64>,
        at: Option<(usize, u64)>,
        detail: String,
    ) -> Problem {
        report::problem_at(self.segments, class, seq, at, detail)
    }

    /// Names a frame that is intact but out of place (wrong seq, or not chained to the record
    /// before it).
    pub(super) fn classify(&self, a: &Meta) -> Result<Problem, AuditError> {
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

    /// Up to [`WINDOW`] intact records after `a`.
    fn ahead(&self, a: &Meta) -> Result<Vec<Meta>, AuditError> {
        let mut scanner = Scanner::at(self.segments.to_vec(), a.index, a.offset)?;
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
}
