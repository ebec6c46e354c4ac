//! `cargo xtask lint`: formatting, clippy for every crate (the eBPF crate on its own target) and
//! the docs of the host crates with warnings denied, so a stale intra-doc link fails the build.

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
    cmd::step("cargo clippy (eBPF target)", build_ebpf::clippy)?;
    // The eBPF crate's items only exist when built for the BPF target; on the host it is an
    // empty binary, so its docs would check nothing.
    cmd::step("cargo doc (workspace, -D warnings)", || {
        cmd::run(
            cmd::cargo()
                .current_dir(workspace::root())
                .env("RUSTDOCFLAGS", "-D warnings")
                .args([
                    "doc",
                    "--workspace",
                    "--exclude",
                    "agentguard-ebpf",
                    "--no-deps",
                ]),
        )
    })
}
