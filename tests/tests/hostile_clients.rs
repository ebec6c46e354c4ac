//! The daemon survives hostile clients, and clients do not trust a socket the daemon does not
//! serve.
//!
//! The hostile clients are small Python programs ([`HOSTILE`]) run as unprivileged users (and
//! adopted into agent instances with `agentguard tag` where the daemon must admit them), so that
//! they speak to the sockets exactly as a local attacker could, without the agentguard client's
//! own limits. Every step waits for an event (a line from the client, a closed connection);
//! nothing depends on how fast this machine is.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream, process::CommandExt},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use agentguard_tests::{Daemon, agentguard_bin, describe, privileged, stdout};

const POLICY: &str = "[agents.hostile]\nconnect = []\n\n[agents.legit]\nconnect = []\n\n[agents.impostor]\nconnect = []\n";

/// `nobody`, and a second unprivileged uid with no passwd entry (the daemon counts uids, not
/// names).
const NOBODY: u32 = 65534;
const OTHER_UID: u32 = 65532;

/// The daemon's resident memory may move this much for reasons of its own; the attack used to
/// add 263 MiB.
const RSS_SLACK_KIB: i64 = 32 * 1024;

/// A guard against a hung test, never a speed expectation: every wait below ends on an event.
const GUARD: Duration = Duration::from_secs(120);

/// The hostile clients. Each prints `ready`, waits for `go` on stdin (so the test can adopt it
/// into an agent instance first), acts, and prints one JSON line.
const HOSTILE: &str = r#"
import json, os, socket, sys

mode, path = sys.argv[1], sys.argv[2]

def ready():
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(path)
    return s

def reply(s):
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return data.decode(errors="replace").strip()

def closed(s):
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True

if mode == "flood":
    # One 256 MiB line without a newline, and the connection kept open (the daemon holds what
    # it buffered for as long as it waits for the end of the line).
    ready()
    s = connect()
    chunk, sent, cut = b"a" * (1 << 20), 0, False
    try:
        while sent < (256 << 20):
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        cut = True
    r = reply(s) if cut else ""
    print(json.dumps({"sent": sent, "reply": r, "closed": cut and closed(s)}), flush=True)
    sys.stdin.readline()
elif mode == "hold":
    # Open connections one after another, each answering one ping, and keep them all open.
    n = int(sys.argv[3])
    ready()
    held, pongs, refused = [], 0, []
    for _ in range(n):
        s = connect()
        try:
            s.sendall(b'{"op":"ping"}\n')
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = reply(s)
        if '"pong"' in r:
            pongs += 1
        else:
            refused.append(r)
        held.append(s)
    print(json.dumps({"pongs": pongs, "refused": refused}), flush=True)
    sys.stdin.readline()
elif mode == "ping":
    ready()
    s = connect()
    s.sendall(b'{"op":"ping"}\n')
    print(json.dumps({"reply": reply(s)}), flush=True)
elif mode == "impostor":
    # Serves the socket path like a daemon would, and says what it received.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o666)
    s.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        line = c.makefile("rb").readline()
        print("got " + line.decode(errors="replace").strip(), flush=True)
        if b'"run"' in line:
            out = {"ok": {"reply": "launched", "instance": "impostor/1",
                          "sandbox": {"landlock": None, "capabilities": [],
                                      "identity": {"kind": "inherited"},
                                      "allow_syscalls": ["all"]}}}
        else:
            out = {"ok": {"reply": "status", "version": "6.6.6", "backends": "impostor",
                          "policy_digest": "", "policy_origin": "", "agents": [],
                          "lost_events": 0}}
        try:
            c.sendall((json.dumps(out) + "\n").encode())
        except OSError:
            pass
        c.close()
"#;

/// A running hostile client.
struct Hostile {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Hostile {
    /// Starts `mode` against `path` as `uid` (0 stays root) and waits for its `ready`.
    fn start(uid: u32, mode: &str, path: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-c", HOSTILE, mode])
            .arg(path)
            .args(extra)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if uid != 0 {
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start /usr/bin/python3: {e}"));
        let out = BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        let mut h = Self { child, out };
        assert_eq!(h.line(), "ready", "the hostile client did not start");
        h
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Adopts the client into an instance of `agent`, so the agent socket admits it.
    fn tag(&self, d: &Daemon, agent: &str) {
        let out = d.cli(&["tag", "--agent", agent, "--pid", &self.pid()]);
        assert!(out.status.success(), "tag: {}", describe(&out));
    }

    fn go(&mut self) {
        self.say("go");
    }

    fn say(&mut self, line: &str) {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("no stdin"));
        writeln!(stdin, "{line}").unwrap_or_else(|e| panic!("write to the client: {e}"));
    }

    /// The next line the client prints (it exits with a traceback on a hang: its sockets time
    /// out after [`GUARD`]).
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read from the client: {e}"));
        line.trim().to_owned()
    }

