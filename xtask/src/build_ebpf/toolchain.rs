//! Facts about, and components of, the nightly toolchain that builds the eBPF crate.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The toolchain that builds the eBPF crate (`-Z build-std` needs nightly).
pub const NIGHTLY: &str = "nightly";

/// Installs `rust-src` for the nightly toolchain unless it is already there.
pub fn ensure_rust_src() -> Result<()> {
    let installed = cmd::stdout(cmd::rust_tool("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    if installed.lines().any(|line| line.trim() == "rust-src") {
        eprintln!("    rust-src for {NIGHTLY}: installed");
        return Ok(());
    }
    cmd::step(
        &format!("rustup component add rust-src --toolchain {NIGHTLY}"),
        || {
            cmd::run(cmd::rust_tool("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                NIGHTLY,
            ]))
        },
    )
}

/// The nightly toolchain's sysroot (`rustc +nightly --print sysroot`).
pub fn sysroot() -> Result<PathBuf> {
    let out =
        cmd::stdout(cmd::rust_tool("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    Ok(PathBuf::from(out.trim()))
}

/// The LLVM major version nightly rustc was built with (`LLVM version: 22.1.4` -> 22).
pub fn llvm_major() -> Result<u32> {
    let out = cmd::stdout(cmd::rust_tool("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    parse_llvm_major(&out)
}

fn parse_llvm_major(rustc_vv: &str) -> Result<u32> {
    let Some(version) = rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
    else {
        bail!("`rustc +{NIGHTLY} -vV` printed no `LLVM version:` line:\n{rustc_vv}");
    };
    let major = version.trim().split('.').next().unwrap_or_default();
    major.parse().with_context(|| {
        format!(
            "cannot read the LLVM major version from `{}`",
            version.trim()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::parse_llvm_major;

    #[test]
    fn reads_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv).ok(), Some(22));
        assert!(parse_llvm_major("rustc 1.97.0\n").is_err());
    }
}
