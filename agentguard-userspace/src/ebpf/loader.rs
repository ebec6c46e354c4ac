//! Loading, attaching, pinning and re-adopting the programs.
//!
//! Maps and links are pinned in bpffs ([`PinDir`]), so enforcement outlives the daemon: after
//! `kill -9` the links stay attached and the maps keep their rules. A restarted daemon of the
//! same build re-opens the pinned maps (aya does, for maps pinned by name) and adopts the groups
//! whose links are pinned rather than attaching them again, so there is no moment without
//! enforcement.
//!
//! A daemon of another build (an upgrade) whose maps have the same ABI and layout re-opens the
//! same maps, after checking each pinned map's type, sizes and flags against its object: the
//! instances, budgets and counters carry over. Its programs are attached next to the old ones
//! and only then are the old links unpinned, so the old programs judge until the new ones do.
//! A build with other maps starts from fresh maps in a directory of its own (reported as
//! [`Replaced`]), and the old build's pins are removed only once its programs are attached.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use agentguard_common::offsets::{FILE_F_PATH_GLOBAL, GLOBAL_NAME, KernelOffsets};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSockAddr, Lsm, ProgramError, TracePoint,
        links::{FdLink, LinkError, PinnedLink},
    },
};

use super::{
    backends::{self, Backends, MissingProgram, UnixBackend},
    hook_probe, link_update,
    object::{EbpfObject, MapLayout, ObjectError},
    offsets::{self, OffsetError},
    open_hooks::{self, OpenHooks},
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
    /// No variant of a program loaded.
    #[error("program {name}: no variant loads: {reasons}")]
    NoVariant {
        /// The program.
        name: &'static str,
        /// Each variant's error, in brief.
        reasons: String,
    },
    /// A link could not be pinned.
    #[error("cannot pin link of {name}: {message}")]
    Pin {
        /// The program.
        name: &'static str,
        /// What failed.
        message: String,
    },
    /// A pinned map in this build's state directory does not have the layout the object
    /// declares: loading against it could misread every entry, so nothing is loaded and the
    /// pins in force stay as they are.
    #[error(
        "pinned map {path} has {pinned}, the eBPF object declares {declared}: run `agentguard teardown` to start afresh"
    )]
    MapLayout {
        /// The pinned map.
        path: PathBuf,
        /// Its layout in the kernel.
        pinned: MapLayout,
        /// The object's.
        declared: MapLayout,
    },
    /// The object could not be parsed for its maps' layouts.
    #[error(transparent)]
    ObjectFile(#[from] ObjectError),
    /// The kernel has the hook of an optional program but refused agentguard's program for it:
    /// a bug of this build, which does not run with less enforcement than the kernel offers.
    #[error(
        "the kernel has the hook of {program} ({hook}) but refused agentguard's program: {reason}. Without it {loses}, so the daemon does not start: this is a bug of this agentguard build, please report it with the output of `agentguard doctor`"
    )]
    OwnProgramRefused {
        /// The program.
        program: &'static str,
        /// Its hook.
        hook: String,
        /// Why the kernel refused it.
        reason: String,
        /// What enforcement would lose without it.
        loses: &'static str,
    },
    /// Whether the kernel has a program's hook could not be asked.
    #[error("cannot ask the kernel whether it has the hook of {program}: {source}")]
    HookProbe {
        /// The program.
        program: &'static str,
        /// The error.
        #[source]
        source: io::Error,
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

/// Where to pin and what to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// agentguard's bpffs directory (normally [`pins::ROOT`]).
    pub pin_root: PathBuf,
    /// The object (normally the embedded one).
    pub object: EbpfObject,
    /// Size of the event ring buffer in bytes (a power-of-two multiple of the page size). Only
    /// used when the ring buffer is created, not when a pinned one is re-opened.
    pub ring_buffer_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(pins::ROOT),
            object: EbpfObject::embedded(),
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
    /// Whether the maps were re-opened from pins (a restart or an upgrade that kept state).
    pub maps_adopted: bool,
    /// Other builds whose maps this one shares and whose links it replaces (an upgrade).
    pub previous_builds: Vec<String>,
    /// Pinned state this build could not take over; removed once this build is attached.
    pub replaced: Vec<Replaced>,
    /// Programs loaded and waiting for [`Loaded::attach`]: the spec and the variant that loaded.
    pending: Vec<Chosen>,
    /// Every link, held open for the daemon's lifetime: removing a pin file then does not
    /// detach a program while the daemon runs (a root agent could otherwise unlink it).
    links: Vec<PinnedLink>,
    /// The open-budget tracepoints (fallback backend only), attached while a policy needs them.
    open_hooks: Option<OpenHooks>,
}

