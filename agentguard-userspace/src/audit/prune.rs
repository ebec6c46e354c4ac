//! Retention: removing whole old segments while the rest stays verifiable.
//!
//! A prune first appends a [`Body::Pruned`] record naming the first record kept and the hash
//! it chains from (the head of what is removed), makes it durable, and only then removes the
//! files, oldest first. `verify` starts the chain at the first kept record and accepts the
//! missing start only when a `Pruned` record in the kept log names exactly that record and
//! hash; without one the missing start is `deleted`, as before. The newest segment (the one
//! being written) is never removed.

use std::{fmt, time::SystemTime};

use super::{
    AuditLog,
    error::{AuditError, io_at},
    files,
    reader::{Scanned, Scanner},
    record::{Actor, Body},
    segment::{self, SegmentFile},
};

/// What to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Segments whose last write is at most this many days old (and every newer one).
    Days(u64),
    /// The newest segments whose sizes add up to at most this many bytes (the segment being
    /// written is always kept, whatever its size).
    Bytes(u64),
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Days(d) => write!(f, "keep-days {d}"),
            Self::Bytes(b) => write!(f, "keep-bytes {b}"),
        }
    }
}

/// What a prune removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pruned {
    /// Segment files removed.
    pub segments: u64,
    /// Their bytes.
    pub bytes: u64,
    /// First sequence number kept.
    pub first_kept_seq: u64,
    /// Sequence number of the `Pruned` record.
    pub record_seq: u64,
}

struct Candidate {
    file: SegmentFile,
    bytes: u64,
    modified: SystemTime,
}

/// The oldest segments `keep` lets go, oldest first: always a prefix of the log, never the
/// newest segment.
fn select(
    segments: &[SegmentFile],
    keep: Retention,
    now: SystemTime,
) -> Result<Vec<Candidate>, AuditError> {
    let mut all = Vec::with_capacity(segments.len());
    for file in segments {
        let meta = std::fs::metadata(&file.path).map_err(io_at(&file.path))?;
        let modified = meta.modified().map_err(io_at(&file.path))?;
        all.push(Candidate {
            file: file.clone(),
            bytes: meta.len(),
            modified,
        });
    }
    let removable = all.len().saturating_sub(1);
    let count = match keep {
        Retention::Days(days) => {
            let age = std::time::Duration::from_secs(days.saturating_mul(86_400));
            let cutoff = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
            // Up to the first segment written to since the cutoff: a prefix, whatever the
            // mtimes of later files say.
            all[..removable]
                .iter()
                .take_while(|c| c.modified < cutoff)
                .count()
        }
        Retention::Bytes(max) => {
            let mut total: u64 = all.iter().map(|c| c.bytes).sum();
            let mut n = 0;
            while n < removable && total > max {
                total -= all[n].bytes;
                n += 1;
            }
            n
        }
    };
    all.truncate(count);
    Ok(all)
}

impl AuditLog {
    /// Removes the old segments `keep` lets go; `None` when there is nothing to remove.
    pub fn prune(&mut self, keep: Retention, by: Actor) -> Result<Option<Pruned>, AuditError> {
        // Everything appended so far on disk first, so the newest segment is the one written.
        self.flush()?;
        let dir = self.dir().to_path_buf();
        let segments = segment::list(&dir)?;
        let gone = select(&segments, keep, SystemTime::now())?;
        let Some(first_kept) = segments.get(gone.len()).filter(|_| !gone.is_empty()) else {
            return Ok(None);
        };
        // The first kept record must be intact: its `prev` is what the kept log chains from.
        let mut scanner = Scanner::new(vec![first_kept.clone()], 0);
        let prev = loop {
            match scanner.next_item()? {
                Some(Scanned::Frame(f)) => {
                    if f.self_consistent && f.seq() == Some(first_kept.first_seq) {
                        break f.prev;
                    }
                    return Err(refuse(&first_kept.path, "its first record is damaged"));
                }
                Some(Scanned::Segment { .. }) => {}
                Some(Scanned::Damaged { .. }) | None => {
                    return Err(refuse(
                        &first_kept.path,
                        "it does not start with an intact record",
                    ));
                }
            }
        };
        let bytes = gone.iter().map(|c| c.bytes).sum();
        let (wall, mono) = super::now();
        let record_seq = self.append(
            wall,
            mono,
            Body::Pruned {
                first_kept_seq: first_kept.first_seq,
                pruned_head: hex::encode(prev),
                removed_from_seq: gone.first().map_or(0, |c| c.file.first_seq),
                segments: gone.len() as u64,
                bytes,
                rule: keep.to_string(),
                by,
            },
        )?;
        // Durable before any file goes: a crash in between leaves a record and all the files.
        self.flush()?;
        for c in &gone {
            std::fs::remove_file(&c.file.path).map_err(io_at(&c.file.path))?;
        }
        files::sync_dir(&dir)?;
        Ok(Some(Pruned {
            segments: gone.len() as u64,
            bytes,
            first_kept_seq: first_kept.first_seq,
            record_seq,
        }))
    }
}

