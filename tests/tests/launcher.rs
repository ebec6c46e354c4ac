//! `agentguard run` and `agentguard tag`: instances, privileges, exit status, refusals.

use agentguard_tests::{Daemon, describe, privileged, stdout};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

const POLICY: &str = "[agents.buyer]\nconnect = [\"127.0.0.1:9\"]\n\n[agents.privileged]\nconnect = []\ncapabilities = [\"CAP_NET_BIND_SERVICE\"]\n\n[agents.rooted]\nuser = \"root\"\nconnect = []\n";

/// The value of a `/proc/self/status` line printed by the probe.
fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

#[test]
fn unknown_agent_is_refused_and_nothing_runs() {
    if !privileged("unknown_agent_is_refused_and_nothing_runs") {
        return;
    }
    let d = Daemon::start(POLICY);
    let marker = d.dir.path().join("ran");
    let out = d.run(
        "nosuch",
        &[PROBE, "write", marker.to_str().unwrap_or_default()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown agent \"nosuch\"") && err.contains("buyer"),
        "{}",
        describe(&out)
    );
    assert!(!marker.exists(), "the command must not have run");
}

#[test]
fn exit_status_passes_through() {
    if !privileged("exit_status_passes_through") {
        return;
    }
    let d = Daemon::start(POLICY);
    let out = d.run("buyer", &[PROBE, "exit", "42"]);
    assert_eq!(out.status.code(), Some(42), "{}", describe(&out));
    let out = d.run("buyer", &["/nonexistent/binary"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
}

#[test]
fn agents_get_no_root_powers_and_no_inherited_fds() {
    if !privileged("agents_get_no_root_powers_and_no_inherited_fds") {
        return;
    }
    let d = Daemon::start(POLICY);
    let out = d.run("buyer", &[PROBE, "status"]);
    let s = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            field(&s, key),
            "0000000000000000",
            "{key} must be empty:\n{s}"
        );
    }
    assert_eq!(field(&s, "NoNewPrivs:"), "1");
    // stdin, stdout, stderr and the directory the probe itself opened to list fds.
    let fds: Vec<&str> = field(&s, "fds:").split_whitespace().collect();
    assert_eq!(fds.len(), 4, "only stdio may be inherited: {fds:?}");
}

#[test]
fn policy_capabilities_are_kept_and_user_switch_applies() {
    if !privileged("policy_capabilities_are_kept_and_user_switch_applies") {
        return;
    }
    let d = Daemon::start(POLICY);
    let out = d.cli(&[
        "run",
        "--agent",
        "privileged",
        "--user",
        "nobody",
        "--",
        PROBE,
        "status",
    ]);
    let s = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(field(&s, "Uid:").starts_with("65534"), "{s}");
    // CAP_NET_BIND_SERVICE is bit 10.
    let want = format!("{:016x}", 1u64 << 10);
    for key in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(&s, key), want, "{key}:\n{s}");
    }
}

#[test]
fn agent_processes_cannot_use_the_control_socket() {
    if !privileged("agent_processes_cannot_use_the_control_socket") {
        return;
    }
    let d = Daemon::start(POLICY);
    let bin = agentguard_tests::agentguard_bin();
    let status = || d.run("rooted", &[bin.to_str().unwrap_or_default(), "status"]);
    // A non-root agent fails on the socket's permissions already.
    let out = d.run("buyer", &[bin.to_str().unwrap_or_default(), "status"]);
    assert!(!out.status.success(), "{}", describe(&out));
    // A root agent (the policy's opt-in) passes them, and the kernel refuses the connect: the
    // control socket is no `unix:` entry of its.
    let out = status();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        describe(&out)
    );
    // Even a policy that lists the control socket for it gets no further: the daemon refuses
    // a peer inside an agent cgroup.
    let listed = d.dir.path().join("listed.toml");
    std::fs::write(
        &listed,
        POLICY.replace(
            "user = \"root\"\nconnect = []",
            &format!(
                "user = \"root\"\nconnect = [\"unix:{}\"]",
                d.socket.display()
            ),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = d.cli(&["policy", "apply", &listed.to_string_lossy()]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = status();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("inside an agent cgroup"),
        "{}",
        describe(&out)
    );
}

#[test]
fn tag_adopts_a_running_process() {
    if !privileged("tag_adopts_a_running_process") {
        return;
    }
    let listener = agentguard_tests::net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(POLICY);
    // A shell that waits for a line on stdin, then connects.
    let mut child = agentguard_tests::ChildGuard::spawn(
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "read go; exec {PROBE} tcp 127.0.0.1 {}",
                listener.port()
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped()),
    );
    let out = d.cli(&["tag", "--agent", "buyer", "--pid", &child.id().to_string()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).starts_with("buyer/"), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not judged"),
        "tag warns about old sockets: {}",
        describe(&out)
    );
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
        let _ = stdin.write_all(b"go\n");
    }
    let result = child.wait_with_output();
    assert!(
        stdout(&result).starts_with("errno=1 "),
        "tagged process is judged: {}",
        describe(&result)
    );
    let again = d.cli(&["tag", "--agent", "buyer", "--pid", "999999999"]);
    assert!(!again.status.success());
}

#[test]
fn teardown_refuses_while_agents_run_unless_forced() {
    if !privileged("teardown_refuses_while_agents_run_unless_forced") {
        return;
    }
    let mut d = Daemon::start(POLICY);
    let mut agent = agentguard_tests::ChildGuard::spawn(
        &mut d.run_command("buyer", &[PROBE, "sleep", agentguard_tests::UNTIL_TEARDOWN]),
    );
    d.wait_record("instance start", |r| r["kind"] == "instance-start");
    d.stop();
    let out = agentguard_tests::agentguard(&["teardown", "--socket", "/nonexistent.sock"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        describe(&out)
    );
    let out =
        agentguard_tests::agentguard(&["teardown", "--force", "--socket", "/nonexistent.sock"]);
    assert!(out.status.success(), "{}", describe(&out));
    let status = agent.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(!status.success(), "the agent was killed");
    assert!(!agentguard_tests::cgroup_root().exists(), "cgroups removed");
    assert!(
        !std::path::Path::new("/sys/fs/bpf/agentguard").exists(),
        "pins removed"
    );
}