impl Loaded {
    /// Whether anything was adopted from a previous daemon.
    pub fn is_restart(&self) -> bool {
        !self.adopted.is_empty() || self.maps_adopted
    }

    /// Attaches the open-budget tracepoints when `wanted` (a policy with an open budget is, or
    /// is about to be, in force) and detaches them otherwise; nothing to do on the LSM backend,
    /// where `file_open` charges open budgets.
    pub fn set_open_hooks(&mut self, wanted: bool) -> Result<(), LoadError> {
        match &mut self.open_hooks {
            Some(hooks) => hooks.set(&mut self.ebpf, &self.pins, wanted),
            None => Ok(()),
        }
    }

    /// Whether the open-budget tracepoints are attached; `None` where open budgets need none.
    pub fn open_hooks_attached(&self) -> Option<bool> {
        self.open_hooks.as_ref().map(OpenHooks::attached)
    }

    /// Attaches and pins every loaded group; unpins groups this decision no longer uses and
    /// removes pins of other object versions. Call after the maps hold state and policy, so no
    /// program ever runs against empty maps.
    pub fn attach(&mut self, agentguard_cgroup: &Path) -> Result<(), LoadError> {
        let cgroup = File::open(agentguard_cgroup).map_err(|source| LoadError::Cgroup {
            path: agentguard_cgroup.to_owned(),
            source,
        })?;
        let previous = self
            .pins
            .other_builds()
            .map_err(|source| LoadError::PinDir {
                path: self.pins.links(),
                source,
            })?;
        for (spec, program) in std::mem::take(&mut self.pending) {
            let link = match take_over(&self.ebpf, spec, program, &previous, &self.pins) {
                Some(link) => link,
                None => attach_one(&mut self.ebpf, spec, program, &cgroup, &self.pins)?,
            };
            self.links.push(link);
        }
        let mut unused: Vec<Group> = if self.backends.lsm() {
            open_hooks::remove_pins(&self.pins);
            vec![Group::ExecFallback]
        } else {
            vec![Group::Lsm]
        };
        if self.backends.unix != UnixBackend::CgroupSockAddr {
            unused.push(Group::UnixSockAddr);
        }
        for spec in unused.iter().flat_map(|g| programs::of(*g)) {
            let _ = std::fs::remove_file(self.pins.link(spec.name));
        }
        // Only now, with this build's programs attached, do the old ones go: unpinning a link
        // nobody holds detaches it.
        let states = self.replaced.iter().map(|r| r.path.clone());
        for old in previous.into_iter().chain(states) {
            tracing::info!(path = %old.display(), "removing the pins of the previous build");
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
    let layouts = opts.object.layouts()?;
    let state = opts.object.state_version()?;
    let pins = PinDir::new(&opts.pin_root, &state, &opts.object.build());
    let maps_adopted = check_pinned_maps(&pins.maps(), &layouts)?;
    let replaced = other_states(&opts.pin_root, &state, &layouts)?;
    pins.create().map_err(|source| LoadError::PinDir {
        path: pins.base().to_owned(),
        source,
    })?;
    let previous_builds = pins
        .other_builds()
        .map_err(|source| LoadError::PinDir {
            path: pins.links(),
            source,
        })?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let t = std::time::Instant::now();
    let btf = Btf::from_sys_fs()?;
    tracing::debug!(took_ms = t.elapsed().as_millis(), "kernel BTF parsed (aya)");
    let offsets = offsets::from_btf(Path::new(offsets::VMLINUX_BTF))?;
    tracing::debug!(took_ms = t.elapsed().as_millis(), "kernel offsets read");
    let mut ebpf = open_object(
        opts.object.bytes(),
        &btf,
        &offsets,
        &pins.maps(),
        opts.ring_buffer_bytes,
    )?;

    let mut groups = Groups {
        pins: &pins,
        btf: &btf,
        adopted: Vec::new(),
        pending: Vec::new(),
        links: Vec::new(),
    };
    groups.take(&mut ebpf, Group::Network)?;
    // Loading the LSM programs is the probe: where an essential one fails, the exec fallback
    // takes over; optional ones that fail are reported with what they lose.
    let lsm = backends::bpf_lsm_active()
        .and_then(|()| groups.take(&mut ebpf, Group::Lsm).map_err(|e| brief(&e)));
    let mut backends = Backends::decide(
        lsm.as_ref().map(drop).map_err(Clone::clone),
        backends::landlock_abi(),
    );
    if let Ok(report) = lsm {
        for m in &report.missing {
            tracing::warn!(
                program = m.program,
                hook = %m.hook,
                reason = %m.reason,
                "an LSM program did not load: {}",
                m.loses
            );
        }
        for note in &report.notes {
            tracing::info!("{note}");
        }
        backends.missing = report.missing;
        backends.notes = report.notes;
    } else {
        groups.take(&mut ebpf, Group::ExecFallback)?;
        pins::ensure_tracefs()?;
    }
    // Attached later, and only while a policy has an open budget (see `open_hooks`).
    let open_hooks = (!backends.lsm()).then(|| OpenHooks::adopt(&pins));
    // Every program of the group is optional: loading it only fails for a missing program.
    let mut unix_error = None;
    backends.settle_unix(|| match groups.take(&mut ebpf, Group::UnixSockAddr) {
        Ok(report) => {
            unix_error = refused_with_hook(&report.missing).err();
            report.missing
        }
        Err(e) => {
            unix_error = Some(e);
            Vec::new()
        }
    });
    if let Some(e) = unix_error {
        return Err(e);
    }
    if backends.unix == UnixBackend::Unjudged {
        tracing::warn!("{}", programs::UNIX_UNJUDGED);
    }
    let (adopted, pending, links) = (groups.adopted, groups.pending, groups.links);
    Ok(Loaded {
        ebpf,
        pins,
        backends,
        adopted,
        maps_adopted,
        previous_builds,
        replaced,
        pending,
        links,
        open_hooks,
    })
}

/// Pinned state of another ABI or map layout, which this build cannot take over.
#[derive(Clone, Debug)]
pub struct Replaced {
    /// Its directory.
    pub path: PathBuf,
    /// Why it cannot be taken over, in a line.
    pub reason: String,
}

/// Checks every map pinned in `dir` against the object's layouts; true when any was pinned
/// (the maps will be re-opened). A mismatch is an error: nothing is loaded, nothing changes.
fn check_pinned_maps(dir: &Path, layouts: &BTreeMap<String, MapLayout>) -> Result<bool, LoadError> {
    let mut any = false;
    for (name, declared) in layouts {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        any = true;
        let pinned = pinned_layout(&path)?;
        if pinned != *declared {
            return Err(LoadError::MapLayout {
                path,
                pinned,
                declared: *declared,
            });
        }
    }
    Ok(any)
}

fn pinned_layout(path: &Path) -> Result<MapLayout, LoadError> {
    let info = MapInfo::from_pin(path).map_err(|e| LoadError::PinDir {
        path: path.to_owned(),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(MapLayout::of_info(&info))
}

/// The other state directories under `root`, each with why its maps cannot be taken over:
/// the maps whose layout differs, or another ABI (the same sizes may mean other things).
fn other_states(
    root: &Path,
    state: &str,
    layouts: &BTreeMap<String, MapLayout>,
) -> Result<Vec<Replaced>, LoadError> {
    let dirs = pins::other_versions(root, state).map_err(|source| LoadError::PinDir {
        path: root.to_owned(),
        source,
    })?;
    let abi = format!("v{}-", agentguard_common::ABI_VERSION);
    Ok(dirs
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let reason = if !name.starts_with(&abi) {
                format!(
                    "pinned by ABI {}, this build has ABI v{}",
                    name.split('-').next().unwrap_or("?"),
                    agentguard_common::ABI_VERSION
                )
            } else {
                let maps = path.join("maps");
                let differ: Vec<String> = layouts
                    .iter()
                    .filter_map(|(map, declared)| match pinned_layout(&maps.join(map)) {
                        Ok(p) if p == *declared => None,
                        Ok(p) => Some(format!("{map} (pinned {p}, now {declared})")),
                        Err(_) => Some(format!("{map} (not pinned there)")),
                    })
                    .collect();
                if differ.is_empty() {
                    "pinned in an older layout of the pin directory".to_owned()
                } else {
                    format!("map layouts differ: {}", differ.join("; "))
                }
            };
            Replaced { path, reason }
        })
        .collect())
}

/// Opens the object with the kernel's offsets filled in, maps pinned (or re-opened) in `maps_dir`.
pub(crate) fn open_object(
    object: &[u8],
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
        .load(object)
}

/// Which groups were adopted from pins and which programs were loaded and still need attaching.
struct Groups<'a> {
    pins: &'a PinDir,
    btf: &'a Btf,
    adopted: Vec<Group>,
    pending: Vec<Chosen>,
    links: Vec<PinnedLink>,
}

impl Groups<'_> {
    /// Adopts `group` from its pinned links, or loads its programs.
    fn take(&mut self, ebpf: &mut Ebpf, group: Group) -> Result<GroupLoad, LoadError> {
        let t = std::time::Instant::now();
        let r = self.take_inner(ebpf, group);
        tracing::debug!(
            group = group.name(),
            took_ms = t.elapsed().as_millis(),
            "program group ready"
        );
        r
    }

