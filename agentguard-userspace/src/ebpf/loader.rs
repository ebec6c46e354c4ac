//! Loading, attaching, pinning and re-adopting the programs.
//!
//! Maps and links are pinned under a versioned bpffs directory ([`PinDir`]), so enforcement
//! outlives the daemon: after `kill -9` the links stay attached and the maps keep their rules.
//! A restarted daemon loads the same object with the same pin directory: aya re-opens the pinned
//! maps instead of creating new ones, and groups whose links are pinned are adopted rather than
//! attached again, so there is no moment without enforcement.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use agentguard_common::offsets::{FILE_F_PATH_GLOBAL, GLOBAL_NAME, KernelOffsets};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSockAddr, Lsm, ProgramError, TracePoint,
        links::{FdLink, LinkError, PinnedLink},
    },
};

use super::{
    backends::{self, Backends},
    object::{self, OBJECT},
    offsets::{self, OffsetError},
    pins::{self, PinDir},
    programs::{self, Group, Hook, Spec},
};
use crate::sys::mounts::MountError;

/// Why the programs could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// bpffs could not be mounted.
    #[error(transparent)]
    Bpffs(#[from] MountError),
    /// The pin directory could not be created or cleaned.
    #[error("pin directory {path}: {source}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel's BTF could not be read.
    #[error("cannot read kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
    /// Kernel struct offsets could not be found.
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    /// The object could not be loaded.
    #[error("cannot load the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    /// A program is missing from the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A program failed to load or attach.
    #[error("program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// The error.
        #[source]
        source: ProgramError,
    },
    /// A link could not be pinned.
    #[error("cannot pin link of {name}: {message}")]
    Pin {
        /// The program.
        name: &'static str,
        /// What failed.
        message: String,
    },
    /// The cgroup to attach to could not be opened.
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Where to pin, or a throwaway directory for probes.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// agentguard's bpffs directory (normally [`pins::ROOT`]).
    pub pin_root: PathBuf,
    /// The version directory name (normally [`object::version`]).
    pub version: String,
    /// Size of the event ring buffer in bytes (a power-of-two multiple of the page size). Only
    /// used when the ring buffer is created, not when a pinned one is re-opened.
    pub ring_buffer_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(pins::ROOT),
            version: object::version(),
            ring_buffer_bytes: agentguard_common::maps::EVENTS_BYTES,
        }
    }
}

/// The loaded object and what was decided about it.
pub struct Loaded {
    /// The object (maps re-opened from pins where they existed).
    pub ebpf: Ebpf,
    /// Pin directories of this version.
    pub pins: PinDir,
    /// Backends in force.
    pub backends: Backends,
    /// Groups adopted from pinned links (a restart).
    pub adopted: Vec<Group>,
    /// Groups loaded and waiting for [`Loaded::attach`].
    pending: Vec<Group>,
    /// Every link, held open for the daemon's lifetime: removing a pin file then does not
    /// detach a program while the daemon runs (a root agent could otherwise unlink it).
    links: Vec<PinnedLink>,
}

impl Loaded {
    /// Whether anything was adopted from a previous daemon.
    pub fn is_restart(&self) -> bool {
        !self.adopted.is_empty()
    }

