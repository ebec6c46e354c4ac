//! Booting the guest with virtme-ng under TCG, its console logged to a file and the guest
//! script's own lines echoed live; killed (with QEMU) if it outlives the timeout.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::prctl::set_child_subreaper;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::kernel::Kernel;
use super::script;
use crate::cmd;

/// The guest's kernel command line: the active LSMs (`bpf` is the point), and full preemption,
/// under which a task can be preempted inside a BPF program (which runs with migration, not
/// preemption, disabled): the strictest schedule the programs must be correct under, and the
/// one that shows when two tasks share per-CPU state.
const GUEST_CMDLINE: &str = "lsm=landlock,lockdown,yama,bpf preempt=full";

pub struct Boot<'a> {
    pub vng: &'a Path,
    pub kernel: &'a Kernel,
    /// Writable from the guest (`--rwdir`); also receives `vng.log`.
    pub results: &'a Path,
    pub script: &'a Path,
    /// Also writable from the guest: `target/tmp`, the `CARGO_TARGET_TMPDIR` of integration tests
    /// (the rest of the host root is read-only in the guest).
    pub scratch: &'a Path,
    pub timeout: Duration,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Prefixes the guest's echoed lines.
    pub label: &'a str,
}

/// Boots the guest and waits for vng to exit. vng's exit status says nothing about the guest
/// (it exits 255 whatever happened), so success here only means "exited before the timeout".
pub fn boot(boot: &Boot<'_>) -> Result<()> {
    let mut vng = Command::new(boot.vng);
    vng.args(["--verbose", "--disable-kvm", "--force-9p", "--memory", "2G"])
        .args(["--cpus", &boot.cpus.to_string()])
        .arg("--run")
        .arg(boot.kernel.vmlinuz())
        .args(["--append", GUEST_CMDLINE])
        .arg(format!("--rwdir={}", boot.results.display()))
        .arg(format!("--rwdir={}", boot.scratch.display()))
        .arg("--exec")
        .arg(format!(
            "sh {}",
            script::quote(&boot.script.to_string_lossy())
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so a timeout kills QEMU along with vng; as subreaper we inherit
    // (and can reap) the processes orphaned by that kill.
    std::os::unix::process::CommandExt::process_group(&mut vng, 0);
    let _ = set_child_subreaper(true);
    let log_path = boot.results.join("vng.log");
    eprintln!("    {}", cmd::describe(&vng));
    eprintln!("    console log: {}", log_path.display());
    let log =
        Arc::new(Mutex::new(File::create(&log_path).with_context(|| {
            format!("cannot create {}", log_path.display())
        })?));
    let mut child = vng
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::describe(&vng)))?;
    let _group = running::Group::register(&child);
    let echoing = Arc::new(AtomicBool::new(false));
    let copiers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let (log, echoing) = (Arc::clone(&log), Arc::clone(&echoing));
        let label = boot.label.to_owned();
        thread::spawn(move || copy_console(stream, &log, &echoing, &label))
    })
    .collect();
    let waited = wait_or_kill(&mut child, boot.timeout);
    for copier in copiers {
        let _ = copier.join();
    }
    let status = waited?;
    eprintln!("    vng exited ({status}); its status is not the guest's, reading the results");
    Ok(())
}

fn wait_or_kill(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for vng")? {
            return Ok(status);
        }
        if start.elapsed() > timeout {
            let pgid = i32::try_from(child.id()).context("vng's pid does not fit a pid_t")?;
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            let _ = child.wait();
            reap_orphans();
            bail!(
                "the VM was still running after {}: killed it",
                cmd::seconds(timeout)
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Waits (briefly) for vng's killed descendants, which were re-parented to us as subreaper.
fn reap_orphans() {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => thread::sleep(Duration::from_millis(100)),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Copies console lines into the log; echoes the guest script's lines (and everything between
/// its begin and end markers, i.e. the tests' output) to our stderr.
fn copy_console(
    stream: Box<dyn Read + Send>,
    log: &Mutex<File>,
    echoing: &AtomicBool,
    label: &str,
) {
    for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\r');
        if let Ok(mut log) = log.lock() {
            let _ = writeln!(log, "{text}");
        }
        if text.contains(script::BEGIN) {
            echoing.store(true, Ordering::Relaxed);
        }
        if echoing.load(Ordering::Relaxed) || text.contains(script::MARKER) {
            eprintln!("  {label:>4} | {text}");
        }
        if text.contains(script::END) {
            echoing.store(false, Ordering::Relaxed);
        }
    }
}

/// The last `n` lines of the console log, for error messages.
pub fn console_tail(results: &Path, n: usize) -> String {
    let log_path: PathBuf = results.join("vng.log");
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The guest kernel's panic, if the console shows one: the `Oops`/`BUG` line that caused it
/// and the panic line.
pub fn guest_panic(results: &Path) -> Option<String> {
    let text = std::fs::read_to_string(results.join("vng.log")).ok()?;
    let panic = text
        .lines()
        .find(|l| l.contains("Kernel panic - not syncing"))?;
    Some(
        match text
            .lines()
            .find(|l| l.contains("Oops:") || l.contains("BUG:"))
        {
            Some(cause) => format!("{} / {}", cause.trim(), panic.trim()),
            None => panic.trim().to_owned(),
        },
    )
}

/// The process groups of the guests running now, killed (QEMU with vng) when xtask is
/// interrupted or terminated: each guest has a group of its own, so the terminal's Ctrl-C does
/// not reach it, and a killed xtask would otherwise leave QEMU emulating on.
mod running {
    use std::sync::Once;
    use std::sync::atomic::{AtomicI32, Ordering};

    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, killpg, sigaction};
    use nix::unistd::Pid;

    /// Guests at once: `cargo xtask vm-test` boots one per kernel series, a retry one more.
    static GROUPS: [AtomicI32; 8] = [const { AtomicI32::new(0) }; 8];
    static HANDLERS: Once = Once::new();
    const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

    /// A registered guest group, unregistered when dropped (the guest has exited by then).
    pub struct Group(Option<usize>);

    impl Group {
        pub fn register(child: &std::process::Child) -> Self {
            HANDLERS.call_once(install);
            let Ok(pgid) = i32::try_from(child.id()) else {
                return Self(None);
            };
            Self(GROUPS.iter().position(|g| {
                g.compare_exchange(0, pgid, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            }))
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            if let Some(slot) = self.0 {
                GROUPS[slot].store(0, Ordering::SeqCst);
            }
        }
    }

    fn install() {
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESETHAND,
            SigSet::empty(),
        );
        for signal in SIGNALS {
            // SAFETY: `on_signal` only makes async-signal-safe calls (atomic loads, kill, raise).
            let _ = unsafe { sigaction(signal, &action) };
        }
    }

    extern "C" fn on_signal(signo: i32) {
        for group in &GROUPS {
            let pgid = group.load(Ordering::SeqCst);
            if pgid > 0 {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
        // SA_RESETHAND put the default action back: die of the signal as if never caught.
        if let Ok(signal) = Signal::try_from(signo) {
            let _ = nix::sys::signal::raise(signal);
        }
    }
}
