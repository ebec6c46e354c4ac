//! Creating, finding and removing agent instance cgroups.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::ROOT_NAME;
use crate::sys::mounts::{self, MountError};

/// Errors about the cgroup tree.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup2 mount could not be found.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A cgroup file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// No such instance.
    #[error("no agent instance {0:?}")]
    NoInstance(String),
}

pub(crate) fn io_err(path: &Path) -> impl Fn(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One agent (or sub-agent) instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Full agent name: `buyer`, `buyer/search`.
    pub agent: String,
    /// Instance path relative to the agentguard root: `buyer/3`, `buyer/3/search/1`.
    pub name: String,
    /// The cgroup directory.
    pub path: PathBuf,
    /// cgroup id (the directory's inode number).
    pub id: u64,
    /// cgroup id of the enclosing instance, for a sub-agent instance.
    pub parent: Option<u64>,
    /// cgroup id of the top-level instance it belongs to (itself for a top-level one).
    pub root_instance: u64,
}

/// agentguard's cgroup subtree.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    mount: PathBuf,
    root: PathBuf,
}

/// Instance directories are numbers; everything else under an instance is a sub-agent name.
fn instance_number(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    Ok(fs::metadata(path).map_err(io_err(path))?.ino())
}

impl Hierarchy {
    /// The subtree under the cgroup2 mount found in mountinfo.
    pub fn discover() -> Result<Self, CgroupError> {
        let mount = mounts::cgroup2()?;
        Ok(Self::at(&mount))
    }

    /// The subtree under a given cgroup2 mount.
    pub fn at(mount: &Path) -> Self {
        Self {
            mount: mount.to_owned(),
            root: mount.join(ROOT_NAME),
        }
    }

    /// `<cgroup2>/agentguard`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroup2 mount.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Whether the subtree exists.
    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Creates the subtree if needed; returns its cgroup id and level (the cgroup2 root is
    /// level 0).
    pub fn ensure_root(&self) -> Result<(u64, u32), CgroupError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let level = self
            .root
            .strip_prefix(&self.mount)
            .map(|p| p.components().count())
            .unwrap_or(1);
        Ok((cgroup_id(&self.root)?, u32::try_from(level).unwrap_or(1)))
    }

