//! `cargo xtask lint`: formatting and clippy for every crate, the eBPF crate on its own target.

use anyhow::Result;

use crate::{build_ebpf, cmd, workspace};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: &Args) -> Result<()> {
    check()
}

/// What the lint stage of `cargo xtask test` runs.
pub fn check() -> Result<()> {
    cmd::step("cargo fmt --check", || {
        cmd::run(
            cmd::cargo()
                .current_dir(workspace::root())
                .args(["fmt", "--all", "--check"]),
        )
    })?;
    cmd::step("cargo clippy (workspace)", || {
        cmd::run(cmd::cargo().current_dir(workspace::root()).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    cmd::step("cargo clippy (eBPF target)", build_ebpf::clippy)
}
