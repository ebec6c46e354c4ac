//! `cargo xtask lint`: formatting, clippy for every crate (the eBPF crate on its own target),
//! the docs of the host crates with warnings denied (a stale intra-doc link fails the build), then
//! a bounded run of the control protocol fuzz target (`fuzz/`, cargo-fuzz on nightly).

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{build_ebpf, cmd, workspace};

/// How long the lint stage fuzzes the control protocol decoder by default.
const FUZZ_SECONDS: u64 = 60;

/// The fuzz target that decodes what clients and servers send over the control sockets.
const FUZZ_TARGET: &str = "control_decode";

#[derive(clap::Args)]
pub struct Args {
    /// Seconds to fuzz the control protocol decoder (0: build the fuzz target, run nothing).
    #[arg(long, value_name = "SECS", default_value_t = FUZZ_SECONDS)]
    fuzz_seconds: u64,
}

pub fn run(args: &Args) -> Result<()> {
    check_with(args.fuzz_seconds)
}

/// What the lint stage of `cargo xtask test` runs.
pub fn check() -> Result<()> {
    check_with(FUZZ_SECONDS)
}

fn check_with(fuzz_seconds: u64) -> Result<()> {
    cmd::step("cargo fmt --check", || {
        cmd::run(
            cmd::cargo()
                .current_dir(workspace::root())
                .args(["fmt", "--all", "--check"]),
        )
    })?;
    cmd::step("cargo fmt --check (fuzz targets)", || {
        cmd::run(
            cmd::cargo()
                .current_dir(fuzz_dir())
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
    })?;
    cmd::step(
        &format!("cargo fuzz run {FUZZ_TARGET} for {fuzz_seconds}s"),
        || fuzz(fuzz_seconds),
    )
}

fn fuzz_dir() -> PathBuf {
    workspace::root().join("fuzz")
}

/// Runs the fuzz target for `seconds` on nightly; a crash fails the step and leaves the input in
/// `fuzz/artifacts/`. The corpus in `fuzz/corpus/` grows from run to run (and from the seeds).
fn fuzz(seconds: u64) -> Result<()> {
    let bin_dir = ensure_cargo_fuzz()?;
    let mut run = cmd::cargo();
    run.current_dir(fuzz_dir())
        .env("PATH", cmd::path_with(&bin_dir)?)
        .args(["+nightly", "fuzz", "run", FUZZ_TARGET])
        .arg(format!("corpus/{FUZZ_TARGET}"))
        .arg(format!("seeds/{FUZZ_TARGET}"));
    if seconds == 0 {
        run.args(["--", "-runs=0"]);
    } else {
        run.arg("--").arg(format!("-max_total_time={seconds}"));
    }
    std::fs::create_dir_all(fuzz_dir().join("corpus").join(FUZZ_TARGET))
        .context("cannot create the fuzz corpus directory")?;
    cmd::run(&mut run)
}

/// Makes sure `cargo fuzz` runs (installing cargo-fuzz from crates.io when it does not) and
/// returns the directory that holds it.
fn ensure_cargo_fuzz() -> Result<PathBuf> {
    let bin_dir = cmd::cargo_bin_dir()
        .context("cannot tell where cargo installs binaries: set CARGO_HOME or HOME")?;
    let works = |dir: &PathBuf| -> bool {
        cmd::path_with(dir).is_ok_and(|path| {
            cmd::output(
                cmd::cargo()
                    .env("PATH", path)
                    .args(["+nightly", "fuzz", "--version"]),
            )
            .is_ok()
        })
    };
    if works(&bin_dir) {
        return Ok(bin_dir);
    }
    cmd::step("cargo install cargo-fuzz", || {
        cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))
    })?;
    if !works(&bin_dir) {
        anyhow::bail!(
            "cargo-fuzz was installed but `cargo +nightly fuzz --version` still fails (is {} writable?)",
            bin_dir.display()
        );
    }
    Ok(bin_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_target_exists() {
        let target = fuzz_dir()
            .join("fuzz_targets")
            .join(format!("{FUZZ_TARGET}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
    }
}
