//! Harness for agentguard's privileged integration tests.
//!
//! Every test loads the real programs through a real `agentguard daemon`, runs real processes
//! with `agentguard run`, and watches the kernel refuse them. Tests share global kernel state
//! (the bpffs pins and the agentguard cgroup), so they run one at a time (`--test-threads=1`)
//! and each starts from `agentguard teardown --force`.
//!
//! With `CI=true` a test that cannot run here (not root, no cgroup2, no BPF) fails instead of
//! skipping.

pub mod daemon;
pub mod net;
pub mod system_files;

use std::{
    path::PathBuf,
    process::{Command, Output},
};

pub use daemon::Daemon;

/// The `agentguard` binary under test.
pub fn agentguard_bin() -> PathBuf {
    std::env::var_os("AGENTGUARD_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/agentguard"),
        PathBuf::from,
    )
}

/// Which backend the environment expects (`fallback` on the CI host, `lsm` in the VM).
pub fn expected_backend() -> Option<String> {
    std::env::var("AGENTGUARD_EXPECT_BACKEND")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Whether a privileged test can run here. Prints why not; under `CI=true` panics instead, so
/// a kernel test can never pass by not running.
pub fn privileged(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not root".to_owned())
    } else if !agentguard_bin().exists() {
        Some(format!("{} not built", agentguard_bin().display()))
    } else if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("no kernel BTF".to_owned())
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("{test}: privileged test cannot run ({why}) and CI=true forbids skipping")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// Runs `agentguard ARGS...`.
pub fn agentguard(args: &[&str]) -> Output {
    Command::new(agentguard_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agentguard_bin().display()))
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `<cgroup2 mount>/agentguard`, from mountinfo.
pub fn cgroup_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mount = mounts
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4))
        .unwrap_or("/sys/fs/cgroup");
    PathBuf::from(mount).join("agentguard")
}
