//! `cargo xtask`: agentguard's build and test automation.
//!
//! One module per subcommand; shared helpers for running commands ([`cmd`]), workspace paths
//! ([`workspace`]) and building the integration-test executables ([`integration`]). To add a
//! subcommand: add a module with an `Args` struct and a `run(&Args)` function, then a variant to
//! [`Command`] and a line to [`main`].

mod bench;
mod build_ebpf;
mod cmd;
mod demo;
mod integration;
mod lint;
mod manifests;
mod package;
mod test;
mod vm_test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    bin_name = "cargo xtask",
    about = "agentguard build and test automation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (bootstraps rust-src and bpf-linker when missing).
    BuildEbpf(build_ebpf::Args),
    /// Run the privileged integration tests in Debian 6.12 and 6.1 QEMU guests with BPF LSM.
    VmTest(vm_test::Args),
    /// Build everything and run the daemon with the bundled example policy and a sample agent.
    Demo(demo::Args),
    /// cargo fmt --check and clippy -D warnings, including the eBPF crate on its target.
    Lint(lint::Args),
    /// What CI runs: build-ebpf, build, unit tests, host integration tests, vm-test (6.12, 6.1).
    Test(test::Args),
    /// Build the Debian package (target/package/agentguard_VERSION_ARCH.deb).
    Package(package::Args),
    /// Measure overhead and throughput against a baseline of the same run (root; release builds).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::BuildEbpf(args) => build_ebpf::run(&args),
        Command::VmTest(args) => vm_test::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Lint(args) => lint::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Package(args) => package::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain without anyhow's RUST_BACKTRACE dump.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