    fn take_inner(&mut self, ebpf: &mut Ebpf, group: Group) -> Result<GroupLoad, LoadError> {
        let to_load: Vec<&'static Spec> = match adopt(self.pins, group) {
            Some((links, unpinned)) => {
                self.adopted.push(group);
                self.links.extend(links);
                // Optional programs that did not load (or attach) last time: try them again.
                unpinned
            }
            None => programs::of(group).collect(),
        };
        let (loaded, report) = load_specs(ebpf, to_load, self.btf)?;
        self.pending.extend(loaded);
        Ok(report)
    }
}

/// Fails for the first program of `missing` whose hook the kernel has (asked with a trivial
/// program): the kernel refused agentguard's own program, not a hook it lacks. Only the AF_UNIX
/// cgroup programs are asked: the kernel may refuse an LSM hook it has for reasons of its own
/// (hooks BPF may not attach to), which the optional LSM programs are reported with.
pub fn refused_with_hook(missing: &[MissingProgram]) -> Result<(), LoadError> {
    for m in missing {
        let Some(hook) = programs::unix_sock_addr_hook(m.program) else {
            continue;
        };
        let exists =
            hook_probe::sock_addr_hook_exists(hook).map_err(|source| LoadError::HookProbe {
                program: m.program,
                source,
            })?;
        if exists {
            return Err(LoadError::OwnProgramRefused {
                program: m.program,
                hook: format!("{} {hook:?}", m.hook),
                reason: m.reason.clone(),
                loses: m.loses,
            });
        }
    }
    Ok(())
}

