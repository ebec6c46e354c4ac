//! The event log on a real daemon: a tamper matrix on a log produced by real enforcement, and
//! crash recovery after `kill -9` during a burst.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Output,
};

use agentguard::audit::{
    record::{Body, Record},
    testutil::Surgery,
};
use agentguard_tests::{Daemon, agentguard, describe, net, privileged, stdout};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

fn verify(state: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let state = state.to_string_lossy().into_owned();
    let mut args = vec!["log", "verify", "--json", "--state-dir", &state];
    args.extend_from_slice(extra);
    let out = agentguard(&args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (out, json)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("{e}")) {
        let entry = entry.unwrap_or_else(|e| panic!("{e}"));
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// A sealed log written by a real daemon judging real connects.
fn real_log() -> (Daemon, PathBuf, String) {
    let l = net::Tcp::listen("127.0.0.1");
    let policy = format!("[agents.buyer]\nconnect = [\"127.0.0.1:{}\"]\n", l.port());
    let (mut d, key) = Daemon::start_sealed(&policy, &["--seal-every", "8"]);
    let state = d.state.clone();
    for port in [l.port(), l.port().wrapping_add(1)] {
        let out = d.run(
            "buyer",
            &[PROBE, "tcp-loop", "127.0.0.1", &port.to_string(), "12"],
        );
        assert!(out.status.success(), "{}", describe(&out));
    }
    d.wait_record("the last refusal", |r| r["verdict"] == "denied");
    d.stop();
    (d, state, key)
}

/// The test's temporary directory (the state directory's parent).
fn d_dir(state: &Path) -> PathBuf {
    state.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Index of the first frame at or after `i` whose record is an action.
fn action_frame(s: &Surgery, i: usize) -> usize {
    s.action_at_or_after(i)
}

#[test]
fn a_tampered_real_log_is_caught_and_the_change_named() {
    if !privileged("a_tampered_real_log_is_caught_and_the_change_named") {
        return;
    }
    let (_d, state, key) = real_log();
    let log = state.join("log");
    let (out, report) = verify(&state, &["--key", &key]);
    assert!(
        out.status.success(),
        "the untouched log verifies: {}",
        describe(&out)
    );
    // 24 connects and the daemon's own records with a seal every 8 records: several seals.
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["seals"], "verified", "seals were checked: {report}");
    assert!(
        report["seal_count"].as_u64().unwrap_or(0) >= 2,
        "seals were written and verified: {report}"
    );
    let head_out = agentguard(&["log", "head", "--state-dir", &state.to_string_lossy()]);
    let head = stdout(&head_out).trim().to_owned();

    type Tamper = Box<dyn Fn(&mut Surgery)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "flip a byte",
            Box::new(|s: &mut Surgery| {
                let i = action_frame(s, 5);
                let mid = s.frames[i].len() / 2;
                s.frames[i][mid] ^= 0x01;
            }),
            "modified",
        ),
        (
            "delete a record",
            Box::new(|s: &mut Surgery| {
                let i = action_frame(s, 5);
                s.frames.remove(i);
            }),
            "deleted",
        ),
        (
            "insert a record",
            Box::new(|s: &mut Surgery| {
                let i = action_frame(s, 5);
                let copy = s.frames[i].clone();
                s.frames.insert(i + 1, copy);
            }),
            "inserted",
        ),
        (
            "swap two records",
            Box::new(|s: &mut Surgery| {
                let i = action_frame(s, 5);
                s.frames.swap(i, i + 1);
            }),
            "reordered",
        ),
        (
            "re-chain a modified record without the key",
            Box::new(|s: &mut Surgery| {
                let i = action_frame(s, 5);
                let mut r: Record = s.record(i);
                if let Body::Action(a) = &mut r.body {
                    a.verdict = 1;
                    a.comm = "innocent".into();
                }
                s.rewrite(i, &r);
                s.rechain(i);
            }),
            "bad seal",
        ),
    ];
    for (what, tamper, class) in cases {
        let copy = d_dir(&state).join(format!("tampered-{}", what.replace(' ', "-")));
        copy_dir(&log, &copy.join("log"));
        let mut s = Surgery::open(&copy.join("log"), 0);
        tamper(&mut s);
        s.save();
        let (out, report) = verify(&copy, &["--key", &key]);
        assert!(
            !out.status.success(),
            "{what}: verify must fail: {}",
            describe(&out)
        );
        assert_eq!(
            report["problem"]["class"].as_str(),
            Some(class),
            "{what}: {report}"
        );
    }

    // Truncation is visible against a head anchored elsewhere.
    let copy = d_dir(&state).join("tampered-truncate");
    copy_dir(&log, &copy.join("log"));
    let mut s = Surgery::open(&copy.join("log"), 0);
    let keep = s.frames.len() - 3;
    s.frames.truncate(keep);
    s.save();
    let (out, report) = verify(&copy, &["--key", &key, "--head", &head]);
    assert!(!out.status.success(), "truncation: {}", describe(&out));
    assert_eq!(
        report["problem"]["class"].as_str(),
        Some("truncated"),
        "{report}"
    );
}