    /// Creates a new instance of `agent` (full name). A sub-agent (`buyer/search`) is created
    /// inside `parent`, which must be an instance of its parent agent.
    pub fn create_instance(
        &self,
        agent: &str,
        parent: Option<&Instance>,
    ) -> Result<Instance, CgroupError> {
        let (base, name_prefix) = match parent {
            Some(p) => {
                let sub = agent.rsplit('/').next().unwrap_or(agent);
                (p.path.join(sub), format!("{}/{sub}", p.name))
            }
            None => (self.root.join(agent), agent.to_owned()),
        };
        fs::create_dir_all(&base).map_err(io_err(&base))?;
        let mut next = self.numbers(&base)?.into_iter().max().map_or(1, |n| n + 1);
        loop {
            let path = base.join(next.to_string());
            match fs::create_dir(&path) {
                Ok(()) => {
                    let id = cgroup_id(&path)?;
                    return Ok(Instance {
                        agent: agent.to_owned(),
                        name: format!("{name_prefix}/{next}"),
                        path,
                        id,
                        parent: parent.map(|p| p.id),
                        root_instance: parent.map_or(id, |p| p.root_instance),
                    });
                }
                // Another request took this number first.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => next += 1,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }

    fn numbers(&self, dir: &Path) -> Result<Vec<u64>, CgroupError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if let Some(n) = instance_number(&entry.file_name().to_string_lossy()) {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Every instance in the subtree, parents before their sub-agent instances (how a restarted
    /// daemon re-adopts running agents).
    pub fn scan(&self) -> Result<Vec<Instance>, CgroupError> {
        let mut out = Vec::new();
        if !self.exists() {
            return Ok(out);
        }
        for agent in subdirs(&self.root)? {
            let name = file_name(&agent);
            self.scan_agent(&agent, &name, &name, None, &mut out)?;
        }
        Ok(out)
    }

    fn scan_agent(
        &self,
        dir: &Path,
        agent: &str,
        prefix: &str,
        parent: Option<&Instance>,
        out: &mut Vec<Instance>,
    ) -> Result<(), CgroupError> {
        let mut instances: Vec<(u64, PathBuf)> = subdirs(dir)?
            .into_iter()
            .filter_map(|p| instance_number(&file_name(&p)).map(|n| (n, p)))
            .collect();
        instances.sort();
        for (n, path) in instances {
            let id = cgroup_id(&path)?;
            let inst = Instance {
                agent: agent.to_owned(),
                name: format!("{prefix}/{n}"),
                path: path.clone(),
                id,
                parent: parent.map(|p| p.id),
                root_instance: parent.map_or(id, |p| p.root_instance),
            };
            out.push(inst.clone());
            for sub in subdirs(&path)? {
                let sub_name = file_name(&sub);
                if instance_number(&sub_name).is_none() {
                    self.scan_agent(
                        &sub,
                        &format!("{agent}/{sub_name}"),
                        &format!("{}/{sub_name}", inst.name),
                        Some(&inst),
                        out,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The instance with this name.
    pub fn instance(&self, name: &str) -> Result<Instance, CgroupError> {
        self.scan()?
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| CgroupError::NoInstance(name.to_owned()))
    }

    /// Moves a process into an instance.
    pub fn move_pid(&self, instance: &Instance, pid: u32) -> Result<(), CgroupError> {
        let procs = instance.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(io_err(&procs))
    }

    /// Removes an instance cgroup and the empty directories of its sub-agents. Fails (EBUSY)
    /// while any process is left in it.
    pub fn remove(&self, instance: &Instance) -> Result<(), CgroupError> {
        remove_tree(&instance.path)
    }

    /// Removes the whole subtree (every process must be gone).
    pub fn remove_all(&self) -> Result<(), CgroupError> {
        if self.exists() {
            remove_tree(&self.root)
        } else {
            Ok(())
        }
    }

    /// The cgroup path of a process relative to the cgroup2 mount, from /proc/PID/cgroup.
    pub fn cgroup_of(pid: u32) -> Result<PathBuf, CgroupError> {
        let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = fs::read_to_string(&file).map_err(io_err(&file))?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| PathBuf::from(p.trim()))
            .unwrap_or_default())
    }

    /// Whether a process runs inside the agentguard subtree.
    pub fn contains_pid(&self, pid: u32) -> Result<bool, CgroupError> {
        let rel = Self::cgroup_of(pid)?;
        let abs = self.mount.join(rel.strip_prefix("/").unwrap_or(&rel));
        Ok(abs.starts_with(&self.root))
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_type().map_err(io_err(dir))?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// rmdir bottom-up (cgroup directories only contain kernel files, which rmdir ignores).
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for sub in subdirs(dir)? {
        remove_tree(&sub)?;
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io_err(dir)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_numbers() {
        assert_eq!(instance_number("12"), Some(12));
        assert_eq!(instance_number("search"), None);
        assert_eq!(instance_number(""), None);
    }

    /// Plain directories stand in for cgroupfs: naming and scanning are not kernel behaviour.
    #[test]
    fn creates_and_scans_nested_instances() -> Result<(), CgroupError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let h = Hierarchy::at(dir.path());
        h.ensure_root()?;
        let a1 = h.create_instance("buyer", None)?;
        let a2 = h.create_instance("buyer", None)?;
        let s1 = h.create_instance("buyer/search", Some(&a1))?;
        assert_eq!(
            (a1.name.as_str(), a2.name.as_str(), s1.name.as_str()),
            ("buyer/1", "buyer/2", "buyer/1/search/1")
        );
        assert_eq!(s1.parent, Some(a1.id));
        assert_eq!(s1.root_instance, a1.id);
        let scanned = h.scan()?;
        assert_eq!(scanned, vec![a1.clone(), s1.clone(), a2.clone()]);
        assert_eq!(h.instance("buyer/1/search/1")?, s1);
        h.remove(&a1)?;
        assert_eq!(h.scan()?, vec![a2]);
        Ok(())
    }
}