/// What loading a group left to report: optional programs that did not load, and variants
/// taken instead of the first choice.
#[derive(Debug, Default)]
pub(crate) struct GroupLoad {
    /// Optional programs that did not load.
    pub missing: Vec<MissingProgram>,
    /// One line per program loaded as its alternate variant.
    pub notes: Vec<String>,
}

/// The pinned links of `group` when every program it cannot do without has a valid one, with
/// the optional programs that have none. A partial set of essential links (a crash between two
/// pins) is removed so the group is attached afresh.
fn adopt(pins: &PinDir, group: Group) -> Option<(Vec<PinnedLink>, Vec<&'static Spec>)> {
    let mut links = Vec::new();
    let mut unpinned = Vec::new();
    let mut complete = true;
    for spec in programs::of(group) {
        match PinnedLink::from_pin(pins.link(spec.name)) {
            Ok(link) => links.push(link),
            Err(_) if spec.optional.is_some() => unpinned.push(spec),
            Err(_) => complete = false,
        }
    }
    if !complete || links.is_empty() {
        for s in programs::of(group) {
            let _ = std::fs::remove_file(pins.link(s.name));
        }
        return None;
    }
    Some((links, unpinned))
}

fn program_error(name: &'static str) -> impl Fn(ProgramError) -> LoadError {
    move |source| LoadError::Program { name, source }
}

