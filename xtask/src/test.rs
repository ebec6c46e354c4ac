//! `cargo xtask test`: what CI runs. Stages, in order: build-ebpf, build, lint, unit tests,
//! package (the .deb built and checked, a few seconds), privileged
//! host integration tests (fallback backend), VM integration tests (BPF LSM backend) in a 6.12
//! and a 6.1 guest side by side. A failed
//! build skips everything after it; a failed test stage does not stop the next one. Ends with a
//! summary table and fails if any stage failed.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::integration::TESTS_PACKAGE;
use crate::{build_ebpf, cmd, vm_test, workspace};

#[derive(clap::Args)]
pub struct Args {
    /// Skip the VM stage.
    #[arg(long)]
    no_vm: bool,
    /// Only build and run the unit tests (no privileged tests, no VM).
    #[arg(long)]
    unit_only: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Failed,
    Skipped,
}

/// How far a run goes: each stage belongs to the first scope that includes it.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Scope {
    Unit,
    Host,
    Vm,
}

struct Stage {
    name: &'static str,
    scope: Scope,
    /// A stage whose failure makes the later ones pointless.
    gate: bool,
    action: fn() -> Result<()>,
}

const STAGES: [Stage; 7] = [
    Stage {
        name: "build-ebpf",
        scope: Scope::Unit,
        gate: true,
        action: build_ebpf_stage,
    },
    Stage {
        name: "build",
        scope: Scope::Unit,
        gate: true,
        action: build_stage,
    },
    Stage {
        name: "lint",
        scope: Scope::Unit,
        gate: false,
        action: crate::lint::check,
    },
    Stage {
        name: "unit tests",
        scope: Scope::Unit,
        gate: false,
        action: unit_stage,
    },
    Stage {
        name: "package",
        scope: Scope::Unit,
        gate: false,
        action: crate::package::stage,
    },
    Stage {
        name: "host integration tests",
        scope: Scope::Host,
        gate: false,
        action: host_stage,
    },
    Stage {
        name: "vm-test 6.12 + 6.1",
        scope: Scope::Vm,
        gate: false,
        action: vm_stage,
    },
];

pub fn run(args: &Args) -> Result<()> {
    let scope = match (args.unit_only, args.no_vm) {
        (true, _) => Scope::Unit,
        (false, true) => Scope::Host,
        (false, false) => Scope::Vm,
    };
    let mut rows = Vec::new();
    let mut blocked = false;
    for stage in STAGES.iter().filter(|s| s.scope <= scope) {
        if blocked {
            rows.push((stage.name, Outcome::Skipped, Duration::ZERO));
            continue;
        }
        eprintln!("\n===== {} =====", stage.name);
        let start = Instant::now();
        let outcome = match (stage.action)() {
            Ok(()) => Outcome::Ok,
            Err(e) => {
                eprintln!("error: {} failed: {e:#}", stage.name);
                blocked = stage.gate;
                Outcome::Failed
            }
        };
        rows.push((stage.name, outcome, start.elapsed()));
    }
    print_summary(&rows);
    let failed: Vec<&str> = rows
        .iter()
        .filter(|(_, outcome, _)| *outcome == Outcome::Failed)
        .map(|(name, _, _)| *name)
        .collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

fn print_summary(rows: &[(&str, Outcome, Duration)]) {
    println!("\n{:<24} {:<8} {:>9}", "stage", "result", "time");
    for (name, outcome, took) in rows {
        let result = match outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
        };
        println!("{name:<24} {result:<8} {:>9}", cmd::seconds(*took));
    }
}

fn build_ebpf_stage() -> Result<()> {
    build_ebpf::build_release()?;
    // The upgrade test loads it as the next build.
    build_ebpf::build_variant().map(drop)
}

fn build_stage() -> Result<()> {
    cargo(
        &["build", "--workspace", "--exclude", "agentguard-ebpf"],
        &[],
    )?;
    // The binary the integration tests drive.
    crate::integration::build_agentguard().map(drop)
}

fn unit_stage() -> Result<()> {
    let args = [
        "test",
        "--workspace",
        "--exclude",
        TESTS_PACKAGE,
        "--exclude",
        "agentguard-ebpf",
    ];
    cargo(&args, &[])
}

fn host_stage() -> Result<()> {
    let bin = workspace::agentguard_bin();
    // Say which backend this host enforces with, before the tests assert it.
    println!("host backends (agentguard doctor):");
    let _ = cmd::run(std::process::Command::new(&bin).arg("doctor"));
    let bin = bin.to_string_lossy();
    let env = [
        ("AGENTGUARD_BIN", &*bin),
        ("AGENTGUARD_EXPECT_BACKEND", "fallback"),
    ];
    cargo(
        &[
            "test",
            "--no-fail-fast",
            "--package",
            TESTS_PACKAGE,
            "--",
            "--test-threads=1",
        ],
        &env,
    )
}

fn vm_stage() -> Result<()> {
    vm_test::run(&vm_test::Args::every_series())
}

/// Runs `cargo ARGS` in the workspace root with `env` added.
fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(workspace::root())
        .args(args)
        .envs(env.iter().copied());
    cmd::step(&cmd::describe(&cargo), || cmd::run(&mut cargo))
}
