//! A confined agent must not be able to lift its own confinement: leave its cgroup, reach
//! agentguard's BPF objects, write host configuration, signal the daemon, use sockets that no
//! hook judges, or push input into the operator's terminal. Each test is the attack.

use std::{fs, path::PathBuf};

use agentguard_tests::{Daemon, assert_eperm, describe, privileged, stdout};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

/// The probe's verdict line for `args`, run as `agent` (with `run_args` before `--`).
fn attack(d: &Daemon, agent: &str, args: &[&str]) -> String {
    d.probe(agent, args)
}

/// `<cgroup2 mount>`, the root an escaping agent would move to.
fn cgroup2_root() -> PathBuf {
    agentguard_tests::cgroup_root()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Some pinned agentguard object (program, link or map).
fn a_pin() -> PathBuf {
    fn walk(dir: &std::path::Path) -> Option<PathBuf> {
        for entry in fs::read_dir(dir).ok()?.filter_map(Result::ok) {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    if let Some(found) = walk(&path) {
                        return Some(found);
                    }
                }
                Ok(_) => return Some(path),
                Err(_) => {}
            }
        }
        None
    }
    walk(std::path::Path::new("/sys/fs/bpf/agentguard"))
        .unwrap_or_else(|| panic!("no pinned agentguard object under /sys/fs/bpf/agentguard"))
}

/// Status lines of the probe: `Uid:` etc.
fn uid_of(status: &str) -> u32 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no Uid line in {status:?}"))
}

const POLICY: &str = "[agents.plain]\nconnect = []\n\n[agents.rooted]\nuser = \"root\"\nconnect = []\n\n[agents.pinger]\nallow_syscalls = [\"ping_sockets\"]\nconnect = []\n";

