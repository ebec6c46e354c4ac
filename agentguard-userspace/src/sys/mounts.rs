//! Finding and creating mounts from `/proc/self/mountinfo` (never hard-coded paths).

use std::path::{Path, PathBuf};

use procfs::process::{MountInfo, Process};

/// Errors about mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// /proc/self/mountinfo could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] procfs::ProcError),
    /// No cgroup2 filesystem is mounted.
    #[error(
        "no cgroup2 filesystem is mounted (agentguard needs cgroup v2; mount it with `mount -t cgroup2 none /sys/fs/cgroup`)"
    )]
    NoCgroup2,
    /// Mounting failed.
    #[error("cannot mount {fstype} at {path}: {source}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// Creating the mount point failed.
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        /// Mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Every mount of this process's mount namespace.
pub fn all() -> Result<Vec<MountInfo>, MountError> {
    Process::myself()
        .and_then(|p| p.mountinfo())
        .map(|m| m.0)
        .map_err(MountError::MountInfo)
}

/// The first mount of a filesystem type.
pub fn find(fstype: &str) -> Result<Option<PathBuf>, MountError> {
    Ok(all()?
        .into_iter()
        .find(|m| m.fs_type == fstype)
        .map(|m| m.mount_point))
}

/// The cgroup v2 mount point (e.g. `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2() -> Result<PathBuf, MountError> {
    find("cgroup2")?.ok_or(MountError::NoCgroup2)
}

/// Whether `path` is itself a mount point of `fstype`.
pub fn is_mounted(path: &Path, fstype: &str) -> Result<bool, MountError> {
    Ok(all()?
        .iter()
        .any(|m| m.fs_type == fstype && m.mount_point == path))
}

/// Mounts a pseudo filesystem (bpffs, tracefs, securityfs) at `path` unless one is there already.
/// Returns whether it mounted.
pub fn ensure(fstype: &'static str, path: &Path) -> Result<bool, MountError> {
    if is_mounted(path, fstype)? {
        return Ok(false);
    }
    std::fs::create_dir_all(path).map_err(|source| MountError::MountPoint {
        path: path.to_owned(),
        source,
    })?;
    nix::mount::mount(
        Some(fstype),
        path,
        Some(fstype),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| MountError::Mount {
        fstype,
        path: path.to_owned(),
        source,
    })?;
    Ok(true)
}

/// The kernel's `s_dev` of the superblock behind mount `mnt_id`, from its `major:minor`.
pub fn superblock_dev(mnt_id: u64) -> Result<Option<(u32, u32)>, MountError> {
    Ok(all()?
        .into_iter()
        .find(|m| u64::try_from(m.mnt_id).ok() == Some(mnt_id))
        .and_then(|m| parse_majmin(&m.majmin)))
}

fn parse_majmin(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_minor() {
        assert_eq!(parse_majmin("0:35"), Some((0, 35)));
        assert_eq!(parse_majmin("259:1"), Some((259, 1)));
        assert_eq!(parse_majmin("x"), None);
    }

    #[test]
    fn finds_proc_mount() -> Result<(), MountError> {
        // /proc is mounted wherever this test can run at all.
        assert_eq!(find("proc")?, Some(PathBuf::from("/proc")));
        Ok(())
    }
}