/// Loads every program of `group` (without attaching): optional ones that fail are reported,
/// an essential one that fails is the error.
pub(crate) fn load_group(ebpf: &mut Ebpf, group: Group, btf: &Btf) -> Result<GroupLoad, LoadError> {
    load_specs(ebpf, programs::of(group).collect(), btf).map(|(_, report)| report)
}

/// A program to attach: its spec and the variant of it that loaded.
type Chosen = (&'static Spec, &'static str);

/// Loads `specs`, each as the first of its variants the kernel accepts; returns the variant
/// loaded for each spec that loaded, and what to report. Once the kernel refused one first
/// choice that has an alternate, the others try their alternate first: the reason is the same
/// (e.g. `bpf_d_path` in every `path_*` hook), and a refused load costs verifier time.
fn load_specs(
    ebpf: &mut Ebpf,
    specs: Vec<&'static Spec>,
    btf: &Btf,
) -> Result<(Vec<Chosen>, GroupLoad), LoadError> {
    let mut loaded = Vec::new();
    let mut report = GroupLoad::default();
    let mut alternates: Vec<&str> = Vec::new();
    let mut refusal: Option<String> = None;
    for spec in specs {
        let mut variants: Vec<&'static str> = spec.variants().collect();
        if refusal.is_some() {
            variants.reverse();
        }
        match load_variants(ebpf, spec, &variants, btf) {
            Ok((program, refused)) => {
                if program != spec.name {
                    alternates.push(program);
                }
                if refusal.is_none() {
                    refusal = refused;
                }
                loaded.push((spec, program));
            }
            Err(e) => match spec.optional {
                Some(loses) => report.missing.push(MissingProgram {
                    program: spec.name,
                    hook: spec.hook_name(),
                    reason: brief(&e),
                    loses,
                }),
                None => return Err(e),
            },
        }
    }
    if let Some(why) = refusal {
        report.notes.push(format!(
            "loaded the alternate variants {} because {why}",
            alternates.join(", ")
        ));
    }
    Ok((loaded, report))
}