    fn json(&mut self) -> serde_json::Value {
        let line = self.line();
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the hostile client printed {line:?} ({e})"))
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Lets unprivileged clients reach the sockets in the daemon's private directory.
fn open_to_all(d: &Daemon) {
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", d.dir.path().display()));
}

fn assert_still_answers(d: &Daemon) {
    let out = d.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "the daemon must still answer: {}\ndaemon:\n{}",
        describe(&out),
        d.output()
    );
}

/// One flood through `mode`'s client; returns what it saw and the daemon's RSS growth in KiB.
fn flood(d: &Daemon, pid: u32, tag_as: Option<&str>) -> (serde_json::Value, i64) {
    let before = rss_kib(pid);
    let mut h = Hostile::start(NOBODY, "flood", &d.agent_socket(), &[]);
    if let Some(agent) = tag_as {
        h.tag(d, agent);
    }
    h.go();
    let seen = h.json();
    // Measured while the client still holds its connection.
    let after = rss_kib(pid);
    h.say("done");
    eprintln!("daemon VmRSS {before} KiB -> {after} KiB ({tag_as:?})");
    let growth = i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0);
    (seen, growth)
}

#[test]
fn an_endless_line_is_cut_off_and_the_daemon_stays_small() {
    if !privileged("an_endless_line_is_cut_off_and_the_daemon_stays_small") {
        return;
    }
    let d = Daemon::start(POLICY);
    open_to_all(&d);
    let pid = d.pid();
    assert_still_answers(&d);

    // A local user outside every agent: refused before the daemon reads anything.
    let (seen, growth) = flood(&d, pid, None);
    let text = format!("{seen}\ndaemon:\n{}", d.output());
    assert!(
        seen["sent"].as_u64() < Some(256 << 20),
        "not cut off: {text}"
    );
    assert_eq!(seen["closed"], true, "connection left open: {text}");
    assert!(
        seen["reply"]
            .as_str()
            .is_some_and(|r| r.contains("agent socket serves processes inside agent instances")),
        "{text}"
    );
    assert!(growth < RSS_SLACK_KIB, "RSS grew {growth} KiB: {text}");

    // The same user as an agent process, which the agent socket does admit: the frame bound.
    let (seen, growth) = flood(&d, pid, Some("hostile"));
    let text = format!("{seen}\ndaemon:\n{}", d.output());
    assert!(
        seen["sent"].as_u64() < Some(256 << 20),
        "not cut off: {text}"
    );
    assert_eq!(seen["closed"], true, "connection left open: {text}");
    assert!(
        seen["reply"]
            .as_str()
            .is_some_and(|r| r.contains("longer than 65536 bytes")),
        "{text}"
    );
    assert!(growth < RSS_SLACK_KIB, "RSS grew {growth} KiB: {text}");
    assert_still_answers(&d);

    // Root on the administrator socket, whose bound (8 MiB) leaves room for large policies.
    let before = rss_kib(pid);
    let mut s = UnixStream::connect(&d.socket).unwrap_or_else(|e| panic!("connect: {e}"));
    s.set_write_timeout(Some(GUARD))
        .and_then(|()| s.set_read_timeout(Some(GUARD)))
        .unwrap_or_else(|e| panic!("socket timeouts: {e}"));
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    while sent < 256 << 20 {
        match s.write_all(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ),
                    "the daemon must close the connection, not stall it: {e}"
                );
                break;
            }
        }
    }
    assert!(sent < 256 << 20, "the administrator socket took 256 MiB");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("longer than"), "reply: {reply:?}");
    let growth =
        i64::try_from(rss_kib(pid)).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0);
    assert!(
        growth < 2 * RSS_SLACK_KIB,
        "RSS grew {growth} KiB after an 8 MiB-bounded frame"
    );
    assert_still_answers(&d);
}

