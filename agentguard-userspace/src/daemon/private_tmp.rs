//! Private temp directories, like systemd's `PrivateTmp`: each top-level instance gets
//! `<root>/<agent>/<n>` (mode 0700, owned by the user the instance runs as), exported as `TMPDIR`
//! by `agentguard run` and removed when the instance ends. Its sub-agents share it.
//!
//! `<root>` and `<root>/<agent>` are root-owned 0711: nobody else can create, rename or replace
//! anything in them, so the daemon never follows a path an agent planted. The file rules grant
//! the instance directory exactly on Landlock (rules are per process) and `<root>/<agent>` on BPF
//! LSM (rules are per agent); there the 0700 mode and a uid per instance keep instances apart.

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::{cgroup::Instance, control::proto::Identity};

/// Where private temp directories live unless `agentguard daemon --tmp-dir` says otherwise.
pub const DEFAULT_ROOT: &str = "/tmp/agentguard";

/// The private temp directories under one root.
#[derive(Clone, Debug)]
pub struct PrivateTmp {
    root: PathBuf,
}

impl PrivateTmp {
    /// Directories under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of an instance that has its own identity: `buyer/3` -> `<root>/buyer/3`,
    /// an administrator-started sub-agent `buyer/3/search/1` -> `<root>/buyer/3-search-1`.
    pub fn own_dir(&self, inst: &Instance) -> PathBuf {
        match inst.name.split_once('/') {
            Some((agent, rest)) => self.root.join(agent).join(rest.replace('/', "-")),
            None => self.root.join(&inst.name),
        }
    }

    /// The directory of the top-level instance `inst` belongs to (what a sub-agent started from
    /// inside it shares).
    pub fn top_dir(&self, inst: &Instance) -> PathBuf {
        let mut parts = inst.name.split('/');
        match (parts.next(), parts.next()) {
            (Some(agent), Some(n)) => self.root.join(agent).join(n),
            _ => self.root.join(&inst.name),
        }
    }

    /// Creates (or re-creates, empty) the directory of `inst`, owned by `identity`. Returns
    /// `None` for identities that own no directory (a sub-agent inheriting its parent's user).
    pub fn create(&self, inst: &Instance, identity: &Identity) -> io::Result<Option<PathBuf>> {
        let (uid, gid) = match identity {
            Identity::Inherited => return Ok(None),
            Identity::Root => (0, 0),
            Identity::Dynamic { uid } => (*uid, *uid),
            Identity::User(u) => (u.uid, u.gid),
        };
        let agent = inst.name.split('/').next().unwrap_or(&inst.name);
        secure_dir(&self.root)?;
        secure_dir(&self.root.join(agent))?;
        let dir = self.own_dir(inst);
        // A directory left by an instance of the same name whose end the daemon missed (it was
        // not running): nothing in it belongs to the new instance.
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        // The umask may have taken bits from 0700; set exactly that.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(Some(dir))
    }

    /// Removes the directory `inst` owns, if any. Renamed first (cheap, under the caller's lock),
    /// so a new instance of the same name starts clean even while the old tree is deleted.
    pub fn remove(&self, inst: &Instance) {
        let dir = self.own_dir(inst);
        let gone = dir.with_file_name(format!(
            ".gone-{}-{}",
            dir.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            inst.id
        ));
        match fs::rename(&dir, &gone) {
            Ok(()) => {
                if let Err(e) = fs::remove_dir_all(&gone) {
                    tracing::warn!(dir = %gone.display(), error = %e, "cannot remove private temp directory");
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove private temp directory");
            }
        }
    }

    /// Removes every directory under the root that no live instance owns (instances that ended
    /// while no daemon ran).
    pub fn sweep(&self, live: &[Instance]) {
        let keep: Vec<PathBuf> = live.iter().map(|i| self.own_dir(i)).collect();
        let Ok(agents) = fs::read_dir(&self.root) else {
            return;
        };
        for agent in agents.filter_map(Result::ok) {
            let Ok(dirs) = fs::read_dir(agent.path()) else {
                continue;
            };
            for d in dirs.filter_map(Result::ok) {
                let path = d.path();
                if !keep.contains(&path)
                    && let Err(e) = fs::remove_dir_all(&path)
                {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot remove stale private temp directory");
                }
            }
        }
    }
}

/// Makes `dir` a root-owned 0711 directory, refusing one someone else owns or a symlink (the
/// default root is in the world-writable /tmp, where another user could have made it first).
fn secure_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != 0 {
        return Err(io::Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory owned by root (uid {}); remove it so the daemon can create private temp directories there",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.permissions().mode() & 0o7777 != 0o711 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(name: &str) -> Instance {
        Instance {
            agent: String::new(),
            name: name.to_owned(),
            path: PathBuf::new(),
            id: 7,
            parent: None,
            root_instance: 7,
        }
    }

    #[test]
    fn directories_follow_instance_names() {
        let t = PrivateTmp::new("/tmp/ag");
        assert_eq!(t.own_dir(&inst("buyer/3")), Path::new("/tmp/ag/buyer/3"));
        assert_eq!(
            t.own_dir(&inst("buyer/3/search/1")),
            Path::new("/tmp/ag/buyer/3-search-1")
        );
        assert_eq!(
            t.top_dir(&inst("buyer/3/search/1")),
            Path::new("/tmp/ag/buyer/3")
        );
    }
}
