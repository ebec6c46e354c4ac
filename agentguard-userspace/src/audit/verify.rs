//! Checking a log: every header, hash, `prev` link, sequence number and (with the seed) seal,
//! stopping at the first thing wrong; [`classify`](super::classify) names what kind of change
//! explains a break in the chain.

use std::{collections::VecDeque, path::Path};

pub use super::report::{Class, LastSeal, Problem, PrunedStart, Report, Seals};
use super::{
    chain::{Anchor, Hash, Head},
    classify::{Evidence, Meta, WINDOW},
    error::AuditError,
    files,
    header::SegmentHeader,
    reader::{Scanned, ScannedFrame, Scanner},
    record::Body,
    report,
    seal::{SealKey, SealSeed},
    segment::{self, SegmentFile},
    writer::DEFAULT_SEAL_EVERY,
};

/// Records beyond `seal_every` a writer may leave unsealed (a seal by count comes after the
/// record that reaches the count; `Recovered` records at start-up add a few).
const LONG_STRETCH_SLACK: u64 = 16;

struct Verifier<'a> {
    segments: Vec<SegmentFile>,
    anchor: Option<Anchor>,
    key: Option<SealKey>,
    report: Report,
    expected: u64,
    prev: Hash,
    behind: VecDeque<Meta>,
    next_epoch: u64,
    /// Seals that passed (verified, or well-formed when there is no key).
    seal_count: u64,
    /// Seals reached, passed or not.
    seals_seen: u64,
    lost: Option<u64>,
    header: Option<SegmentHeader>,
    first_in_segment: bool,
    seed: Option<&'a SealSeed>,
    long_stretch_noted: bool,
    /// The log starts after seq 0: the first record's seq and the hash it chains from, to be
    /// matched by a `Pruned` record.
    pruned_start: Option<(u64, Hash)>,
    /// Whether the next seal may have any epoch (the first seal after a pruned start).
    any_epoch: bool,
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
        pruned: None,
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
        seals_seen: 0,
        lost: None,
        header: None,
        first_in_segment: false,
        seed,
        long_stretch_noted: false,
        pruned_start: None,
        any_epoch: false,
    };
    let problem = v.run()?;
    Ok(v.finish(problem))
}

impl Verifier<'_> {
    fn problem(
        &self,
        class: Class,
        seq: Option<u64>,
        at: Option<(usize, u64)>,
        detail: String,
    ) -> Problem {
        report::problem_at(&self.segments, class, seq, at, detail)
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
        if self.report.records == 0
            && self.expected == 0
            && frame.index == 0
            && record.seq > 0
            && self.segments.first().map(|s| s.first_seq) == Some(record.seq)
        {
            // The log starts later than seq 0: check it from here, and require a `Pruned`
            // record naming exactly this start (see `finish`).
            self.pruned_start = Some((record.seq, frame.prev));
            self.expected = record.seq;
            self.prev = frame.prev;
            self.lost = self.header.and_then(|h| h.lost_total);
            self.any_epoch = true;
        }
        if record.seq != self.expected || frame.prev != self.prev {
            let evidence = Evidence {
                segments: &self.segments,
                expected: self.expected,
                prev: self.prev,
                behind: &self.behind,
            };
            return evidence.classify(&meta).map(Some);
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
        if let Body::Pruned {
            first_kept_seq,
            pruned_head,
            rule,
            ..
        } = &record.body
            && let Some((start, prev)) = self.pruned_start
            && *first_kept_seq == start
            && super::chain::parse_hash(pruned_head) == Some(prev)
        {
            self.report.pruned = Some(PrunedStart {
                first_kept_seq: start,
                record_seq: record.seq,
                wall_ns: record.wall_ns,
                rule: rule.clone(),
            });
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
        self.seals_seen += 1;
        if self.any_epoch {
            // Earlier seals were pruned with their records; epochs run on from this one.
            self.any_epoch = false;
            self.next_epoch = epoch;
        }
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
        self.next_epoch = epoch + 1;
        let Some(key) = self.key.as_mut() else {
            self.seal_count += 1;
            return None;
        };
        key.advance_to(epoch);
        let ok = super::chain::parse_hash(mac).is_some_and(|m| m == key.mac(&meta.prev));
        if ok {
            self.seal_count += 1;
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

    /// A log starting after seq 0 with no `Pruned` record naming that start: records were
    /// removed by something other than retention.
    fn unexplained_start(&self, report: &Report) -> Option<Problem> {
        let (start, _) = self.pruned_start?;
        if report.pruned.is_some() {
            return None;
        }
        Some(self.problem(
            Class::Deleted,
            Some(0),
            Some((0, 0)),
            format!(
                "records 0..{start} are missing: the log starts at seq {start} and no pruned \
                 record in it names that start and the hash it chains from (segments were \
                 removed other than by `agentguard log prune`)"
            ),
        ))
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

    fn finish(mut self, problem: Option<Problem>) -> Report {
        if problem.is_none() {
            let next = self.expected;
            self.note_long_stretch(next);
        }
        let problem = problem.or_else(|| self.unexplained_start(&self.report));
        let mut report = self.report;
        if let (Some(p), Some(anchor)) = (&report.pruned, self.anchor)
            && anchor.seq.is_some_and(|s| s < p.first_kept_seq)
            && report.anchor_found == Some(false)
        {
            report.anchor_found = None;
            report.notes.push(format!(
                "the anchored head (seq {}) was pruned by retention: it cannot be checked; anchor \
                 a newer head",
                anchor.seq.unwrap_or_default()
            ));
        }
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
        report.seals = match (self.seals_seen, self.seed.is_some()) {
            (0, _) => Seals::Unsealed,
            (_, false) => Seals::NotChecked {
                count: self.seal_count,
            },
            (_, true) => Seals::Verified {
                count: self.seal_count,
            },
        };
        if problem.is_none() && self.seed.is_some() && self.seals_seen == 0 && report.records > 0 {
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
        reader::Location,
        record::{Action, Record},
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
