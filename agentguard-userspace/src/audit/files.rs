//! The log directory's fixed files (`log.header`, `seal.key`, `lock`) and writing them so a
//! crash leaves either the old or the new content, never a mix.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

use super::{
    error::{AuditError, io_at},
    header::LogHeader,
};

/// The log header: magic, version, genesis.
pub const LOG_HEADER: &str = "log.header";
/// The current seal key and its epoch.
pub const SEAL_KEY: &str = "seal.key";
/// Held (flock) by the one writer.
pub const LOCK: &str = "lock";

/// Permissions of the seal key: nobody but the daemon's user may read it.
pub const KEY_MODE: u32 = 0o600;
/// Permissions of headers and segments: readable by the owner's group (auditors, shippers).
pub const LOG_MODE: u32 = 0o640;

/// Replaces `dir/name` with `bytes` atomically and durably: temp file, fsync, rename, fsync dir.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), AuditError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .mode(mode)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_at(&tmp))?;
    file.write_all(bytes).map_err(io_at(&tmp))?;
    file.sync_all().map_err(io_at(&tmp))?;
    drop(file);
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(io_at(&path))?;
    sync_dir(dir)
}

/// Makes renames and creations in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// Takes the writer lock of the log in `dir`; held until the returned file is dropped.
pub fn lock(dir: &Path) -> Result<File, AuditError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_at(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(AuditError::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(io_at(path)(e)),
    }
}

/// Reads `log.header`; `Ok(None)` when there is none.
pub fn read_log_header(dir: &Path) -> Result<Option<LogHeader>, AuditError> {
    let path = dir.join(LOG_HEADER);
    match fs::read(&path) {
        Ok(bytes) => LogHeader::decode(&bytes)
            .map(Some)
            .map_err(|error| AuditError::BadHeader { path, error }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Writes a new `log.header` with a fresh random genesis value.
pub fn create_log_header(dir: &Path, created_wall_ns: u64) -> Result<LogHeader, AuditError> {
    let mut genesis = [0u8; 32];
    getrandom::fill(&mut genesis)?;
    let header = LogHeader {
        created_wall_ns,
        genesis,
    };
    write_atomic(dir, LOG_HEADER, &header.encode(), LOG_MODE)?;
    Ok(header)
}

/// Creates `dir` (and parents) if missing; new directories are closed to other users.
pub fn ensure_dir(dir: &Path) -> Result<(), AuditError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(io_at(dir))
}