fn refuse(path: &std::path::Path, reason: &'static str) -> AuditError {
    AuditError::PruneRefused {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{
        self, LogOptions,
        testutil::{Surgery, action, options},
        verify,
        verify::Class,
    };

    fn by() -> Actor {
        Actor::Daemon {
            reason: "retention".into(),
        }
    }

    /// A sealed log of 300 actions in small segments.
    fn log(dir: &std::path::Path) -> (AuditLog, audit::SealSeed) {
        let seed = audit::init(dir, false).expect("init");
        let mut log = AuditLog::open(LogOptions {
            segment_bytes: 4096,
            seal_every: 10,
            ..options(dir)
        })
        .expect("open");
        for i in 0..300 {
            log.append(1_700_000_000_000_000_000 + i, i, action(i))
                .expect("append");
        }
        log.flush().expect("flush");
        (log, seed)
    }

    #[test]
    fn keep_bytes_removes_old_segments_and_the_rest_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, seed) = log(dir.path());
        let before = segment::list(dir.path()).expect("list");
        assert!(before.len() > 4, "{} segments", before.len());
        let p = log
            .prune(Retention::Bytes(3 * 4096), by())
            .expect("prune")
            .expect("something pruned");
        let after = segment::list(dir.path()).expect("list");
        assert_eq!(after.len() as u64 + p.segments, before.len() as u64);
        assert_eq!(after[0].first_seq, p.first_kept_seq);
        // The log goes on after the prune.
        log.append(1, 1, action(1)).expect("append");
        let head = log.head();
        drop(log);
        let report = verify(dir.path(), Some(&seed), Some(head.anchor())).expect("verify");
        assert!(report.intact(), "{report}");
        let text = report.to_string();
        assert!(text.contains("pruned"), "{text}");
        assert_eq!(
            report.pruned.map(|p| p.first_kept_seq),
            Some(p.first_kept_seq)
        );
        // Nothing more to remove under the same rule right away... or only what the new record
        // pushed over; either way the log stays verifiable.
    }

    #[test]
    fn keep_days_keeps_recent_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = log(dir.path());
        assert_eq!(log.prune(Retention::Days(1), by()).expect("prune"), None);
        let segments = segment::list(dir.path()).expect("list");
        // Age the two oldest segments by two days.
        let old = SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
        for s in &segments[..2] {
            let f = std::fs::File::options()
                .write(true)
                .open(&s.path)
                .expect("open");
            f.set_modified(old).expect("set mtime");
        }
        let p = log
            .prune(Retention::Days(1), by())
            .expect("prune")
            .expect("pruned");
        assert_eq!(p.segments, 2);
        assert_eq!(p.first_kept_seq, segments[2].first_seq);
        drop(log);
        assert!(verify(dir.path(), None, None).expect("verify").intact());
    }

    #[test]
    fn removing_segments_without_a_prune_record_is_still_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = log(dir.path());
        drop(log);
        let segments = segment::list(dir.path()).expect("list");
        std::fs::remove_file(&segments[0].path).expect("rm");
        let report = verify(dir.path(), None, None).expect("verify");
        let p = report.problem.expect("a problem");
        assert_eq!(p.class, Class::Deleted, "{p}");
    }

    #[test]
    fn a_prune_record_does_not_excuse_removing_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = log(dir.path());
        log.prune(Retention::Bytes(4 * 4096), by())
            .expect("prune")
            .expect("pruned");
        drop(log);
        // Someone removes one more segment than the record names.
        let segments = segment::list(dir.path()).expect("list");
        std::fs::remove_file(&segments[0].path).expect("rm");
        let report = verify(dir.path(), None, None).expect("verify");
        assert_eq!(report.problem.expect("a problem").class, Class::Deleted);
    }

    #[test]
    fn a_damaged_first_kept_record_refuses_the_prune() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = log(dir.path());
        let segments = segment::list(dir.path()).expect("list");
        // Keeping the last two segments would start the log at the second newest.
        let first_kept = &segments[segments.len() - 2];
        let keep = Retention::Bytes(
            segments[segments.len() - 2..]
                .iter()
                .map(|s| std::fs::metadata(&s.path).expect("stat").len())
                .sum(),
        );
        let mut s = Surgery::open(dir.path(), first_kept.first_seq);
        let mid = s.frames[0].len() / 2;
        s.frames[0][mid] ^= 0x20;
        s.save();
        let err = log.prune(keep, by()).expect_err("refused");
        assert!(matches!(err, AuditError::PruneRefused { .. }), "{err}");
        assert_eq!(
            segment::list(dir.path()).expect("list").len(),
            segments.len()
        );
    }

    #[test]
    fn kept_segments_are_still_tamper_evident() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, seed) = log(dir.path());
        let p = log
            .prune(Retention::Bytes(4 * 4096), by())
            .expect("prune")
            .expect("pruned");
        drop(log);
        let mut s = Surgery::open(dir.path(), p.first_kept_seq);
        let mid = s.frames[3].len() / 2;
        s.frames[3][mid] ^= 0x20;
        s.save();
        let report = verify(dir.path(), Some(&seed), None).expect("verify");
        assert_eq!(report.problem.expect("a problem").class, Class::Modified);
    }
}
