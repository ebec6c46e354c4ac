//! Paths inside the workspace. Every child cargo runs with the default target dir
//! (`<root>/target`), so these paths are where the artifacts really are.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate's manifest directory).
pub fn root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// `<root>/target`.
pub fn target_dir() -> PathBuf {
    root().join("target")
}

/// The target dir of the eBPF build: `<root>/target/ebpf`.
pub fn ebpf_target_dir() -> PathBuf {
    target_dir().join("ebpf")
}

/// The eBPF object `build-ebpf` produces:
/// `<root>/target/ebpf/bpfel-unknown-none/release/agentguard-ebpf`.
/// agentguard-userspace's build.rs reads this path unless `AGENTGUARD_EBPF_OBJ` overrides it.
pub fn ebpf_object() -> PathBuf {
    object_in(&ebpf_target_dir())
}

/// A second build of the same eBPF source (`build-ebpf --variant`): another object digest,
/// the same maps, for the upgrade test (`tests/tests/upgrade.rs` reads it from this path).
pub fn ebpf_variant_object() -> PathBuf {
    object_in(&target_dir().join("ebpf-variant"))
}

fn object_in(dir: &Path) -> PathBuf {
    dir.join("bpfel-unknown-none")
        .join("release")
        .join("agentguard-ebpf")
}

/// The `agentguard` binary the tests and the demo run: `<root>/target/release/agentguard`.
pub fn agentguard_bin() -> PathBuf {
    target_dir().join("release").join("agentguard")
}

/// Where the VM harness keeps its cache and results: `<root>/target/vm`.
pub fn vm_dir() -> PathBuf {
    target_dir().join("vm")
}