#[test]
fn agents_run_without_uid_0_unless_the_policy_says_root() {
    if !privileged("agents_run_without_uid_0_unless_the_policy_says_root") {
        return;
    }
    let d = Daemon::start(POLICY);
    let out = d.run("plain", &[PROBE, "status"]);
    let uid = uid_of(&stdout(&out));
    assert!(
        (0x7e00_0000..0x7e01_0000).contains(&uid),
        "an agent without `user` runs as a dynamic uid: {}",
        describe(&out)
    );
    let second = uid_of(&stdout(&d.run("plain", &[PROBE, "status"])));
    assert!((0x7e00_0000..0x7e01_0000).contains(&second));

    let out = d.cli(&[
        "run", "--agent", "plain", "--user", "root", "--", PROBE, "status",
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not run as root"),
        "--user root is refused without the policy's opt-in: {}",
        describe(&out)
    );
    assert!(out.stdout.is_empty(), "nothing ran: {}", describe(&out));

    let out = d.run("rooted", &[PROBE, "status"]);
    assert_eq!(uid_of(&stdout(&out)), 0, "{}", describe(&out));
    let status = d.cli(&["status"]);
    assert!(
        stdout(&status).contains("rooted [enforce] runs as ROOT"),
        "status flags the root opt-in: {}",
        describe(&status)
    );
}

#[test]
fn even_a_root_agent_cannot_leave_its_cgroup_or_reach_bpf_objects() {
    if !privileged("even_a_root_agent_cannot_leave_its_cgroup_or_reach_bpf_objects") {
        return;
    }
    let d = Daemon::start(POLICY);
    let root = cgroup2_root().to_string_lossy().into_owned();
    for agent in ["plain", "rooted"] {
        let out = attack(&d, agent, &["clone3-into-cgroup", &root]);
        assert!(
            out.starts_with("errno=38 "),
            "{agent}: clone3(CLONE_INTO_CGROUP) answers ENOSYS: {out}"
        );
        let pin = a_pin().to_string_lossy().into_owned();
        assert_eperm(
            &attack(&d, agent, &["bpf-obj-get", &pin]),
            "BPF_OBJ_GET on a pin",
        );
    }
}

#[test]
fn an_agent_cannot_write_host_configuration_or_signal_the_daemon() {
    if !privileged("an_agent_cannot_write_host_configuration_or_signal_the_daemon") {
        return;
    }
    let d = Daemon::start(POLICY);
    let out = attack(
        &d,
        "plain",
        &["open-write", "/proc/sys/kernel/core_pattern"],
    );
    assert!(out.starts_with("errno=13 "), "core_pattern: {out}");
    let planted = format!("/etc/agentguard-test-{}", std::process::id());
    let out = attack(&d, "plain", &["create-new", &planted]);
    let _ = fs::remove_file(&planted);
    // EACCES on the host; the VM guest shares the host's root read-only, so EROFS there.
    assert!(
        out.starts_with("errno=13 ") || out.starts_with("errno=30 "),
        "a file in /etc: {out}"
    );
    let out = attack(&d, "plain", &["signal0", &d.pid().to_string()]);
    assert_eperm(&out, "signalling the daemon");
}

/// Sets `net.ipv4.ping_group_range` to every group for the test (systemd's default), and
/// restores the host's value after.
struct PingForEveryone(String);

const PING_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

impl PingForEveryone {
    fn new() -> Self {
        let old = fs::read_to_string(PING_RANGE).unwrap_or_else(|e| panic!("{PING_RANGE}: {e}"));
        fs::write(PING_RANGE, "0 2147483647").unwrap_or_else(|e| panic!("{PING_RANGE}: {e}"));
        Self(old)
    }
}

impl Drop for PingForEveryone {
    fn drop(&mut self) {
        let _ = fs::write(PING_RANGE, self.0.trim());
    }
}

#[test]
fn sockets_no_hook_judges_are_refused_unless_granted() {
    if !privileged("sockets_no_hook_judges_are_refused_unless_granted") {
        return;
    }
    let _ping = PingForEveryone::new();
    let d = Daemon::start(POLICY);
    assert_eperm(
        &attack(&d, "plain", &["ping", "127.0.0.1"]),
        "ICMP ping socket",
    );
    // (family, type, protocol): SCTP, MPTCP, vsock, packet, netlink audit.
    for (what, args) in [
        ("SCTP", ["2", "1", "132"]),
        ("SCTP seqpacket", ["2", "5", "132"]),
        ("MPTCP", ["2", "1", "262"]),
        ("vsock", ["40", "1", "0"]),
        ("packet", ["17", "3", "768"]),
        ("netlink audit", ["16", "3", "9"]),
    ] {
        let mut probe = vec!["socket"];
        probe.extend(args);
        assert_eperm(&attack(&d, "plain", &probe), what);
    }
    // What agentguard does judge stays usable.
    for (what, args) in [
        ("TCP", ["2", "1", "0"]),
        ("UDP over IPv6", ["10", "2", "17"]),
        ("unix", ["1", "1", "0"]),
        ("netlink route", ["16", "3", "0"]),
    ] {
        let mut probe = vec!["socket"];
        probe.extend(args);
        assert_eq!(attack(&d, "plain", &probe), "ok", "{what}");
    }
    // A policy may grant a group back, loudly.
    assert_eq!(
        attack(&d, "pinger", &["ping", "127.0.0.1"]),
        "ok",
        "allow_syscalls = [\"ping_sockets\"]"
    );
    let status = d.cli(&["status"]);
    assert!(
        stdout(&status).contains("SYSCALLS GRANTED: ping_sockets"),
        "{}",
        describe(&status)
    );
}

#[test]
fn the_agent_has_its_own_session_and_no_terminal_injection() {
    if !privileged("the_agent_has_its_own_session_and_no_terminal_injection") {
        return;
    }
    let d = Daemon::start(POLICY);
    let out = attack(&d, "plain", &["session"]);
    let field = |name: &str| {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
            .to_owned()
    };
    assert_eq!(
        field("sid="),
        field("pid="),
        "the agent leads a new session: {out}"
    );
    assert_eq!(field("tty="), "no", "without a controlling terminal: {out}");
    // With stdin not a terminal, TIOCSTI fails with ENOTTY unless seccomp refuses it first.
    assert_eperm(&attack(&d, "plain", &["tiocsti"]), "TIOCSTI");
}
