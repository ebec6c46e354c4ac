//! Scratch files for agents. Agents run as dynamic uids, so everything a test sets up for them
//! has every permission bit open: what is refused is then refused by the policy, never by file
//! ownership.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

/// chmod a+rwx on `path` (not following a symlink's target: links are left alone).
pub fn open_to_agents(path: impl AsRef<Path>) {
    let path = path.as_ref();
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if meta.file_type().is_symlink() {
        return;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// chmod a+rwx on `path` and everything under it (symlinks left alone).
pub fn open_tree_to_agents(path: impl AsRef<Path>) {
    let path = path.as_ref();
    open_to_agents(path);
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        for entry in fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            open_tree_to_agents(entry.unwrap_or_else(|e| panic!("{e}")).path());
        }
    }
}

/// A temporary directory tree agents can reach, removed when dropped.
pub struct ScratchTree {
    _dir: tempfile::TempDir,
    base: PathBuf,
}

impl ScratchTree {
    /// An empty tree in a new temporary directory named after `prefix`.
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let base = dir.path().to_owned();
        open_to_agents(&base);
        Self { _dir: dir, base }
    }

    /// The tree's root.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `rel` under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    /// `rel` under the root, as a string (for policies and command lines).
    pub fn p(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    /// Creates the directories `rels` (and their parents).
    pub fn dirs(&self, rels: &[&str]) -> &Self {
        for rel in rels {
            fs::create_dir_all(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            self.open(rel);
        }
        self
    }

    /// Writes `contents` to `rel`.
    pub fn file(&self, rel: &str, contents: &str) -> &Self {
        fs::write(self.path(rel), contents).unwrap_or_else(|e| panic!("{rel}: {e}"));
        self.open(rel)
    }

    /// Copies `from` to `rel`.
    pub fn copy(&self, from: &str, rel: &str) -> &Self {
        fs::copy(from, self.path(rel)).unwrap_or_else(|e| panic!("{from} -> {rel}: {e}"));
        self.open(rel)
    }

    /// A symlink at `rel` pointing to `target`.
    pub fn symlink(&self, target: impl AsRef<Path>, rel: &str) -> &Self {
        std::os::unix::fs::symlink(target, self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        self
    }

    /// Opens `rel` and every directory between the root and it.
    fn open(&self, rel: &str) -> &Self {
        let mut path = self.base.clone();
        for component in Path::new(rel).components() {
            path.push(component);
            open_to_agents(&path);
        }
        self
    }
}
