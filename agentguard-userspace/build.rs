//! Embeds the eBPF object built by `cargo xtask build-ebpf`, or stops the build with a one-line
//! hint when it is missing.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=AGENTGUARD_EBPF_OBJ");
    let path = env::var_os("AGENTGUARD_EBPF_OBJ").map_or_else(
        || {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest.join("../target/ebpf/bpfel-unknown-none/release/agentguard-ebpf")
        },
        PathBuf::from,
    );
    println!("cargo::rerun-if-changed={}", path.display());
    if !path.is_file() {
        println!(
            "cargo::error=the eBPF object {} is missing: run `cargo xtask build-ebpf` first",
            path.display()
        );
        return;
    }
    println!("cargo::rustc-env=AGENTGUARD_EBPF_OBJ={}", path.display());
}
