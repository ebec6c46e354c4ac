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
pub mod scratch;
pub mod system_files;

use std::{
    ops::{Deref, DerefMut},
    path::PathBuf,
    process::{Child, Command, Output},
    time::Duration,
};

pub use daemon::Daemon;
pub use scratch::{ScratchTree, open_to_agents, open_tree_to_agents};

/// `agentguard-probe sleep` seconds for an agent that must outlive every step of its test, however
/// slow the machine (an emulated guest can take minutes): the test's [`Daemon`] kills it when
/// the test ends (teardown), so no test depends on how long its steps take.
pub const UNTIL_TEARDOWN: &str = "86400";

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
        private_ancestor(&probe_bin()).map(|private| format!(
            "{} is not reachable by unprivileged users ({} lacks o+x), and agents run as dynamic uids: run the suite from a world-searchable directory (.ci/run does this by itself)",
            probe_bin().display(),
            private.display()
        ))
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

/// The first directory on the way to `path` that other users cannot search, if any.
fn private_ancestor(path: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    path.ancestors()
        .skip(1)
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(PathBuf::from)
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

/// The `agentguard-probe` helper agent, next to the test executables' directory (where cargo
/// puts this package's binaries).
pub fn probe_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let deps = exe.parent().unwrap_or(std::path::Path::new("."));
    deps.parent().unwrap_or(deps).join("agentguard-probe")
}

/// Fails unless a probe result is EPERM.
pub fn assert_eperm(result: &str, what: &str) {
    assert!(
        result.starts_with("errno=1 "),
        "{what}: expected EPERM, got {result:?}"
    );
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

/// How much slower than a native host this environment runs: `AGENTGUARD_TEST_SLOWDOWN`
/// (the VM runner sets it for the emulated guest), 1 when unset.
pub fn slowdown() -> u32 {
    std::env::var("AGENTGUARD_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// `base` (what a native host needs with a wide margin) scaled by [`slowdown`]: every deadline
/// in the tests comes from here, so none assumes the machine's speed.
pub fn patience(base: Duration) -> Duration {
    base * slowdown()
}

/// A spawned child that is killed and reaped when it goes out of scope, so a failing test
/// leaves no agent running into the next one.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}")),
        ))
    }

    /// Waits for the child to exit, collecting its remaining output.
    pub fn wait_with_output(mut self) -> Output {
        self.0
            .take()
            .unwrap_or_else(|| panic!("child already taken"))
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait: {e}"))
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.0
            .as_ref()
            .unwrap_or_else(|| panic!("child already taken"))
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .unwrap_or_else(|| panic!("child already taken"))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` in `cgroup` (moved there by a shell before it execs), as a process the daemon did
/// not start: what any process in an agent's cgroup can do, with or without a daemon.
pub fn run_in_cgroup(cgroup: &std::path::Path, cmd: &[&str]) -> Output {
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
        cgroup.display()
    );
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What `agentguard-probe tcp 127.0.0.1 PORT` prints (`ok`, `errno=N ...`) when a process the
/// daemon did not start runs it in `cgroup`; a probe that printed nothing fails the test.
pub fn tcp_from_cgroup(cgroup: &std::path::Path, port: u16) -> String {
    let probe = probe_bin();
    let out = run_in_cgroup(
        cgroup,
        &[
            &probe.to_string_lossy(),
            "tcp",
            "127.0.0.1",
            &port.to_string(),
        ],
    );
    let said = stdout(&out).trim().to_owned();
    assert!(
        !said.is_empty(),
        "the probe said nothing: {}",
        describe(&out)
    );
    said
}

/// The cgroup of `agent`'s first instance (`<cgroup root>/<agent>/<n>`).
pub fn instance_cgroup(agent: &str) -> PathBuf {
    std::fs::read_dir(cgroup_root().join(agent))
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .unwrap_or_else(|| panic!("no instance cgroup of {agent}"))
}
