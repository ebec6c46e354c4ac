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
