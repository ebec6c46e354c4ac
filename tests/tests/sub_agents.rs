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
