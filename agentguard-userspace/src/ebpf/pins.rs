//! The bpffs layout: `/sys/fs/bpf/agentguard/<state>/maps/NAME` and
//! `/sys/fs/bpf/agentguard/<state>/links/<build>/NAME`.
//!
//! `<state>` names what the maps mean and how they are laid out ([`super::object::EbpfObject::state_version`]):
//! every build that agrees on it shares the maps, so an upgrade keeps instances, budgets and
//! counters. `<build>` is a digest of one object: a daemon adopts the links of its own build
//! and replaces those of another.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::sys::mounts;

/// Where bpffs is mounted (and mounted by the daemon when absent).
pub const BPFFS: &str = "/sys/fs/bpf";
/// agentguard's directory in bpffs.
pub const ROOT: &str = "/sys/fs/bpf/agentguard";

/// The pin directories of one state version and one build.
#[derive(Clone, Debug)]
pub struct PinDir {
    base: PathBuf,
    build: String,
}

impl PinDir {
    /// The directories for `state` and `build` under `root`.
    pub fn new(root: &Path, state: &str, build: &str) -> Self {
        Self {
            base: root.join(state),
            build: build.to_owned(),
        }
    }

    /// The state version's base directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Pinned maps.
    pub fn maps(&self) -> PathBuf {
        self.base.join("maps")
    }

    /// This build's links.
    pub fn links(&self) -> PathBuf {
        self.base.join("links").join(&self.build)
    }

    /// A pinned link of this build.
    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    /// Link directories of other builds of the same state version, oldest name first.
    pub fn other_builds(&self) -> io::Result<Vec<PathBuf>> {
        other_versions(&self.base.join("links"), &self.build)
    }

    /// Creates the directories (bpffs must be mounted).
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.maps())?;
        std::fs::create_dir_all(self.links())
    }
}

/// Mounts bpffs at [`BPFFS`] when nothing is mounted there.
pub fn ensure_bpffs() -> Result<bool, mounts::MountError> {
    mounts::ensure("bpf", Path::new(BPFFS))
}

/// Where tracefs is mounted (and mounted by the daemon when absent, for syscall tracepoints).
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at [`TRACEFS`] when it is not there.
pub fn ensure_tracefs() -> Result<bool, mounts::MountError> {
    mounts::ensure("tracefs", Path::new(TRACEFS))
}

/// Removes a pin tree (unlinking pinned links detaches their programs once no fd holds them).
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Directories under `root` other than `keep`.
pub fn other_versions(root: &Path, keep: &str) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() != keep && entry.file_type()?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}
