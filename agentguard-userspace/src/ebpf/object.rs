//! The eBPF object, embedded at build time (see build.rs and `cargo xtask build-ebpf`).

use std::{
    borrow::Cow,
    collections::BTreeMap,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya_obj::{generated::bpf_map_type, maps::PinningType};

/// The object's bytes, 8-byte aligned as the ELF parser wants.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AGENTGUARD_EBPF_OBJ"));

/// Why an eBPF object could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The object named with `--ebpf-object` could not be read.
    #[error("eBPF object {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The object file, or a directory above it, could be changed by someone other than root.
    #[error("eBPF object {path}: refused: {why}")]
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The object is not an eBPF ELF object aya can parse.
    #[error("eBPF object: {0}")]
    Parse(String),
}

/// The layout of one pinned map: what must match for a map pinned by one build to be used by
/// another. A ring buffer's size is left out: it is a daemon option, and a pinned ring buffer
/// is re-opened with the size it was created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Maximum number of entries (`None` for a ring buffer).
    pub max_entries: Option<u32>,
    /// `BPF_F_*` creation flags.
    pub flags: u32,
}

impl MapLayout {
    /// The layout of a map from what the kernel reports about it.
    pub fn of_info(info: &aya::maps::MapInfo) -> Self {
        Self::new(
            map_type_number(info.map_type().ok()),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        )
    }

    fn new(map_type: u32, key_size: u32, value_size: u32, max_entries: u32, flags: u32) -> Self {
        let ring = map_type == bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32;
        Self {
            map_type,
            key_size,
            value_size,
            max_entries: (!ring).then_some(max_entries),
            flags,
        }
    }
}

impl std::fmt::Display for MapLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} value {} entries {} flags {:#x}",
            self.map_type,
            self.key_size,
            self.value_size,
            self.max_entries
                .map_or_else(|| "any".to_owned(), |n| n.to_string()),
            self.flags
        )
    }
}

/// aya reports a map's type as its own enum; the object and the layout digest use the kernel's
/// number. Types aya does not know cannot match anything the object declares.
fn map_type_number(t: Option<aya::maps::MapType>) -> u32 {
    t.map_or(u32::MAX, |t| t as u32)
}

/// An eBPF object the daemon loads: the one embedded at build time, or one an operator named
/// with the root-only `--ebpf-object` daemon option (how a test gets two different builds).
#[derive(Clone, Debug)]
pub struct EbpfObject {
    bytes: Cow<'static, [u8]>,
}

impl Default for EbpfObject {
    fn default() -> Self {
        Self::embedded()
    }
}

impl EbpfObject {
    /// The object embedded in this binary.
    pub fn embedded() -> Self {
        Self {
            bytes: Cow::Borrowed(OBJECT),
        }
    }

    /// An object file given by the operator. Only a file that only root can change is loaded:
    /// the file and every directory above it must be owned by root and writable by no one else,
    /// so the option cannot become a way for another user to put code into the kernel.
    pub fn from_trusted_file(path: &Path) -> Result<Self, ObjectError> {
        let read = |source| ObjectError::Read {
            path: path.to_owned(),
            source,
        };
        let path = path.canonicalize().map_err(read)?;
        for p in path.ancestors() {
            let meta = std::fs::metadata(p).map_err(read)?;
            let untrusted = |why: &str| ObjectError::Untrusted {
                path: p.to_owned(),
                why: why.to_owned(),
            };
            if meta.uid() != 0 {
                return Err(untrusted("not owned by root"));
            }
            // A sticky directory (/tmp) lets others create files but not replace root's.
            let sticky = meta.is_dir() && meta.mode() & 0o1000 != 0;
            if meta.mode() & 0o022 != 0 && !sticky {
                return Err(untrusted("writable by group or others"));
            }
        }
        let bytes = std::fs::read(&path).map_err(read)?;
        // The ELF parser reads headers in place: it needs the buffer 8-byte aligned, which the
        // allocator gives a buffer this size (checked rather than assumed).
        if bytes.as_ptr().align_offset(8) != 0 {
            return Err(ObjectError::Parse("buffer not 8-byte aligned".into()));
        }
        let object = Self {
            bytes: Cow::Owned(bytes),
        };
        object.layouts()?;
        Ok(object)
    }

