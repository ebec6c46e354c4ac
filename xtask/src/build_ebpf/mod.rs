//! `cargo xtask build-ebpf`: bootstrap the toolchain pieces, build the eBPF object, check it.

mod elf;
mod linker;
mod toolchain;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{cmd, workspace};

#[derive(clap::Args)]
pub struct Args {
    /// Build with the dev profile (object under .../debug/; point AGENTGUARD_EBPF_OBJ at it).
    #[arg(long)]
    debug: bool,
    /// Install bpf-linker into DIR/bin (cargo install --root) and use it from there, instead of
    /// using the one in PATH or installing into cargo's default root.
    #[arg(long, value_name = "DIR")]
    bpf_linker_root: Option<PathBuf>,
    /// Also build the variant object the upgrade test loads as "the next build" (same source,
    /// other codegen metadata: another digest, the same maps).
    #[arg(long)]
    variant: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let object = build(!args.debug, args.bpf_linker_root.as_deref())?;
    println!("eBPF object: {}", object.display());
    if args.variant {
        println!("variant: {}", build_variant()?.display());
    }
    if args.debug {
        println!(
            "(the userspace build reads it with AGENTGUARD_EBPF_OBJ={})",
            object.display()
        );
    }
    Ok(())
}

/// The release build `cargo xtask test` and `vm-test` rely on; returns the object's path
/// ([`workspace::ebpf_object`]).
pub fn build_release() -> Result<PathBuf> {
    build(true, None)
}

/// The variant object: the release build with a different `-C metadata`, which changes the
/// hashes in symbol names and so the object's digest, not its programs' logic or its maps.
pub fn build_variant() -> Result<PathBuf> {
    toolchain::ensure_rust_src()?;
    let linker = linker::ensure(None)?;
    let object = workspace::ebpf_variant_object();
    cmd::step(
        "cargo +nightly build agentguard-ebpf (upgrade variant)",
        || {
            let mut build = nightly_cargo(
                "build",
                &linker,
                &workspace::target_dir().join("ebpf-variant"),
            )?;
            build.arg("--release").env(
                "CARGO_ENCODED_RUSTFLAGS",
                format!("{RUSTFLAGS}\x1f-Cmetadata=agentguard-upgrade-variant"),
            );
            cmd::run(&mut build)
        },
    )?;
    elf::verify_btf(&object)?;
    Ok(object)
}

/// Flags every eBPF build uses: BTF for the loader (debuginfo is what bpf-linker makes it from),
/// and small `memset`s written out as stores. bpf-linker passes `-bpf-expand-memcpy-in-order`
/// to LLVM by default, which turns off the inline expansion of every memory intrinsic but
/// `memcpy`: each zeroed key, padding or default value became a call to a byte-at-a-time
/// `memset` subprogram (180 of them, three on every UDP send's path).
const RUSTFLAGS: &str =
    "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Clink-arg=--disable-expand-memcpy-in-order";

fn build(release: bool, linker_root: Option<&Path>) -> Result<PathBuf> {
    toolchain::ensure_rust_src()?;
    let linker = linker::ensure(linker_root)?;
    let (profile, object) = if release {
        ("release", workspace::ebpf_object())
    } else {
        let debug = workspace::ebpf_target_dir().join("bpfel-unknown-none/debug/agentguard-ebpf");
        ("debug", debug)
    };
    cmd::step(
        &format!("cargo +nightly build agentguard-ebpf ({profile})"),
        || compile(release, &linker),
    )?;
    elf::verify_btf(&object)?;
    Ok(object)
}

fn compile(release: bool, linker: &Path) -> Result<()> {
    let mut build = nightly_cargo("build", linker, &workspace::ebpf_target_dir())?;
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build)
}

/// Clippy for the eBPF crate, for its real target (a host `cargo clippy` sees no program code).
pub fn clippy() -> Result<()> {
    toolchain::ensure_rust_src()?;
    let linker = linker::ensure(None)?;
    let mut c = nightly_cargo("clippy", &linker, &workspace::ebpf_target_dir())?;
    c.args(["--release", "--", "-D", "warnings"]);
    cmd::run(&mut c)
}

/// `cargo +nightly SUBCOMMAND` for the eBPF crate and target, with bpf-linker in PATH.
fn nightly_cargo(
    subcommand: &str,
    linker: &Path,
    target_dir: &Path,
) -> Result<std::process::Command> {
    let mut build = cmd::cargo();
    build
        .current_dir(workspace::root())
        .arg(format!("+{}", toolchain::NIGHTLY))
        .args([
            subcommand,
            "--package",
            "agentguard-ebpf",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS);
    // rustc finds bpf-linker through PATH.
    if let Some(dir) = linker.parent() {
        build.env("PATH", cmd::path_with(dir)?);
    }
    Ok(build)
}
