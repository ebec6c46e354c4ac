//! The kernel side of confinement (BPF LSM): no agent uses bpf(2), signals a process outside its
//! instance or creates a socket agentguard does not judge, unless its policy grants the syscall
//! group back. `agentguard run` also installs a seccomp filter for the same things; these tests
//! adopt a root process with `agentguard tag` instead, which has neither that filter nor dropped
//! capabilities, so only the kernel programs stand between it and the action. On the fallback
//! backend (no BPF LSM) the same tests check that what an agent legitimately does still works.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use agentguard_tests::{ChildGuard, Daemon, assert_eperm, describe, privileged};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

const POLICY: &str = "[agents.a]\nconnect = []\n\n[agents.granted]\nconnect = []\nallow_syscalls = [\"bpf\", \"raw_sockets\"]\n";

/// Runs `agentguard-probe ARGS...` as a root process adopted into `agent` with `agentguard tag`
/// before it acts; its output line, or everything about the run when it printed none.
fn tagged(d: &Daemon, agent: &str, args: &[&str]) -> String {
    let mut child = ChildGuard::spawn(
        Command::new(PROBE)
            .arg("after-line")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let pid = child.id().to_string();
    let tag = d.cli(&["tag", "--agent", agent, "--pid", &pid]);
    assert!(tag.status.success(), "tag: {}", describe(&tag));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(b"go\n")
            .unwrap_or_else(|e| panic!("probe stdin: {e}"));
    }
    let out = child.wait_with_output();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if text.is_empty() {
        describe(&out)
    } else {
        text
    }
}

/// A refusal of `op` by the BPF LSM, as the log shows it.
fn wait_refusal(d: &Daemon, op: &str, agent: &str) -> serde_json::Value {
    d.wait_record(&format!("a refused {op}"), |r| {
        r["action"] == "privileged"
            && r["verdict"] == "denied"
            && r["agent"] == agent
            && r["target"]["op"] == op
    })
}

/// A pinned agentguard map, as a root agent would find it.
fn pinned_map() -> String {
    let root = std::path::Path::new("/sys/fs/bpf/agentguard");
    std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("maps/AG_STATE"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no pinned AG_STATE under {}", root.display()))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn agents_cannot_use_bpf_unless_granted() {
    if !privileged("agents_cannot_use_bpf_unless_granted") {
        return;
    }
    let d = Daemon::start(POLICY);
    let pin = pinned_map();
    assert_eq!(
        tagged(&d, "granted", &["bpf-obj-get", &pin]),
        "ok",
        "allow_syscalls = [\"bpf\"] grants bpf(2) on every backend"
    );
    let result = tagged(&d, "a", &["bpf-obj-get", &pin]);
    if d.lsm() {
        assert_eperm(&result, "BPF_OBJ_GET of agentguard's own map");
        let ev = wait_refusal(&d, "bpf", "a");
        assert_eq!(ev["target"]["path"], "cmd=7", "{ev}");
    }
}

#[test]
fn agents_signal_only_their_own_instance() {
    if !privileged("agents_signal_only_their_own_instance") {
        return;
    }
    let d = Daemon::start(POLICY);
    assert_eq!(
        tagged(&d, "a", &["kill-own-child"]),
        "ok",
        "a signal to a child in the same instance"
    );
    let outsider = std::process::id().to_string();
    let result = tagged(&d, "a", &["signal0", &outsider]);
    if d.lsm() {
        assert_eperm(&result, "signal 0 to a process outside the instance");
        let ev = wait_refusal(&d, "signal", "a");
        assert_eq!(ev["target"]["path"], "sig=0", "{ev}");
        assert_eq!(
            ev["target"]["target_pid"].as_u64(),
            Some(u64::from(std::process::id())),
            "{ev}"
        );
        assert_eperm(
            &tagged(&d, "a", &["signal0", &d.pid().to_string()]),
            "signal 0 to the daemon",
        );
    }
}

#[test]
fn agents_create_only_sockets_agentguard_judges_unless_granted() {
    if !privileged("agents_create_only_sockets_agentguard_judges_unless_granted") {
        return;
    }
    let d = Daemon::start(POLICY);
    let (unix, inet, inet6, netlink, packet, vsock) = (
        libc::AF_UNIX,
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
        libc::AF_PACKET,
        libc::AF_VSOCK,
    );
    let (stream, dgram, raw, seqpacket) = (
        libc::SOCK_STREAM,
        libc::SOCK_DGRAM,
        libc::SOCK_RAW,
        libc::SOCK_SEQPACKET,
    );
    let socket = |agent: &str, (f, t, p): (i32, i32, i32)| {
        tagged(
            &d,
            agent,
            &["socket", &f.to_string(), &t.to_string(), &p.to_string()],
        )
    };
    for s in [
        (unix, stream, 0),
        (unix, dgram, 0),
        (inet, stream, 0),
        (inet, stream | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP),
        (inet6, stream, 0),
        (inet, dgram, 0),
        (inet6, dgram, libc::IPPROTO_UDP),
        (netlink, raw, libc::NETLINK_ROUTE),
    ] {
        assert_eq!(socket("a", s), "ok", "socket{s:?} is one agentguard judges");
    }
    for (what, s) in [
        ("ICMP ping", (inet, dgram, libc::IPPROTO_ICMP)),
        ("ICMPv6 ping", (inet6, dgram, libc::IPPROTO_ICMPV6)),
        ("raw IPv4", (inet, raw, libc::IPPROTO_TCP)),
        ("SCTP", (inet, seqpacket, libc::IPPROTO_SCTP)),
        ("SCTP stream", (inet6, stream, libc::IPPROTO_SCTP)),
        ("MPTCP", (inet, stream, libc::IPPROTO_MPTCP)),
        ("packet", (packet, raw, 0)),
        ("vsock", (vsock, stream, 0)),
        ("netlink audit", (netlink, raw, libc::NETLINK_AUDIT)),
    ] {
        let result = socket("a", s);
        if d.lsm() {
            assert_eperm(&result, what);
        }
    }
    // A root process keeps CAP_NET_RAW when tagged: with the grant, nothing refuses.
    assert_eq!(
        socket("granted", (inet, raw, libc::IPPROTO_TCP)),
        "ok",
        "allow_syscalls = [\"raw_sockets\"]"
    );
    if d.lsm() {
        let ev = wait_refusal(&d, "socket", "a");
        assert!(
            ev["target"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("family=")),
            "{ev}"
        );
    }
}