#[test]
fn a_crash_during_a_burst_is_recovered_and_the_drops_are_logged() {
    if !privileged("a_crash_during_a_burst_is_recovered_and_the_drops_are_logged") {
        return;
    }
    let sink = net::Udp::bind("127.0.0.1");
    let policy = format!(
        "[agents.buyer]\nconnect = [\"127.0.0.1:{}\"]\n",
        sink.port()
    );
    // A small ring buffer, so the burst while the daemon is down overflows it.
    let (mut d, key) = Daemon::start_sealed(&policy, &["--ring-buffer-bytes", "65536"]);
    let state = d.state.clone();
    // The agent starts while the daemon runs, then bursts once the daemon is gone.
    let script = format!(
        "read go; exec {PROBE} udp-loop 127.0.0.1 {} 20000",
        sink.port()
    );
    let mut agent = agentguard_tests::ChildGuard::spawn(
        d.run_command("buyer", &["/bin/sh", "-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null()),
    );
    d.wait_record("the agent's start", |r| r["kind"] == "instance-start");
    d.kill9();
    {
        let mut stdin = agent.stdin.take().unwrap_or_else(|| panic!("stdin"));
        stdin.write_all(b"go\n").unwrap_or_else(|e| panic!("{e}"));
    }
    let status = agent.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "the agent kept running without the daemon"
    );
    // What a crash in the middle of a write leaves: half a frame at the end of the segment.
    let segment = fs::read_dir(state.join("log"))
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap_or_else(|| panic!("no segment"));
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap_or_else(|e| panic!("{e}"));
    f.write_all(&[0xa5, b'A', b'G', b'R', 0x40, 0, 0, 0, 1, 2, 3])
        .unwrap_or_else(|e| panic!("{e}"));
    drop(f);
    d.restart();
    let recovered = d.wait_record("the recovery", |r| r["kind"] == "recovered");
    assert!(
        recovered["cut_bytes"].as_u64().unwrap_or(0) > 0,
        "{recovered}"
    );
    let lost = d.wait_record("the lost events", |r| r["kind"] == "lost");
    assert!(lost["dropped"].as_u64().unwrap_or(0) > 0, "{lost}");
    // Events produced while the daemon was down were kept up to the buffer's size.
    let sends_after_restart = d
        .records()
        .iter()
        .skip_while(|r| r["kind"] != "daemon-start" || r["adopted"] != true)
        .filter(|r| r["action"] == "send")
        .count();
    assert!(
        sends_after_restart > 0,
        "buffered events survive the daemon's absence"
    );
    d.stop();
    let (out, _) = verify(&state, &["--key", &key]);
    assert!(
        out.status.success(),
        "the recovered log verifies: {}",
        describe(&out)
    );
}

#[test]
fn pruning_through_the_daemon_keeps_the_log_verifiable() {
    if !privileged("pruning_through_the_daemon_keeps_the_log_verifiable") {
        return;
    }
    let no = net::Tcp::listen("127.0.0.1");
    let (d, key) = Daemon::start_sealed(
        "[agents.buyer]\nconnect = []\n",
        &["--log-segment-bytes", "4096"],
    );
    // Refusals fill several small segments.
    for _ in 0..40 {
        agentguard_tests::assert_eperm(
            &d.probe("buyer", &["tcp", "127.0.0.1", &no.port().to_string()]),
            "a connect the policy does not allow",
        );
    }
    let segments = |d: &Daemon| {
        fs::read_dir(d.state_dir().join("log"))
            .map(|r| {
                r.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                    .count()
            })
            .unwrap_or(0)
    };
    d.wait_record("the last refusal", |r| {
        r["kind"] == "action" && r["verdict"] == "denied"
    });
    let before = segments(&d);
    assert!(before >= 3, "{before} segments");
    let state = d.state_dir().to_string_lossy().into_owned();
    let out = d.cli(&[
        "log",
        "prune",
        "--state-dir",
        &state,
        "--keep-bytes",
        "8192",
    ]);
    assert!(out.status.success(), "prune: {}", describe(&out));
    assert!(segments(&d) < before, "{}", stdout(&out));
    d.wait_record("the pruned record", |r| r["kind"] == "pruned");
    let out = agentguard(&["log", "verify", "--state-dir", &state, "--key", &key]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "verify after prune: {}",
        describe(&out)
    );
    assert!(text.contains("pruned start"), "{text}");
}

/// A tmpfs mounted on a daemon's state directory, unmounted (and the directory removed) when
/// dropped, after the daemon.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .unwrap_or_else(|e| panic!("tmpfs on {}: {e}", dir.display()));
        Self(dir.to_owned())
    }

    /// Fills what is left of it with `name`, a file removed to make room again.
    fn fill(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        let mut f = fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Bytes a short write took are kept: the disk is full to the byte.
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A full disk loses no record: while the log cannot write, what the agents do waits in the
/// daemon (bounded, and counted as a gap beyond the bound), and is written, chained and
/// verifiable once there is room again. Fails if a failed write drops its batch, or leaves a
/// torn frame that later records are chained behind.
#[test]
fn records_made_while_the_disk_is_full_are_written_once_there_is_room() {
    if !privileged("records_made_while_the_disk_is_full_are_written_once_there_is_room") {
        return;
    }
    let mut disk = None;
    let d = Daemon::start_prepared("[agents.flood]\nconnect = []\n", &[], |state| {
        disk = Some(SmallDisk::mount(state, "16m"));
    });
    // Borrowed, so that the tmpfs (`disk`, declared before the daemon) is unmounted after it.
    let disk = disk
        .as_ref()
        .unwrap_or_else(|| panic!("the state directory was prepared"));
    let before = d.records().len();
    let filler = disk.fill("filler");
    // Port 9 is allowed to nobody: every send is a refusal, and a record (or, past the
    // instance's event budget, a count in a gap record).
    let sends = 3_000;
    let out = d.probe(
        "flood",
        &["send-loop", "127.0.0.1", "9", &sends.to_string()],
    );
    assert_eq!(
        out,
        format!("sent=0 refused={sends}"),
        "every send is refused"
    );
    // The daemon has tried to write them, and failed.
    let start = std::time::Instant::now();
    while !d.output().contains("No space left on device") {
        assert!(
            start.elapsed() < agentguard_tests::patience(std::time::Duration::from_secs(30)),
            "the daemon never met the full disk: {}",
            d.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        d.records().len() <= before + 1,
        "nothing was written while the disk was full"
    );
    fs::remove_file(&filler).unwrap_or_else(|e| panic!("{e}"));
    // Every refusal is in the log once there is room: logged, or counted in a gap.
    let accounted = |records: &[serde_json::Value]| {
        let logged = records
            .iter()
            .filter(|r| r["action"] == "send" && r["verdict"] == "denied")
            .count() as u64;
        let gaps: u64 = records
            .iter()
            .filter(|r| r["kind"] == "lost-events")
            .map(|r| r["refusals"].as_u64().unwrap_or(0))
            .sum();
        (logged, gaps)
    };
    let records = d.wait_records("every refusal, logged or in a gap", |r| {
        let (logged, gaps) = accounted(r);
        logged + gaps >= sends
    });
    let (logged, gaps) = accounted(&records);
    assert_eq!(logged + gaps, sends, "{logged} logged + {gaps} in gaps");
    assert!(logged > 0, "records were held, not only counted");
    let (out, json) = verify(d.state_dir(), &[]);
    assert!(
        out.status.success(),
        "the chain verifies: {}",
        describe(&out)
    );
    assert_eq!(json["intact"], true, "{json}");
}