#[test]
fn connections_beyond_the_per_uid_cap_are_refused_and_others_still_served() {
    if !privileged("connections_beyond_the_per_uid_cap_are_refused_and_others_still_served") {
        return;
    }
    // A long client timeout: the held connections must not be dropped as idle while the test
    // opens them, however slow the machine.
    let d = Daemon::start_with(
        POLICY,
        &["--max-connections-per-uid", "4", "--client-timeout", "600"],
    );
    open_to_all(&d);

    let mut hog = Hostile::start(NOBODY, "hold", &d.agent_socket(), &["12"]);
    hog.tag(&d, "hostile");
    hog.go();
    let seen = hog.json();
    let text = format!("{seen}\ndaemon:\n{}", d.output());
    assert_eq!(seen["pongs"], 4, "exactly the cap is served: {text}");
    let refused = seen["refused"].as_array().cloned().unwrap_or_default();
    assert_eq!(refused.len(), 8, "{text}");
    assert!(
        refused.iter().all(|r| r
            .as_str()
            .is_some_and(|r| r.contains("too many connections from uid 65534"))),
        "every extra connection is refused with a reason: {text}"
    );

    // While the hog holds its connections: another agent's uid, and the administrator.
    let mut legit = Hostile::start(OTHER_UID, "ping", &d.agent_socket(), &[]);
    legit.tag(&d, "legit");
    legit.go();
    let seen = legit.json();
    assert!(
        seen["reply"]
            .as_str()
            .is_some_and(|r| r.contains("\"pong\"")),
        "another uid is served: {seen}"
    );
    assert_still_answers(&d);

    // Slots come back when connections end.
    hog.say("done");
    let _ = hog.child.wait();
    let mut again = Hostile::start(NOBODY, "ping", &d.agent_socket(), &[]);
    again.tag(&d, "hostile");
    again.go();
    let seen = again.json();
    assert!(
        seen["reply"]
            .as_str()
            .is_some_and(|r| r.contains("\"pong\"")),
        "the uid is served again once its connections closed: {seen}"
    );
}

#[test]
fn idle_and_trickling_clients_are_dropped() {
    if !privileged("idle_and_trickling_clients_are_dropped") {
        return;
    }
    // Short enough to keep the test short, long enough for the harness's own CLI calls (which
    // send their request right after connecting) on an emulated VM.
    let d = Daemon::start_with(POLICY, &["--client-timeout", "5"]);

    // Idle: connects and sends nothing. The daemon must end the connection.
    let mut idle = UnixStream::connect(&d.socket).unwrap_or_else(|e| panic!("connect: {e}"));
    idle.set_read_timeout(Some(GUARD))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    let mut said = String::new();
    idle.read_to_string(&mut said)
        .unwrap_or_else(|e| panic!("the daemon kept an idle connection open: {e}"));
    assert!(said.contains("no whole request"), "{said:?}");

    // Slowloris: one byte at a time, never a whole line.
    let mut slow = UnixStream::connect(&d.socket).unwrap_or_else(|e| panic!("connect: {e}"));
    let start = Instant::now();
    let cut = loop {
        if slow.write_all(b" ").is_err() {
            break true;
        }
        if start.elapsed() > GUARD {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(cut, "a client trickling bytes was never disconnected");
    assert_still_answers(&d);
}

#[test]
fn clients_refuse_a_socket_not_served_by_the_daemon() {
    if !privileged("clients_refuse_a_socket_not_served_by_the_daemon") {
        return;
    }
    let d = Daemon::start(POLICY);
    let dir = tempfile::Builder::new()
        .prefix("agentguard-impostor")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    agentguard_tests::open_to_agents(dir.path());

    // A non-root impostor at the configured path.
    let path = dir.path().join("agentguard.sock");
    let mut impostor = Hostile::start(NOBODY, "impostor", &path, &[]);
    let status = Command::new(agentguard_bin())
        .args(["status"])
        .env("AGENTGUARD_SOCKET", &path)
        .output()
        .unwrap_or_else(|e| panic!("agentguard status: {e}"));
    assert!(!status.status.success(), "{}", describe(&status));
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(
        err.contains("not by root") && err.contains(&path.display().to_string()),
        "{}",
        describe(&status)
    );
    let run = Command::new(agentguard_bin())
        .args(["run", "--agent", "impostor", "--user", "nobody", "--"])
        .args(["/bin/echo", "RAN-UNCONFINED"])
        .env("AGENTGUARD_SOCKET", &path)
        .output()
        .unwrap_or_else(|e| panic!("agentguard run: {e}"));
    assert!(
        !run.status.success() && !stdout(&run).contains("RAN-UNCONFINED"),
        "run must not start anything on an impostor's word: {}",
        describe(&run)
    );
    // Nothing was sent to it: the check comes before the request.
    let _ = impostor.child.kill();
    let _ = impostor.child.wait();
    let mut heard = String::new();
    let _ = impostor.out.read_to_string(&mut heard);
    // (It sees the connections, which the clients close without writing a byte.)
    assert!(
        heard.lines().all(|l| l
            .strip_prefix("got")
            .is_some_and(|rest| rest.trim().is_empty())),
        "the impostor received a request: {heard}"
    );

    // A root impostor inside an agent cgroup (a root agent that replaced the socket file).
    let path = dir.path().join("agent-root.sock");
    let impostor = Hostile::start(0, "impostor", &path, &[]);
    impostor.tag(&d, "impostor");
    let status = Command::new(agentguard_bin())
        .args(["status"])
        .env("AGENTGUARD_SOCKET", &path)
        .output()
        .unwrap_or_else(|e| panic!("agentguard status: {e}"));
    assert!(!status.status.success(), "{}", describe(&status));
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("inside an agent cgroup"),
        "{}",
        describe(&status)
    );

    // The real daemon is still accepted.
    assert_still_answers(&d);
}