    /// The object's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// This build of the object: a digest of its bytes. Links are pinned per build, so a
    /// daemon adopts the links of exactly its own programs.
    pub fn build(&self) -> String {
        blake3::hash(&self.bytes).to_hex()[..12].to_owned()
    }

    /// The layout of each map the object pins by name.
    pub fn layouts(&self) -> Result<BTreeMap<String, MapLayout>, ObjectError> {
        let obj =
            aya_obj::Object::parse(&self.bytes).map_err(|e| ObjectError::Parse(e.to_string()))?;
        Ok(obj
            .maps
            .iter()
            .filter(|(_, m)| m.pinning() == PinningType::ByName)
            .map(|(name, m)| {
                let layout = MapLayout::new(
                    m.map_type(),
                    m.key_size(),
                    m.value_size(),
                    m.max_entries(),
                    m.map_flags(),
                );
                (name.clone(), layout)
            })
            .collect())
    }

    /// The directory name the pinned maps live under: the ABI version (what the maps' entries
    /// mean) and a digest of the maps' layouts (how big they are). Two builds that agree on
    /// both share the maps, so an upgrade keeps every instance, budget and counter; any other
    /// build gets a directory of its own and starts from fresh maps.
    pub fn state_version(&self) -> Result<String, ObjectError> {
        let mut hasher = blake3::Hasher::new();
        for (name, l) in self.layouts()? {
            hasher.update(format!("{name} {l}\n").as_bytes());
        }
        Ok(format!(
            "v{}-{}",
            agentguard_common::ABI_VERSION,
            &hasher.finalize().to_hex()[..12]
        ))
    }
}

