//! What can go wrong reading or writing the log (as opposed to what `verify` finds wrong in it,
//! which is a [`super::verify::Problem`], not an error).

use std::{io, path::PathBuf};

use super::{encode::EncodeError, header::HeaderError};

/// An error of the log library.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file or directory of the log could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Another process (a running daemon) holds the log open for writing.
    #[error("{}: the log is in use by another writer", .0.display())]
    Locked(PathBuf),
    /// The directory holds no log (no `log.header`).
    #[error("{}: no log here (no log.header)", .0.display())]
    NoLog(PathBuf),
    /// Segment files exist but `log.header` does not: the chain's root is gone, and starting a
    /// new one would hide that.
    #[error("{}: segment files without a log.header; move them away to start a new log", .0.display())]
    HeaderMissing(PathBuf),
    /// A header (`log.header` or a segment's) is damaged or of an unknown format.
    #[error("{}: {error}", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: HeaderError,
    },
    /// The seal key file is damaged or of an unknown format.
    #[error("{}: bad seal key file: {error}", path.display())]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: HeaderError,
    },
    /// `init` found an existing log and was not told to replace it.
    #[error("{}: a log already exists here (use --force to archive it and start a new one)", .0.display())]
    AlreadyInitialised(PathBuf),
    /// A record could not be framed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The system's random source failed (needed for the genesis value and the seed).
    #[error("reading random bytes: {0}")]
    Random(#[from] getrandom::Error),
    /// Writes keep failing and the records waiting for them reached the memory bound; the
    /// record was not accepted.
    #[error("{} bytes of records are waiting for a failing disk; record dropped", .0)]
    Backlog(usize),
    /// A flush found the next segment being started outside the append lock: the records
    /// wait for it (the next `tick` writes them).
    #[error("{}: a new log segment is being started; records wait for it", .0.display())]
    Rotating(PathBuf),
    /// Retention would keep a segment that does not start with an intact record: the kept
    /// log could not be checked from it, so nothing is removed.
    #[error("{}: not pruning before this segment: {reason}", path.display())]
    PruneRefused {
        /// The segment that would be the first kept.
        path: PathBuf,
        /// What is wrong with its start.
        reason: &'static str,
    },
}

/// `map_err` helper attaching the path an I/O error happened on.
pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.into();
    move |source| AuditError::Io { path, source }
}
