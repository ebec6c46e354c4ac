//! The tamper-evident, append-only event log.
//!
//! Records ([`record`]) are framed and hash-chained ([`encode`], [`chain`]) into size-rotated
//! segment files ([`segment`]) by the daemon's [`AuditLog`] ([`writer`]), which batches
//! writes, fsyncs on an interval, recovers a torn tail after a crash ([`recovery`]) and, once
//! `log init` has created a seed, appends forward-secure seals ([`seal`]). [`verify()`] checks
//! a log and names the first thing wrong; [`show`] renders records for people and SIEMs.
//! The byte layout and the trust model are in docs/log-format.md.

pub mod borrowed;
pub mod chain;
pub mod classify;
pub mod clock;
pub mod encode;
pub mod error;
pub mod files;
pub mod follow;
pub mod header;
pub mod names;
pub mod prune;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod report;
pub mod seal;
pub mod segment;
pub mod show;
/// Test helpers, including surgery on a written log (for tamper tests here and in the
/// integration tests, through the `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
pub mod testutil;
pub mod verify;
pub mod writer;

use std::{fs, path::Path};

pub use chain::{Anchor, Hash, Head};
pub use clock::now;
pub use error::AuditError;
pub use seal::SealSeed;
pub use verify::{Class, Problem, Report, verify};
pub use writer::{AuditLog, LogOptions};

use self::{error::io_at, header::SegmentHeader, segment::SegmentFile};

/// Creates a sealed log in `dir` and returns its seed, which is stored nowhere: the caller
/// shows it once, for the auditor to keep offline. Only the epoch-0 key derived from it stays
/// on the host.
///
/// Refuses if `dir` already holds a log, unless `force`: then the old log's files are moved
/// (not deleted) into `dir/archive-<unix-ns>/`. Fails while a daemon has the log open.
pub fn init(dir: &Path, force: bool) -> Result<SealSeed, AuditError> {
    files::ensure_dir(dir)?;
    let _lock = files::lock(dir)?;
    let segments = segment::list(dir)?;
    if recovery::has_log(dir, &segments) {
        if !force {
            return Err(AuditError::AlreadyInitialised(dir.to_path_buf()));
        }
        archive(dir, &segments)?;
    }
    let (wall, _) = now();
    files::create_log_header(dir, wall)?;
    let seed = SealSeed::generate()?;
    seed.first_key().store(dir)?;
    segment::create(
        dir,
        SegmentHeader {
            first_seq: 0,
            lost_total: None,
        },
    )?;
    Ok(seed)
}

fn archive(dir: &Path, segments: &[SegmentFile]) -> Result<(), AuditError> {
    let to = dir.join(format!("archive-{}", now().0));
    fs::create_dir(&to).map_err(io_at(&to))?;
    let fixed = [files::LOG_HEADER, files::SEAL_KEY].map(|name| dir.join(name));
    let paths = fixed
        .iter()
        .filter(|p| p.exists())
        .chain(segments.iter().map(|s| &s.path));
    for path in paths {
        if let Some(name) = path.file_name() {
            fs::rename(path, to.join(name)).map_err(io_at(path))?;
        }
    }
    files::sync_dir(&to)?;
    files::sync_dir(dir)
}

/// The head of the log in `dir` as written so far (a running daemon may hold up to one tick
/// of records in memory): the record to anchor outside the host.
pub fn head(dir: &Path) -> Result<Head, AuditError> {
    let header =
        files::read_log_header(dir)?.ok_or_else(|| AuditError::NoLog(dir.to_path_buf()))?;
    let segments = segment::list(dir)?;
    reader::head_at(&segments, segments.len().checked_sub(1), header.genesis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testutil::{action, options};

    #[test]
    fn init_refuses_an_existing_log_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = init(dir.path(), false).expect("init");
        assert_eq!(seed.to_hex().len(), 64);
        assert!(matches!(
            init(dir.path(), false),
            Err(AuditError::AlreadyInitialised(_))
        ));
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        log.append(0, 0, action(0)).expect("append");
        drop(log);
        let old_head = head(dir.path()).expect("head");
        assert_eq!(old_head.seq, Some(0));

        let new_seed = init(dir.path(), true).expect("re-init");
        assert_ne!(new_seed, seed);
        assert_eq!(head(dir.path()).expect("head").seq, None, "a fresh log");
        let archived: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("archive-"))
            .collect();
        assert_eq!(archived.len(), 1);
        let old = archived[0].path();
        assert_eq!(
            head(&old).expect("old head"),
            old_head,
            "the old log is kept whole"
        );
        assert!(
            verify(&old, Some(&seed), Some(old_head.anchor()))
                .expect("verify")
                .intact()
        );
    }

    #[test]
    fn an_unsealed_log_can_be_opened_without_init() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        assert!(!log.is_sealed());
        log.append(0, 0, action(0)).expect("append");
        drop(log);
        assert!(matches!(
            init(dir.path(), false),
            Err(AuditError::AlreadyInitialised(_))
        ));
        assert!(matches!(
            head(&dir.path().join("nope")),
            Err(AuditError::NoLog(_))
        ));
    }
}