/// Map and program names are string literals in agentguard-ebpf (`#[map(name = ...)]`, the
/// program functions' names), where attributes cannot take them from agentguard-common. These
/// tests read the embedded object and hold it to agentguard-common and [`super::programs`], so a
/// rename on one side only fails here instead of at load time on some host.
#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use ::object::{
        Endianness, Object, ObjectSection, ObjectSymbol, SymbolKind, read::elf::ElfFile64,
    };
    use agentguard_common::{maps, offsets};

    use super::OBJECT;
    use crate::ebpf::programs::{Hook, SPECS};

    /// Every map name agentguard-common defines: the maps userspace shares with the programs,
    /// pinned by name so they outlive the daemon.
    /// The maps agentguard-common names: the pinned ones.
    const COMMON_MAPS: &[&str] = maps::ALL;

    /// aya-ebpf's map definition in the `maps` section is seven `u32`s; the seventh says how the
    /// map is pinned, 1 being by name.
    const PINNING_OFFSET: usize = 6 * 4;
    const PIN_BY_NAME: u32 = 1;

    #[derive(Default)]
    struct Contents {
        /// Program name -> its section (which names the hook).
        programs: BTreeMap<String, String>,
        /// Map name -> pinned by name.
        maps: BTreeMap<String, bool>,
        /// Globals the loader fills in (read-only data).
        globals: BTreeSet<String>,
    }

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    fn contents() -> TestResult<Contents> {
        let file = ElfFile64::<Endianness>::parse(OBJECT)?;
        let mut c = Contents::default();
        for sym in file.symbols().filter(|s| s.is_global()) {
            let Some(index) = sym.section_index() else {
                continue;
            };
            let section = file.section_by_index(index)?;
            let section_name = section.name()?;
            let name = sym.name()?.to_owned();
            match (sym.kind(), section_name) {
                // Helpers the compiler emitted (memcpy, ...) live in .text; programs do not.
                (SymbolKind::Text, ".text") => {}
                (SymbolKind::Text, _) => {
                    c.programs.insert(name, section_name.to_owned());
                }
                (SymbolKind::Data, "maps") => {
                    let start = usize::try_from(sym.address())? + PINNING_OFFSET;
                    let pinning = section
                        .data()?
                        .get(start..start + 4)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_le_bytes)
                        .ok_or("map definition is cut short")?;
                    c.maps.insert(name, pinning == PIN_BY_NAME);
                }
                (SymbolKind::Data, ".rodata") => {
                    c.globals.insert(name);
                }
                _ => {}
            }
        }
        Ok(c)
    }

    /// The section aya derives a program's type and attach point from, for a hook.
    fn section_matches(hook: Hook, section: &str) -> bool {
        match hook {
            Hook::SockAddr => [
                "connect4",
                "connect6",
                "sendmsg4",
                "sendmsg6",
                "connect_unix",
                "sendmsg_unix",
            ]
            .iter()
            .any(|a| section == format!("cgroup/{a}")),
            Hook::TpBtf(f) => section == format!("tp_btf/{f}"),
            Hook::Lsm(h) => section == format!("lsm/{h}") || section == format!("lsm.s/{h}"),
            Hook::TracePoint(c, n) => section == format!("tracepoint/{c}/{n}"),
        }
    }

    #[test]
    fn the_object_declares_the_maps_agentguard_common_names() -> TestResult {
        let c = contents()?;
        let pinned: BTreeSet<&str> = c
            .maps
            .iter()
            .filter(|(_, pinned)| **pinned)
            .map(|(name, _)| name.as_str())
            .collect();
        // The pinned maps are exactly the shared ones; maps private to the programs (scratch
        // space, per-socket memory) are not pinned and need no name in agentguard-common.
        assert_eq!(
            pinned,
            COMMON_MAPS.iter().copied().collect::<BTreeSet<&str>>(),
            "pinned maps in the object"
        );
        for name in COMMON_MAPS {
            assert!(
                name.len() < 16,
                "map name {name} is longer than the kernel keeps"
            );
        }
        assert!(
            c.globals.contains(offsets::GLOBAL_NAME)
                && c.globals.contains(offsets::FILE_F_PATH_GLOBAL),
            "read-only globals in the object: {:?}",
            c.globals
        );
        Ok(())
    }

    #[test]
    fn the_object_has_exactly_the_programs_programs_rs_lists() -> TestResult {
        let c = contents()?;
        let listed: BTreeSet<&str> = SPECS.iter().flat_map(|s| s.variants()).collect();
        let built: BTreeSet<&str> = c.programs.keys().map(String::as_str).collect();
        assert_eq!(built, listed, "programs in the object vs programs.rs");
        for spec in SPECS {
            for name in spec.variants() {
                let section = &c.programs[name];
                assert!(
                    section_matches(spec.hook, section),
                    "{name} is in section {section}, programs.rs says {:?}",
                    spec.hook
                );
            }
        }
        Ok(())
    }

    #[test]
    fn every_pinned_map_has_a_layout_and_ring_buffers_have_no_size_in_it() -> TestResult {
        let layouts = super::EbpfObject::embedded().layouts()?;
        let names: BTreeSet<&str> = layouts.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            COMMON_MAPS.iter().copied().collect::<BTreeSet<&str>>()
        );
        for name in [maps::EVENTS, maps::ALERTS] {
            assert_eq!(layouts[name].max_entries, None, "{name}");
        }
        assert!(layouts[maps::CGROUPS].max_entries.is_some());
        let state = super::EbpfObject::embedded().state_version()?;
        assert!(
            state.starts_with(&format!("v{}-", agentguard_common::ABI_VERSION)),
            "{state}"
        );
        Ok(())
    }

    #[test]
    fn an_object_file_others_can_write_is_refused() -> TestResult {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("object");
        std::fs::write(&path, OBJECT)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        assert!(matches!(
            super::EbpfObject::from_trusted_file(&path),
            Err(super::ObjectError::Untrusted { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        assert!(matches!(
            super::EbpfObject::from_trusted_file(&path),
            Err(super::ObjectError::Untrusted { .. })
        ));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let r = super::EbpfObject::from_trusted_file(&path);
        if nix::unistd::geteuid().is_root() {
            let object = r?;
            assert_eq!(object.build(), super::EbpfObject::embedded().build());
        } else {
            assert!(matches!(r, Err(super::ObjectError::Untrusted { .. })));
        }
        Ok(())
    }
}