/// Loads the first of `variants` (programs of `spec`) the kernel accepts; with it, why the
/// kernel refused the variant tried before, if one was.
fn load_variants(
    ebpf: &mut Ebpf,
    spec: &'static Spec,
    variants: &[&'static str],
    btf: &Btf,
) -> Result<(&'static str, Option<String>), LoadError> {
    let mut first: Option<LoadError> = None;
    let mut reasons = Vec::new();
    for &program in variants {
        match load_one(ebpf, program, spec.hook, btf) {
            Ok(()) => return Ok((program, reasons.into_iter().next())),
            Err(e) => {
                tracing::debug!(program, "not loaded: {e}");
                reasons.push(brief(&e));
                if first.is_none() {
                    first = Some(e);
                }
            }
        }
    }
    match first {
        Some(e) if reasons.len() == 1 => Err(e),
        Some(_) => Err(LoadError::NoVariant {
            name: spec.name,
            reasons: reasons.join("; "),
        }),
        None => Err(LoadError::MissingProgram(spec.name)),
    }
}

fn load_one(ebpf: &mut Ebpf, name: &'static str, hook: Hook, btf: &Btf) -> Result<(), LoadError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?;
    let err = program_error(name);
    match hook {
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
    Ok(())
}

/// A load error in a line: for a verifier rejection, the verifier's own reason and the
/// instruction it stopped at, not the whole log (which `RUST_LOG=debug` shows).
pub fn brief(e: &LoadError) -> String {
    match e {
        LoadError::Program {
            name,
            source:
                ProgramError::LoadError {
                    io_error,
                    verifier_log,
                },
        } => format!(
            "the kernel refused program {name} ({io_error}): {}",
            verifier_reason(&verifier_log.to_string())
        ),
        other => other.to_string(),
    }
}

/// The verifier's reason for a rejection: the last line of its log that is not a statistic,
/// with the instruction before it when there is one.
fn verifier_reason(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("processed ")
        })
        .collect();
    match lines.as_slice() {
        [] => "the verifier gave no reason".to_owned(),
        [.., insn, reason] if insn.starts_with(|c: char| c.is_ascii_digit()) => {
            // "621: (85) call bpf_d_path#147      ; frame2: ..." -> the instruction only.
            let insn = insn.split(" ;").next().unwrap_or(insn).trim();
            format!("{reason} (at `{insn}`)")
        }
        [.., reason] => (*reason).to_owned(),
    }
}

/// Replaces the program of a previous build's cgroup link for `spec` with `program` in place
/// (`BPF_LINK_UPDATE`) and moves the pin to this build: no connect goes unjudged or is judged
/// twice. `None` where there is no such link or the kernel refuses the update: then the program
/// is attached beside the old one, which stays until this build is attached.
fn take_over(
    ebpf: &Ebpf,
    spec: &Spec,
    program: &'static str,
    previous: &[PathBuf],
    pins: &PinDir,
) -> Option<PinnedLink> {
    if spec.hook != Hook::SockAddr {
        return None;
    }
    let old = previous
        .iter()
        .map(|dir| dir.join(spec.name))
        .find(|p| p.exists())?;
    let new = pins.link(spec.name);
    let result = (|| {
        let fd = ebpf
            .program(program)
            .ok_or_else(|| io::Error::other("not in the object"))?
            .fd()
            .map_err(io::Error::other)?;
        let link = link_update::open_pinned(&old)?;
        link_update::update(link.as_fd(), fd.as_fd())?;
        // A rename within bpffs moves the pin without a moment where the link has none.
        std::fs::rename(&old, &new)?;
        PinnedLink::from_pin(&new).map_err(io::Error::other)
    })();
    match result {
        Ok(link) => {
            tracing::info!(
                program = spec.name,
                "replaced the previous build's program in its link"
            );
            Some(link)
        }
        Err(e) => {
            tracing::warn!(program = spec.name, error = %e, "cannot replace the previous build's program in place: attaching beside it");
            None
        }
    }
}

/// Attaches `program` (a variant of `spec`) and pins its link under the spec's name.
fn attach_one(
    ebpf: &mut Ebpf,
    spec: &Spec,
    program: &'static str,
    cgroup: &File,
    pins: &PinDir,
) -> Result<PinnedLink, LoadError> {
    let program = ebpf
        .program_mut(program)
        .ok_or(LoadError::MissingProgram(program))?;
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

#[cfg(test)]
mod tests {
    use super::verifier_reason;

    #[test]
    fn verifier_reason_is_the_last_line_before_the_statistics() {
        let log = "0: R1=ctx() R10=fp0\nreg type unsupported for arg#0 function path_child_op#88\n\
                   621: (85) call bpf_d_path#147         ; frame2: R0=scalar()\n\
                   helper call is not allowed in probe\nverification time 99094 usec\n\
                   stack depth 0+160\nprocessed 1507 insns (limit 1000000)\n";
        assert_eq!(
            verifier_reason(log),
            "helper call is not allowed in probe (at `621: (85) call bpf_d_path#147`)"
        );
        assert_eq!(
            verifier_reason("invalid mem access\n"),
            "invalid mem access"
        );
        assert_eq!(verifier_reason(""), "the verifier gave no reason");
    }
}
