//! The agentguard under test: its CLI, and a daemon of our own with its own state directory and
//! socket (the bpffs pins and the agentguard cgroup are global, shared with any other user of
//! this kernel).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::artifacts::Artifacts;
use crate::cmd;

/// How long the daemon may take to answer after start (the VM runs under software emulation).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Paths of one benchmark run and the CLI bound to them.
#[derive(Clone, Debug)]
pub struct Env {
    pub art: Artifacts,
    /// Policies, the daemon's state and socket, files the generator opens.
    pub work: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
}

impl Env {
    /// A fresh `work` directory.
    pub fn new(art: Artifacts, work: PathBuf) -> Result<Self> {
        if work.exists() {
            fs::remove_dir_all(&work)
                .with_context(|| format!("cannot remove {}", work.display()))?;
        }
        fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
        Ok(Self {
            art,
            socket: work.join("agentguard.sock"),
            state: work.join("state"),
            work,
        })
    }

    /// `agentguard ARGS...` talking to our daemon.
    pub fn ag(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.art.agentguard);
        c.args(args).env("AGENTGUARD_SOCKET", &self.socket);
        c
    }

    /// `agentguard run --agent AGENT -- CMD...`.
    pub fn run_as(&self, agent: &str, cmd: &[&str]) -> Command {
        let mut c = self.ag(&["run", "--agent", agent, "--"]);
        c.args(cmd);
        c
    }

    /// Removes every agentguard program, pin and cgroup (whoever loaded them).
    pub fn teardown(&self) -> Result<()> {
        cmd::output(&mut self.ag(&["teardown", "--force"])).map(drop)
    }

    /// `agentguard status --json`.
    pub fn status(&self) -> Result<Value> {
        let out = cmd::stdout(&mut self.ag(&["status", "--json"]))?;
        serde_json::from_str(&out).context("agentguard status printed no JSON")
    }

    /// The number of records in the log (`log head`'s sequence number + 1).
    pub fn log_records(&self) -> Result<u64> {
        let state = self.state.to_string_lossy().into_owned();
        let out = cmd::stdout(&mut self.ag(&["log", "head", "--json", "--state-dir", &state]))?;
        let v: Value = serde_json::from_str(&out).context("agentguard log head printed no JSON")?;
        Ok(v["seq"].as_u64().map_or(0, |s| s + 1))
    }

    /// Writes `text` as `work/NAME.toml`.
    pub fn policy(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.work.join(format!("{name}.toml"));
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// `agentguard policy apply FILE`; returns how long the command took, request to reply.
    pub fn apply(&self, policy: &Path) -> Result<Duration> {
        let start = Instant::now();
        cmd::output(self.ag(&["policy", "apply"]).arg(policy))?;
        Ok(start.elapsed())
    }
}

/// A daemon of ours: stopped with SIGTERM on drop, then everything it loaded is torn down.
pub struct Daemon<'a> {
    env: &'a Env,
    child: Child,
}

impl<'a> Daemon<'a> {
    /// Tears down whatever is loaded, starts the daemon with `policy` and a fresh state
    /// directory, and waits until it answers.
    pub fn start(env: &'a Env, policy: &Path) -> Result<Self> {
        Self::start_with(env, policy, &[])
    }

    /// [`Daemon::start`] with more daemon options.
    pub fn start_with(env: &'a Env, policy: &Path, options: &[&str]) -> Result<Self> {
        env.teardown()?;
        if env.state.exists() {
            fs::remove_dir_all(&env.state)
                .with_context(|| format!("cannot remove {}", env.state.display()))?;
        }
        let log_path = env.work.join("daemon.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let child = Command::new(&env.art.agentguard)
            .arg("daemon")
            .arg("--policy")
            .arg(policy)
            .arg("--state-dir")
            .arg(&env.state)
            .arg("--socket")
            .arg(&env.socket)
            .args(options)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the daemon")?;
        let mut d = Self { env, child };
        let start = Instant::now();
        while cmd::output(&mut env.ag(&["status", "--json"])).is_err() {
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "the daemon exited ({status}); its log {}:\n{}",
                    log_path.display(),
                    tail(&log_path, 20)
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "the daemon did not answer within {READY_TIMEOUT:?}; see {}",
                    log_path.display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    pub fn env(&self) -> &'a Env {
        self.env
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` field of `/proc/<daemon>/status` (`VmHWM`: peak resident set; `VmRSS`: current).
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{path} has no {field}"))
    }

    /// Runs of the daemon's cgroup sock_addr programs (the network hooks) and the time they
    /// took, summed over every such program, from the `fdinfo` of the daemon's program file
    /// descriptors. The kernel counts only while `kernel.bpf_stats_enabled` is 1
    /// ([`BpfStats`]).
    pub fn sock_addr_runs(&self) -> Result<HookRuns> {
        /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` (uapi/linux/bpf.h).
        const CGROUP_SOCK_ADDR: u64 = 18;
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let mut total = HookRuns::default();
        for fd in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
            // A descriptor closed meanwhile, or not a program: nothing to add.
            let text = fs::read_to_string(fd?.path()).unwrap_or_default();
            let field = |name: &str| -> Option<u64> {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .and_then(|v| v.trim().parse().ok())
            };
            if field("prog_type") == Some(CGROUP_SOCK_ADDR) {
                total.runs += field("run_cnt").unwrap_or(0);
                total.run_ns += field("run_time_ns").unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// CPU time the daemon's ingest thread (the one draining the ring buffers) has run, from
    /// its `schedstat`.
    pub fn ingest_cpu(&self) -> Result<Duration> {
        let tasks = format!("/proc/{}/task", self.pid());
        for task in fs::read_dir(&tasks).with_context(|| format!("cannot list {tasks}"))? {
            let task = task?.path();
            // The kernel keeps 15 bytes of the thread's name `agentguard-ingest`.
            let comm = fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim_end() != "agentguard-inge" {
                continue;
            }
            let stat = fs::read_to_string(task.join("schedstat"))
                .with_context(|| format!("cannot read {}/schedstat", task.display()))?;
            let ns = stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{}/schedstat: {stat:?}", task.display()))?;
            return Ok(Duration::from_nanos(ns));
        }
        bail!("the daemon has no agentguard-ingest thread in {tasks}")
    }

    /// Fails if the daemon has exited (e.g. another user's teardown stopped it).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the daemon exited ({status}) mid-run (another user of this kernel's agentguard \
                 state?); its log:\n{}",
                tail(&self.env.work.join("daemon.log"), 20)
            );
        }
        Ok(())
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
        let _ = self.env.teardown();
    }
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Program runs and their summed run time, as the kernel counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookRuns {
    pub runs: u64,
    pub run_ns: u64,
}

/// `kernel.bpf_stats_enabled` set to 1 (the kernel times every BPF program run, at a cost of
/// its own: only for runs that measure it), restored to what it was when dropped.
pub struct BpfStats {
    was: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let was =
            fs::read_to_string(BPF_STATS).with_context(|| format!("cannot read {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("cannot write {BPF_STATS}"))?;
        Ok(Self {
            was: was.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.was) {
            eprintln!("    cannot restore {BPF_STATS} to {}: {e}", self.was);
        }
    }
}
