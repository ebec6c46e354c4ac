//! Judged actions racing on one CPU. On a preemptible kernel (`preempt=full`, lazy, RT) a BPF
//! LSM or cgroup program runs with migration disabled but can be preempted, so another task can
//! run the same program on the same CPU before the first one finishes: per-CPU state a program
//! keeps across its run (the path or AF_UNIX address being judged) must belong to that run only.
//! A hostile agent pins threads to one CPU, some acting on an allowed target and some on a
//! refused one, and counts: not one refused action may go through, and not one allowed action
//! may be refused. With one scratch slot per CPU, the file test failed in the 1-vCPU
//! `preempt=full` 6.12 guest (60,000 refused opens: 1 went through, 37 allowed ones refused).
//!
//! The VM runner boots its guests with `preempt=full`; run it with `--cpus 1` for the tightest
//! schedule. The file test targets the BPF LSM `file_open` program; on the fallback backend
//! Landlock judges opens (it keeps no per-CPU state), and the same assertions hold there. The
//! AF_UNIX test judges through `cgroup/sendmsg_unix` on the fallback, which runs preemptible, or
//! through `unix_may_send` with BPF LSM, which the kernel calls under the peer's state spinlock
//! (so preemptible only on PREEMPT_RT): there it checks the slot handling does not refuse what
//! is allowed or allow what is not.

use std::{
    os::unix::net::UnixDatagram,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agentguard_tests::{Daemon, ScratchTree, describe, privileged, stdout};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

/// Threads on each side (allowed, refused), all on one CPU.
const THREADS: &str = "3";
/// Actions per thread: a fixed amount of work, not a time. The old code misjudged about one
/// action in 3,000 (38 in 120,000) on the 1-vCPU guest: 15,000 per side leave it about 10 to
/// show, and take a quarter of the emulated guest's time that 60,000 did (478 s on 6.1).
const ACTIONS: &str = "5000";

/// The probe's counts, by name.
struct Counts {
    line: String,
}

impl Counts {
    fn parse(out: &std::process::Output) -> Self {
        let line = stdout(out)
            .lines()
            .find(|l| l.starts_with("allowed_ok="))
            .unwrap_or_else(|| panic!("no counts from the probe: {}", describe(out)))
            .to_owned();
        Self { line }
    }

    fn get(&self, name: &str) -> usize {
        self.line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.line))
    }

    /// No refused action went through and every allowed one did.
    fn assert_held(&self, what: &str) {
        let per_side: usize =
            THREADS.parse::<usize>().unwrap_or(0) * ACTIONS.parse::<usize>().unwrap_or(0);
        eprintln!("{what}: {}", self.line);
        assert_eq!(
            self.get("denied_ok"),
            0,
            "{what}: refused actions went through: {}",
            self.line
        );
        assert_eq!(
            self.get("denied_refused"),
            per_side,
            "{what}: every refused action must be refused: {}",
            self.line
        );
        assert_eq!(self.get("other"), 0, "{what}: {}", self.line);
        // Judged by another run's state, an allowed action is refused as often as a refused
        // one goes through (37 against 1 on the old code): both count.
        assert_eq!(
            self.get("allowed_ok"),
            per_side,
            "{what}: allowed actions were refused: {}",
            self.line
        );
    }
}

fn policy(read: &str, connect: &str) -> String {
    format!(
        "[agents.racer]\nlog_allowed = false\nexec = [\"{PROBE}\"]\nread = [\"@system-runtime\", \"{read}\"]\nconnect = [\"unix:{connect}\"]\n"
    )
}

#[test]
fn opens_racing_on_one_cpu_are_each_judged_by_their_own_path() {
    if !privileged("opens_racing_on_one_cpu_are_each_judged_by_their_own_path") {
        return;
    }
    // Both files in one directory, names of one length, only one of them allowed: a path is
    // rendered backwards from the end of the scratch buffer (`d_path`, and the dentry walk), so
    // a run preempted after writing its file name, whose buffer another run then fills, resumes
    // by prepending its own directory to the other run's name: the allowed path, exactly.
    let t = ScratchTree::new("agentguard-race");
    t.dirs(&["shared"])
        .file("shared/ok.txt", "data")
        .file("shared/no.txt", "secret");
    let d = Daemon::start(&policy(&t.p("shared/ok.txt"), "/nonexistent.sock"));
    let secret = t.p("shared/no.txt");
    let out = d.run(
        "racer",
        &[
            PROBE,
            "race-open",
            &t.p("shared/ok.txt"),
            &secret,
            THREADS,
            ACTIONS,
        ],
    );
    Counts::parse(&out).assert_held("opens");
    if d.lsm() {
        // The refusals are judged, counted and logged like any other.
        let ev = d.wait_record("a refused racing open", |r| {
            r["action"] == "file-open" && r["target"]["path"] == secret.as_str()
        });
        assert_eq!(ev["verdict"].as_str(), Some("denied"), "{ev}");
    }
}

/// A datagram socket the test drains until dropped, so the senders never wait for room.
struct Drained {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drained {
    fn bind(path: &std::path::Path) -> Self {
        let s = UnixDatagram::bind(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        agentguard_tests::open_to_agents(path);
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap_or_else(|e| panic!("timeout: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                let _ = s.recv(&mut buf);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn unix_sends_racing_on_one_cpu_are_each_judged_by_their_own_address() {
    if !privileged("unix_sends_racing_on_one_cpu_are_each_judged_by_their_own_address") {
        return;
    }
    let t = ScratchTree::new("agentguard-race-unix");
    let (ok, no) = (t.path("ok.dgram"), t.path("no.dgram"));
    let _drained = (Drained::bind(&ok), Drained::bind(&no));
    let d = Daemon::start(&policy(&t.p("unused"), &t.p("ok.dgram")));
    let out = d.run(
        "racer",
        &[
            PROBE,
            "race-unix-dgram",
            &t.p("ok.dgram"),
            &t.p("no.dgram"),
            THREADS,
            ACTIONS,
        ],
    );
    Counts::parse(&out).assert_held("AF_UNIX datagrams");
    let ev = d.wait_record("a refused racing datagram", |r| {
        r["action"] == "unix-send" && r["target"]["path"] == t.p("no.dgram").as_str()
    });
    assert_eq!(ev["verdict"].as_str(), Some("denied"), "{ev}");
}
