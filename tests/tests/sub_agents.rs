//! Sub-agents: an agent starts its own declared sub-agents through the agent socket; each gets
//! its own identity nested in the parent instance and never more than the parent.

use agentguard_tests::{Daemon, agentguard_bin, describe, net, privileged, stdout};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

#[test]
fn an_agent_starts_its_own_sub_agents_and_nothing_else() {
    if !privileged("an_agent_starts_its_own_sub_agents_and_nothing_else") {
        return;
    }
    let a = net::Tcp::listen("127.0.0.1");
    let b = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(&format!(
        "[agents.buyer]\nconnect = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\n\n[agents.buyer.sub.search]\nconnect = [\"127.0.0.1:{a}\"]\n\n[agents.other]\nconnect = []\n",
        a = a.port(),
        b = b.port()
    ));
    let ag = agentguard_bin();
    let ag = ag.to_string_lossy();
    let script = format!(
        "{PROBE} tcp 127.0.0.1 {b}; {ag} run --agent buyer/search -- {PROBE} tcp 127.0.0.1 {b}; {ag} run --agent buyer/search -- {PROBE} tcp 127.0.0.1 {a}; {ag} run --agent other -- {PROBE} exit 0; echo other=$?",
        a = a.port(),
        b = b.port()
    );
    let out = d.run("buyer", &["/bin/sh", "-c", &script]);
    let text_out = stdout(&out);
    let lines: Vec<&str> = text_out.lines().collect();
    let text = describe(&out);
    assert_eq!(lines.first(), Some(&"ok"), "the parent reaches B: {text}");
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("errno=1 ")),
        "the sub-agent is refused B: {text}"
    );
    assert_eq!(lines.get(2), Some(&"ok"), "the sub-agent reaches A: {text}");
    assert_eq!(
        lines.get(3),
        Some(&"other=1"),
        "an agent cannot start another agent: {text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may only start its own sub-agents"),
        "{text}"
    );
    let ev = d.wait_record("the sub-agent's refusal", |r| {
        r["verdict"] == "denied"
            && r["agent"] == "buyer/search"
            && r["target"]["port"].as_u64() == Some(u64::from(b.port()))
    });
    let instance = ev["instance"].as_str().unwrap_or_default();
    assert!(
        instance.starts_with("buyer/") && instance.contains("/search/"),
        "events name parent and sub-agent: {ev}"
    );
    let start = d.wait_record("the sub-agent start", |r| {
        r["kind"] == "instance-start" && r["how"] == "sub-agent"
    });
    assert_eq!(start["by"]["type"].as_str(), Some("agent"), "{start}");
}

#[test]
fn the_agent_socket_refuses_processes_outside_agents() {
    if !privileged("the_agent_socket_refuses_processes_outside_agents") {
        return;
    }
    let d =
        Daemon::start("[agents.buyer]\nconnect = []\n[agents.buyer.sub.search]\nconnect = []\n");
    let out = std::process::Command::new(agentguard_bin())
        .args(["status", "--socket"])
        .arg(d.agent_socket())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("agent socket serves processes inside agent instances"),
        "{}",
        describe(&out)
    );
}

/// The refusal a sub-agent gets for an exec or a read its parent may not do: EPERM from the BPF
/// LSM; on the fallback the parent's Landlock domain, which the sub-agent inherits, says EACCES.
fn refused(d: &Daemon, line: &str) -> bool {
    if d.lsm() {
        line.starts_with("errno=1 ")
    } else {
        line.starts_with("errno=13 ")
    }
}

#[test]
fn a_sub_agent_without_exec_or_file_rules_is_held_to_its_parents() {
    if !privileged("a_sub_agent_without_exec_or_file_rules_is_held_to_its_parents") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("agentguard-sub")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let allowed = dir.path().join("allowed");
    let secret = dir.path().join("secret");
    for d in [&allowed, &secret] {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(allowed.join("data.txt"), "data").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(secret.join("key.txt"), "secret").unwrap_or_else(|e| panic!("{e}"));
    // Agents run as dynamic uids: every file is readable by permissions, so only the policy
    // refuses.
    {
        use std::os::unix::fs::PermissionsExt as _;
        for (p, mode) in [
            (dir.path().to_path_buf(), 0o755),
            (allowed.clone(), 0o755),
            (secret.clone(), 0o755),
            (allowed.join("data.txt"), 0o644),
            (secret.join("key.txt"), 0o644),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    let ag = agentguard_bin();
    let ag = ag.to_string_lossy();
    // The sub-agent declares only a (empty) connect list: no exec, read or write rules at all.
    let d = Daemon::start(&format!(
        "[agents.buyer]\nexec = [\"{PROBE}\", \"{ag}\"]\nread = [\"@system-runtime\", \"{allowed}\"]\n\n[agents.buyer.sub.search]\nconnect = []\n",
        allowed = allowed.display(),
    ));
    // A process of buyer has itself moved into buyer/search (through the agent socket), then
    // acts there.
    let agent_socket = d.agent_socket();
    let agent_socket = agent_socket.to_string_lossy();
    let as_sub = |args: &[&str]| {
        // The agent socket named outright: under file rules `run` may not be able to read
        // /proc to find out that it runs inside an agent.
        let mut cmd = vec![
            PROBE,
            "exec",
            &ag,
            "run",
            "--socket",
            &agent_socket,
            "--agent",
            "buyer/search",
            "--",
            PROBE,
        ];
        cmd.extend_from_slice(args);
        let out = d.run("buyer", &cmd);
        (stdout(&out).trim().to_owned(), describe(&out))
    };
    let (line, text) = as_sub(&["exec", "/usr/bin/id"]);
    assert!(
        refused(&d, &line),
        "the sub-agent runs a binary its parent may not: {text}"
    );
    let secret_file = secret.join("key.txt");
    let (line, text) = as_sub(&["read", &secret_file.to_string_lossy()]);
    assert!(
        refused(&d, &line),
        "the sub-agent reads a file its parent may not: {text}"
    );
    let allowed_file = allowed.join("data.txt");
    let (line, text) = as_sub(&["read", &allowed_file.to_string_lossy()]);
    assert_eq!(
        line, "ok",
        "the sub-agent reads what its parent may: {text}"
    );
    if d.lsm() {
        // The kernel names the parent's rules as the reason.
        for (what, action) in [("exec", "exec"), ("read", "file-open")] {
            d.wait_record(
                &format!("the sub-agent's {what} refused by its parent"),
                |r| {
                    r["action"] == action
                        && r["verdict"] == "denied"
                        && r["agent"] == "buyer/search"
                        && r["flags"]
                            .as_array()
                            .is_some_and(|f| f.iter().any(|x| x == "parent-denied"))
                },
            );
        }
    }
}
