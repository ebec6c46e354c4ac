//! What no agent may do whatever its policy: use bpf(2), signal processes outside its instance,
//! create sockets agentguard does not judge. Refused by BPF LSM programs; on the fallback the
//! same tests check that what an agent legitimately does still works.

use agentguard_tests::{Daemon, assert_eperm, privileged};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

fn probe(d: &Daemon, agent: &str, args: &[&str]) -> String {
    let mut cmd = vec![PROBE];
    cmd.extend_from_slice(args);
    let out = d.run(agent, &cmd);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if text.is_empty() {
        agentguard_tests::describe(&out)
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
fn agents_cannot_use_bpf() {
    if !privileged("agents_cannot_use_bpf") {
        return;
    }
    let d = Daemon::start("[agents.a]\nconnect = []\n");
    let pin = pinned_map();
    let result = probe(&d, "a", &["bpf-obj-get", &pin]);
    if d.lsm() {
        assert_eperm(&result, "BPF_OBJ_GET of agentguard's own map");
        let ev = wait_refusal(&d, "bpf", "a");
        assert_eq!(ev["target"]["path"], "cmd=7", "{ev}");
    } else {
        // The fallback has no bpf hook: the seccomp filter `run` installs is what refuses it
        // there. Whatever the answer, the daemon keeps enforcing.
        assert!(
            result.starts_with("ok") || result.starts_with("errno="),
            "{result}"
        );
    }
}

#[test]
fn agents_signal_only_their_own_instance() {
    if !privileged("agents_signal_only_their_own_instance") {
        return;
    }
    let d = Daemon::start("[agents.a]\nconnect = []\n");
    assert_eq!(
        probe(&d, "a", &["kill-own-child"]),
        "ok",
        "a signal to a child in the same instance"
    );
    let outsider = std::process::id().to_string();
    let result = probe(&d, "a", &["kill", &outsider, "0"]);
    if d.lsm() {
        assert_eperm(&result, "signal 0 to a process outside the instance");
        let ev = wait_refusal(&d, "signal", "a");
        assert_eq!(ev["target"]["path"], "sig=0", "{ev}");
        assert_eq!(
            ev["target"]["target_pid"].as_u64(),
            Some(u64::from(std::process::id())),
            "{ev}"
        );
    }
}

#[test]
fn agents_create_only_sockets_agentguard_judges() {
    if !privileged("agents_create_only_sockets_agentguard_judges") {
        return;
    }
    let d = Daemon::start("[agents.a]\nconnect = []\n");
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
    let judged = [
        (unix, stream, 0),
        (unix, dgram, 0),
        (inet, stream, 0),
        (inet, stream | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP),
        (inet6, stream, 0),
        (inet, dgram, 0),
        (inet6, dgram, libc::IPPROTO_UDP),
        (netlink, raw, libc::NETLINK_ROUTE),
    ];
    for (f, t, p) in judged {
        let result = probe(
            &d,
            "a",
            &["socket", &f.to_string(), &t.to_string(), &p.to_string()],
        );
        assert_eq!(
            result, "ok",
            "socket({f}, {t}, {p}) is one agentguard judges"
        );
    }
    let unjudged = [
        ("ICMP ping", inet, dgram, libc::IPPROTO_ICMP),
        ("ICMPv6 ping", inet6, dgram, libc::IPPROTO_ICMPV6),
        ("raw IPv4", inet, raw, libc::IPPROTO_TCP),
        ("SCTP", inet, seqpacket, libc::IPPROTO_SCTP),
        ("SCTP stream", inet6, stream, libc::IPPROTO_SCTP),
        ("packet", packet, raw, 0),
        ("vsock", vsock, stream, 0),
        ("netlink audit", netlink, raw, libc::NETLINK_AUDIT),
    ];
    for (what, f, t, p) in unjudged {
        let result = probe(
            &d,
            "a",
            &["socket", &f.to_string(), &t.to_string(), &p.to_string()],
        );
        if d.lsm() {
            assert_eperm(&result, what);
        }
    }
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
