//! A private `agentguard daemon` for one test, torn down (programs, pins, cgroups) on drop.

use std::{
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{agentguard, agentguard_bin, describe, expected_backend, patience};

/// How long a daemon may take to come up on a native host, with a wide margin (scaled by
/// [`patience`] where the environment is slower, e.g. the emulated guest).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a log record may take to appear after the action that caused it, natively.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// A running daemon with its own policy, state directory and socket.
pub struct Daemon {
    child: Option<Child>,
    /// Temporary directory holding policy, state and socket.
    pub dir: TempDir,
    /// Control socket.
    pub socket: PathBuf,
    /// Policy file.
    pub policy: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// Backends the daemon reported.
    pub backends: String,
    /// Extra `agentguard daemon` arguments, kept for restarts.
    extra_args: Vec<String>,
    /// Extra environment of the daemon, kept for restarts.
    extra_env: Vec<(String, String)>,
    /// Where the daemon says it is ready (`NOTIFY_SOCKET`, as to a service manager): waiting
    /// there costs nothing, where asking `agentguard status` over and over starts a process
    /// each time, which under emulation took much of the CPU the daemon was starting with.
    notify: UnixDatagram,
}

/// The socket in a test daemon's directory where it says it is ready.
fn notify_socket(dir: &Path) -> PathBuf {
    dir.join("notify.sock")
}

/// Removes everything agentguard left in the kernel.
pub fn teardown() {
    let out = agentguard(&[
        "teardown",
        "--force",
        "--socket",
        "/nonexistent/agentguard-test.sock",
    ]);
    // While a failed test unwinds, a second panic here would abort the whole run.
    if !thread::panicking() {
        assert!(out.status.success(), "teardown failed: {}", describe(&out));
    } else if !out.status.success() {
        eprintln!(
            "teardown after a failed test also failed: {}",
            describe(&out)
        );
    }
}

impl Daemon {
    /// Tears down leftovers, writes `policy`, starts the daemon and waits until it answers.
    pub fn start(policy: &str) -> Self {
        Self::start_with(policy, &[])
    }

    /// [`Daemon::start`] with extra `agentguard daemon` arguments.
    pub fn start_with(policy: &str, args: &[&str]) -> Self {
        Self::start_prepared(policy, args, |_| {})
    }

    /// [`Daemon::start_with`] on a sealed log: runs `agentguard log init` first and returns the
    /// sealing key with the daemon.
    pub fn start_sealed(policy: &str, args: &[&str]) -> (Self, String) {
        let mut key = String::new();
        let d = Self::start_prepared(policy, args, |state| {
            let out = agentguard(&["log", "init", "--state-dir", &state.to_string_lossy()]);
            assert!(out.status.success(), "log init: {}", describe(&out));
            key = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
                .unwrap_or_else(|| panic!("no key in {}", describe(&out)))
                .to_owned();
        });
        (d, key)
    }

    /// Starts a daemon after `prepare` ran on its (not yet existing) state directory.
    pub fn start_prepared(policy: &str, args: &[&str], prepare: impl FnOnce(&Path)) -> Self {
        let mut d = Self::prepare(policy, args, &[]);
        prepare(&d.state);
        d.spawn();
        d
    }

    /// Starts a daemon with extra environment variables and returns at once, without waiting
    /// for it to answer: for tests of how the daemon itself tells that it is ready.
    pub fn start_unready(policy: &str, env: &[(&str, &str)]) -> Self {
        let mut d = Self::prepare(policy, &[], env);
        d.spawn_process();
        d
    }

    /// Tears down leftovers and writes the policy.
    fn prepare(policy: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        teardown();
        let dir = tempfile::Builder::new()
            .prefix("agentguard-test")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let policy_path = dir.path().join("policy.toml");
        fs::write(&policy_path, policy).unwrap_or_else(|e| panic!("write policy: {e}"));
        let notify = UnixDatagram::bind(notify_socket(dir.path()))
            .unwrap_or_else(|e| panic!("readiness socket: {e}"));
        notify
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap_or_else(|e| panic!("readiness socket: {e}"));
        Self {
            notify,
            child: None,
            socket: dir.path().join("agentguard.sock"),
            state: dir.path().join("state"),
            policy: policy_path,
            dir,
            backends: String::new(),
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            extra_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// The daemon's own output so far.
    pub fn output(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready();
    }

    fn spawn_process(&mut self) {
        self.drain_notifications();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("daemon log: {e}"));
        let child = Command::new(agentguard_bin())
            .arg("daemon")
            .arg("--policy")
            .arg(&self.policy)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--agent-socket")
            .arg(self.agent_socket())
            .args(&self.extra_args)
            .env("NOTIFY_SOCKET", notify_socket(self.dir.path()))
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the daemon: {e}"));
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        self.wait_ready_while(|| {});
    }

    /// Drops what an earlier daemon said, so that only the next one's READY=1 counts.
    fn drain_notifications(&self) {
        let mut buf = [0u8; 4096];
        if self.notify.set_nonblocking(true).is_ok() {
            while self.notify.recv(&mut buf).is_ok() {}
        }
        self.notify
            .set_nonblocking(false)
            .unwrap_or_else(|e| panic!("readiness socket: {e}"));
    }

    /// Waits for the daemon to say it is ready, then asks it for its backends; calls `each`
    /// before every check (so at least once).
    fn wait_ready_while(&mut self, mut each: impl FnMut()) {
        let start = Instant::now();
        let timeout = patience(READY_TIMEOUT);
        let mut buf = [0u8; 4096];
        loop {
            each();
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "daemon exited with {status} during start-up:\n{}",
                    self.output()
                );
            }
            // A timed-out receive is the pause between checks.
            if let Ok(n) = self.notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                break;
            }
            assert!(
                start.elapsed() < timeout,
                "daemon not ready after {timeout:?}:\n{}",
                self.output()
            );
        }
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "the daemon said it was ready but does not answer: {}\n{}",
            describe(&out),
            self.output()
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        self.backends = v["backends"].as_str().unwrap_or_default().to_owned();
        self.check_backend();
    }

    /// Fails the test when the daemon chose another backend than the environment expects.
    fn check_backend(&self) {
        eprintln!("agentguard backends: {}", self.backends);
        match expected_backend().as_deref() {
            Some("lsm") => assert!(
                self.backends.contains("exec=bpf-lsm"),
                "expected the BPF LSM backend, daemon reports {}",
                self.backends
            ),
            Some("fallback") => assert!(
                self.backends.contains("exec=tp-btf"),
                "expected the fallback backend, daemon reports {}",
                self.backends
            ),
            _ => {}
        }
    }

    /// The daemon's exit status, if it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The agent-facing socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Whether the BPF LSM backend enforces.
    pub fn lsm(&self) -> bool {
        self.backends.contains("exec=bpf-lsm")
    }

    /// `agentguard ARGS... --socket SOCKET`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(agentguard_bin())
            .args(args)
            .env("AGENTGUARD_SOCKET", &self.socket)
            .env("AGENTGUARD_AGENT_SOCKET", self.agent_socket())
            .output()
            .unwrap_or_else(|e| panic!("cannot run agentguard: {e}"))
    }

    /// `agentguard secret set NAME` with `value` on standard input; panics if it fails.
    pub fn set_secret(&self, name: &str, value: &str) {
        use std::io::Write as _;
        let mut child = Command::new(agentguard_bin())
            .args(["secret", "set", name])
            .env("AGENTGUARD_SOCKET", &self.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run agentguard: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{value}");
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("cannot run agentguard: {e}"));
        assert!(out.status.success(), "secret set: {}", describe(&out));
    }

    /// `agentguard run --agent AGENT -- CMD...`.
    pub fn run(&self, agent: &str, cmd: &[&str]) -> Output {
        self.run_command(agent, cmd)
            .output()
            .unwrap_or_else(|e| panic!("cannot run agentguard: {e}"))
    }

    /// `agentguard run --agent AGENT -- CMD...` as a command to spawn (the caller picks stdio).
    pub fn run_command(&self, agent: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new(agentguard_bin());
        c.args(["run", "--agent", agent, "--"])
            .args(cmd)
            .env("AGENTGUARD_SOCKET", &self.socket)
            .env("AGENTGUARD_AGENT_SOCKET", self.agent_socket());
        c
    }

    /// The probe agent run as `agent` with `args`: its output line, or everything about the run
    /// when it printed nothing.
    pub fn probe(&self, agent: &str, args: &[&str]) -> String {
        let probe = crate::probe_bin();
        let mut cmd = vec![probe.to_str().unwrap_or_default()];
        cmd.extend_from_slice(args);
        let out = self.run(agent, &cmd);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if text.is_empty() {
            describe(&out)
        } else {
            text
        }
    }

    /// `kill -9` the daemon (enforcement must stay).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again with the same policy, state and socket.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Stops the daemon (SIGTERM) and starts it with `args` in place of its extra arguments
    /// (e.g. another eBPF build): `between` runs once the old daemon is gone and then again
    /// before every readiness check, until the new daemon answers.
    pub fn replace_with(&mut self, args: &[&str], mut between: impl FnMut()) {
        self.stop();
        between();
        self.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
        self.spawn_process();
        self.wait_ready_while(between);
    }

    /// Stops the daemon with SIGTERM (enforcement stays unless it was told to unload).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = child.wait();
        }
    }

    /// How many running instances `status` reports for the policy's first agent.
    pub fn first_agent_instances(&self) -> usize {
        let status = self.cli(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        v["agents"][0]["instances"].as_array().map_or(0, Vec::len)
    }

    /// The log records as `agentguard log show --json` prints them, in order.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.records_with(&[])
    }

    /// The records `agentguard log show` selects with `filters` (e.g. `--from-seq N`,
    /// `--kind lost-events`), as JSON values.
    pub fn records_with(&self, filters: &[&str]) -> Vec<serde_json::Value> {
        let state = self.state.to_string_lossy().into_owned();
        let mut args = vec!["log", "show", "--json", "--state-dir", &state];
        args.extend_from_slice(filters);
        let out = agentguard(&args);
        assert!(
            out.status.success(),
            "agentguard log show failed: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a log record satisfies `pred`, returning it.
    pub fn wait_record(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        let timeout = patience(RECORD_TIMEOUT);
        loop {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return r;
            }
            if start.elapsed() > timeout {
                let state = self.state.to_string_lossy().into_owned();
                let raw = agentguard(&["log", "show", "--state-dir", &state]);
                panic!(
                    "no log record {what} within {timeout:?}; log:\n{}\ndaemon:\n{}",
                    describe(&raw),
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the whole log satisfies `pred`, returning its records.
    pub fn wait_records(
        &self,
        what: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let start = Instant::now();
        let timeout = patience(RECORD_TIMEOUT);
        loop {
            let records = self.records();
            if pred(&records) {
                return records;
            }
            assert!(
                start.elapsed() <= timeout,
                "log never held {what} within {timeout:?}; daemon:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        teardown();
    }
}
