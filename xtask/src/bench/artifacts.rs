//! What a benchmark runs, built in release mode: timings of a debug daemon or load generator
//! would measure the compiler's debug code, not agentguard.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::{build_ebpf, cmd, workspace};

/// Paths of the release binaries.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// `target/release/agentguard` (daemon and CLI).
    pub agentguard: PathBuf,
    /// `target/release/agentguard-bench` (the load generator).
    pub generator: PathBuf,
    /// `target/release/examples/audit_throughput` (the log writer on synthetic records).
    pub audit_throughput: PathBuf,
}

impl Artifacts {
    /// Where the binaries are when already built (the VM guest, which cannot build).
    pub fn prebuilt() -> Self {
        let release = workspace::target_dir().join("release");
        Self {
            agentguard: release.join("agentguard"),
            generator: release.join("agentguard-bench"),
            audit_throughput: release.join("examples").join("audit_throughput"),
        }
    }

    /// Builds the eBPF object and every binary of the benchmark.
    pub fn build() -> Result<Self> {
        build_ebpf::build_release()?;
        let cargo_release = |what: &str, args: &[&str]| {
            cmd::step(&format!("cargo build --release {what}"), || {
                cmd::run(
                    cmd::cargo()
                        .current_dir(workspace::root())
                        .args(["build", "--release"])
                        .args(args),
                )
            })
        };
        cargo_release(
            "--package agentguard-userspace --bins --example audit_throughput",
            &[
                "--package",
                "agentguard-userspace",
                "--bins",
                "--example",
                "audit_throughput",
            ],
        )?;
        cargo_release(
            "--package agentguard-tests --bin agentguard-bench",
            &["--package", "agentguard-tests", "--bin", "agentguard-bench"],
        )?;
        let built = Self::prebuilt();
        built.check()?;
        Ok(built)
    }

    /// Fails naming the first binary that does not exist.
    pub fn check(&self) -> Result<()> {
        for path in [&self.agentguard, &self.generator, &self.audit_throughput] {
            if !path.is_file() {
                bail!(
                    "{} does not exist; run `cargo xtask bench` on the host first",
                    path.display()
                );
            }
        }
        Ok(())
    }
}
