//! The eBPF object, embedded at build time (see build.rs and `cargo xtask build-ebpf`).

/// The object's bytes, 8-byte aligned as the ELF parser wants.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AGENTGUARD_EBPF_OBJ"));

/// The version pinned state lives under: the ABI version and a digest of the object, so a
/// daemon never adopts programs or maps built from different code.
pub fn version() -> String {
    let digest = blake3::hash(OBJECT);
    format!(
        "v{}-{}",
        agentguard_common::ABI_VERSION,
        &digest.to_hex()[..12]
    )
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
            Hook::SockAddr => ["connect4", "connect6", "sendmsg4", "sendmsg6"]
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
}