    /// Attaches and pins every loaded group; unpins groups this decision no longer uses and
    /// removes pins of other object versions. Call after the maps hold state and policy, so no
    /// program ever runs against empty maps.
    pub fn attach(&mut self, agentguard_cgroup: &Path) -> Result<(), LoadError> {
        let cgroup = File::open(agentguard_cgroup).map_err(|source| LoadError::Cgroup {
            path: agentguard_cgroup.to_owned(),
            source,
        })?;
        for group in std::mem::take(&mut self.pending) {
            for spec in programs::of(group) {
                let link = attach_one(&mut self.ebpf, spec, &cgroup, &self.pins)?;
                self.links.push(link);
            }
        }
        let unused: &[Group] = if self.backends.lsm() {
            &[Group::ExecFallback, Group::OpenBudget]
        } else {
            &[Group::Lsm]
        };
        for spec in unused.iter().flat_map(|g| programs::of(*g)) {
            let _ = std::fs::remove_file(self.pins.link(spec.name));
        }
        let root = self
            .pins
            .base()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let keep = self
            .pins
            .base()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for old in pins::other_versions(&root, &keep).map_err(|source| LoadError::PinDir {
            path: root.clone(),
            source,
        })? {
            tracing::info!(path = %old.display(), "removing pins of another agentguard version");
            pins::remove_tree(&old).map_err(|source| LoadError::PinDir {
                path: old.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Loads the object, re-opening pinned maps, and loads every program group that is needed and
/// not already pinned. BPF LSM is probed by loading its programs: where that fails, the exec
/// fallback is loaded instead.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    pins::ensure_bpffs()?;
    let pins = PinDir::new(&opts.pin_root, &opts.version);
    pins.create().map_err(|source| LoadError::PinDir {
        path: pins.base().to_owned(),
        source,
    })?;
    let t = std::time::Instant::now();
    let btf = Btf::from_sys_fs()?;
    tracing::debug!(took_ms = t.elapsed().as_millis(), "kernel BTF parsed (aya)");
    let offsets = offsets::from_btf(Path::new(offsets::VMLINUX_BTF))?;
    tracing::debug!(took_ms = t.elapsed().as_millis(), "kernel offsets read");
    let mut ebpf = open_object(&btf, &offsets, &pins.maps(), opts.ring_buffer_bytes)?;

    let mut groups = Groups {
        pins: &pins,
        btf: &btf,
        adopted: Vec::new(),
        pending: Vec::new(),
        links: Vec::new(),
    };
    groups.take(&mut ebpf, Group::Network)?;
    // Loading the LSM programs is the probe: where that fails, the exec fallback takes over.
    let lsm = backends::bpf_lsm_active().and_then(|()| {
        groups
            .take(&mut ebpf, Group::Lsm)
            .map_err(|e| e.to_string())
    });
    let backends = Backends::decide(lsm, backends::landlock_abi());
    if !backends.lsm() {
        groups.take(&mut ebpf, Group::ExecFallback)?;
        pins::ensure_tracefs()?;
        groups.take(&mut ebpf, Group::OpenBudget)?;
    }
    let (adopted, pending, links) = (groups.adopted, groups.pending, groups.links);
    Ok(Loaded {
        ebpf,
        pins,
        backends,
        adopted,
        pending,
        links,
    })
}

/// Opens the object with the kernel's offsets filled in, maps pinned (or re-opened) in `maps_dir`.
pub(crate) fn open_object(
    btf: &Btf,
    offsets: &KernelOffsets,
    maps_dir: &Path,
    ring_buffer_bytes: u32,
) -> Result<Ebpf, aya::EbpfError> {
    EbpfLoader::new()
        .map_max_entries(agentguard_common::maps::EVENTS, ring_buffer_bytes)
        .btf(Some(btf))
        .override_global(GLOBAL_NAME, offsets, true)
        .override_global(FILE_F_PATH_GLOBAL, &offsets.file_path, true)
        .default_map_pin_directory(maps_dir)
        .load(OBJECT)
}

/// Which groups were adopted from pins and which were loaded and still need attaching.
struct Groups<'a> {
    pins: &'a PinDir,
    btf: &'a Btf,
    adopted: Vec<Group>,
    pending: Vec<Group>,
    links: Vec<PinnedLink>,
}

impl Groups<'_> {
    /// Adopts `group` from its pinned links, or loads its programs.
    fn take(&mut self, ebpf: &mut Ebpf, group: Group) -> Result<(), LoadError> {
        let t = std::time::Instant::now();
        let r = self.take_inner(ebpf, group);
        tracing::debug!(
            group = group.name(),
            took_ms = t.elapsed().as_millis(),
            "program group ready"
        );
        r
    }

    fn take_inner(&mut self, ebpf: &mut Ebpf, group: Group) -> Result<(), LoadError> {
        if let Some(links) = adopt(self.pins, group) {
            self.adopted.push(group);
            self.links.extend(links);
        } else {
            load_group(ebpf, group, self.btf)?;
            self.pending.push(group);
        }
        Ok(())
    }
}

/// The pinned links of `group` when every one of its programs has a valid one. A partial set
/// (a crash between two pins) is removed so the group is attached afresh.
fn adopt(pins: &PinDir, group: Group) -> Option<Vec<PinnedLink>> {
    let links: Option<Vec<PinnedLink>> = programs::of(group)
        .map(|s| PinnedLink::from_pin(pins.link(s.name)).ok())
        .collect();
    if links.is_none() {
        for s in programs::of(group) {
            let _ = std::fs::remove_file(pins.link(s.name));
        }
    }
    links
}

fn program_error(name: &'static str) -> impl Fn(ProgramError) -> LoadError {
    move |source| LoadError::Program { name, source }
}

pub(crate) fn load_group(ebpf: &mut Ebpf, group: Group, btf: &Btf) -> Result<(), LoadError> {
    for spec in programs::of(group) {
        let program = ebpf
            .program_mut(spec.name)
            .ok_or(LoadError::MissingProgram(spec.name))?;
        let err = program_error(spec.name);
        match spec.hook {
            Hook::SockAddr => {
                let p: &mut CgroupSockAddr = program.try_into().map_err(&err)?;
                p.load().map_err(&err)?;
            }
            Hook::TpBtf(tp) => {
                let p: &mut BtfTracePoint = program.try_into().map_err(&err)?;
                p.load(tp, btf).map_err(&err)?;
            }
            Hook::Lsm(hook) => {
                let p: &mut Lsm = program.try_into().map_err(&err)?;
                p.load(hook, btf).map_err(&err)?;
            }
            Hook::TracePoint(..) => {
                let p: &mut TracePoint = program.try_into().map_err(&err)?;
                p.load().map_err(&err)?;
            }
        }
    }
    Ok(())
}

fn attach_one(
    ebpf: &mut Ebpf,
    spec: &Spec,
    cgroup: &File,
    pins: &PinDir,
) -> Result<PinnedLink, LoadError> {
    let program = ebpf
        .program_mut(spec.name)
        .ok_or(LoadError::MissingProgram(spec.name))?;
    let err = program_error(spec.name);
    let link: FdLink = match spec.hook {
        Hook::SockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(&err)?;
            // A bpf_link on a cgroup always coexists with other programs there; the legacy
            // multi-attach flag is rejected for links.
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(&err)?;
            let link = p.take_link(id).map_err(&err)?;
            FdLink::try_from(link).map_err(|e: LinkError| LoadError::Pin {
                name: spec.name,
                message: e.to_string(),
            })?
        }
        Hook::TpBtf(_) => {
            let p: &mut BtfTracePoint = program.try_into().map_err(&err)?;
            let id = p.attach().map_err(&err)?;
            p.take_link(id).map_err(&err)?.into()
        }
        Hook::Lsm(_) => {
            let p: &mut Lsm = program.try_into().map_err(&err)?;
            let id = p.attach().map_err(&err)?;
            p.take_link(id).map_err(&err)?.into()
        }
        Hook::TracePoint(category, name) => {
            let p: &mut TracePoint = program.try_into().map_err(&err)?;
            let id = p.attach(category, name).map_err(&err)?;
            let link = p.take_link(id).map_err(&err)?;
            FdLink::try_from(link).map_err(|e: LinkError| LoadError::Pin {
                name: spec.name,
                message: e.to_string(),
            })?
        }
    };
    let path = pins.link(spec.name);
    let _ = std::fs::remove_file(&path);
    link.pin(&path).map_err(|e| LoadError::Pin {
        name: spec.name,
        message: e.to_string(),
    })
}
