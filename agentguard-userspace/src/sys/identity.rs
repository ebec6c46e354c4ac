//! A file's identity as the kernel sees it: (superblock `s_dev`, inode number).
//!
//! stat(2)'s `st_dev` is not the superblock's `s_dev` on every filesystem (btrfs subvolumes and
//! overlayfs report other devices), and it uses the userspace encoding of device numbers. The
//! superblock's device is read from mountinfo through the file's mount id instead, and both are
//! kept so an exec is matched whichever one the kernel's `inode->i_sb->s_dev` turns out to be.

use std::path::Path;

use agentguard_common::rules::kernel_dev;
use rustix::fs::{AtFlags, CWD, StatxFlags, statx};

use super::mounts;

/// Identity of a file for exec matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// Kernel `s_dev` of the file's superblock (from mountinfo).
    pub dev: u64,
    /// Kernel-encoded `st_dev` from statx, when it differs from `dev`.
    pub stat_dev: Option<u64>,
    /// Inode number.
    pub ino: u64,
}

impl FileIdentity {
    /// Every (dev, ino) pair the kernel may report for this file.
    pub fn keys(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        std::iter::once((self.dev, self.ino)).chain(self.stat_dev.map(|d| (d, self.ino)))
    }
}

/// Why a file's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// statx failed.
    #[error("{0}")]
    Stat(#[from] std::io::Error),
    /// Not a regular file.
    #[error("not a regular file")]
    NotFile,
    /// Mount lookup failed.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
}

/// The identity of the file `path` names, following symlinks (a symlink to an allowed binary
/// execs the binary, so the binary's identity is what counts).
pub fn of_path(path: &Path) -> Result<FileIdentity, IdentityError> {
    let st = statx(
        CWD,
        path,
        AtFlags::STATX_SYNC_AS_STAT,
        StatxFlags::TYPE | StatxFlags::INO | StatxFlags::MNT_ID,
    )
    .map_err(std::io::Error::from)?;
    if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFREG {
        return Err(IdentityError::NotFile);
    }
    let stat_dev = kernel_dev(st.stx_dev_major, st.stx_dev_minor);
    let dev = match mounts::superblock_dev(st.stx_mnt_id)? {
        Some((major, minor)) => kernel_dev(major, minor),
        None => stat_dev,
    };
    Ok(FileIdentity {
        dev,
        stat_dev: (stat_dev != dev).then_some(stat_dev),
        ino: st.stx_ino,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_and_target_share_identity_copy_does_not() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a");
        std::fs::write(&a, b"x")?;
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link)?;
        let copy = dir.path().join("copy");
        std::fs::copy(&a, &copy)?;
        assert_eq!(of_path(&a)?, of_path(&link)?);
        assert_ne!(of_path(&a)?.ino, of_path(&copy)?.ino);
        assert!(matches!(of_path(dir.path()), Err(IdentityError::NotFile)));
        Ok(())
    }
}
