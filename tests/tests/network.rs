//! The network allowlist, enforced by cgroup sock_addr programs on a real kernel.

use agentguard_tests::{Daemon, assert_eperm, describe, net, privileged, run_in_cgroup, stdout};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

/// Listeners on allowed and denied ports, TCP and UDP, IPv4 and IPv6.
struct Ports {
    tcp4_ok: net::Tcp,
    tcp4_no: net::Tcp,
    tcp6_ok: net::Tcp,
    tcp6_no: net::Tcp,
    udp4_ok: net::Udp,
    udp4_no: net::Udp,
    udp6_ok: net::Udp,
    udp6_no: net::Udp,
}

impl Ports {
    fn new() -> Self {
        Self {
            tcp4_ok: net::Tcp::listen("127.0.0.1"),
            tcp4_no: net::Tcp::listen("127.0.0.1"),
            tcp6_ok: net::Tcp::listen("::1"),
            tcp6_no: net::Tcp::listen("::1"),
            udp4_ok: net::Udp::bind("127.0.0.1"),
            udp4_no: net::Udp::bind("127.0.0.1"),
            udp6_ok: net::Udp::bind("::1"),
            udp6_no: net::Udp::bind("::1"),
        }
    }

    fn policy(&self) -> String {
        format!(
            "[agents.buyer]\nconnect = [\"127.0.0.1:{}\", \"127.0.0.0/8:{}\", \"[::1]:{}\", \"[::1/128]:{}\"]\n",
            self.tcp4_ok.port(),
            self.udp4_ok.port(),
            self.tcp6_ok.port(),
            self.udp6_ok.port()
        )
    }
}

#[test]
fn tcp_connects_are_allowed_or_refused_with_eperm() {
    if !privileged("tcp_connects_are_allowed_or_refused_with_eperm") {
        return;
    }
    let p = Ports::new();
    let d = Daemon::start(&p.policy());
    assert_eq!(
        d.probe(
            "buyer",
            &["tcp", "127.0.0.1", &p.tcp4_ok.port().to_string()]
        ),
        "ok",
        "allowed IPv4 TCP"
    );
    assert_eperm(
        &d.probe(
            "buyer",
            &["tcp", "127.0.0.1", &p.tcp4_no.port().to_string()],
        ),
        "denied IPv4 TCP",
    );
    assert_eq!(
        d.probe("buyer", &["tcp", "::1", &p.tcp6_ok.port().to_string()]),
        "ok",
        "allowed IPv6 TCP"
    );
    assert_eperm(
        &d.probe("buyer", &["tcp", "::1", &p.tcp6_no.port().to_string()]),
        "denied IPv6 TCP",
    );
}

#[test]
fn unconnected_udp_sends_cannot_bypass_the_allowlist() {
    if !privileged("unconnected_udp_sends_cannot_bypass_the_allowlist") {
        return;
    }
    let p = Ports::new();
    let d = Daemon::start(&p.policy());
    assert_eq!(
        d.probe(
            "buyer",
            &["udp", "127.0.0.1", &p.udp4_ok.port().to_string()]
        ),
        "ok"
    );
    assert!(p.udp4_ok.received(), "allowed datagram must arrive");
    assert_eperm(
        &d.probe(
            "buyer",
            &["udp", "127.0.0.1", &p.udp4_no.port().to_string()],
        ),
        "denied IPv4 sendto",
    );
    assert!(!p.udp4_no.received(), "denied datagram must not arrive");
    assert_eq!(
        d.probe("buyer", &["udp", "::1", &p.udp6_ok.port().to_string()]),
        "ok"
    );
    assert_eperm(
        &d.probe("buyer", &["udp", "::1", &p.udp6_no.port().to_string()]),
        "denied IPv6 sendto",
    );
    assert_eperm(
        &d.probe(
            "buyer",
            &["udp-connect", "127.0.0.1", &p.udp4_no.port().to_string()],
        ),
        "denied UDP connect",
    );
}

/// connect6 sees `::ffff:a.b.c.d` and must judge it as IPv4; a UDP send to a mapped address
/// on an IPv6 socket reaches sendmsg4 instead. Both paths are tested.
#[test]
fn ipv4_mapped_ipv6_is_judged_as_ipv4_on_both_paths() {
    if !privileged("ipv4_mapped_ipv6_is_judged_as_ipv4_on_both_paths") {
        return;
    }
    let p = Ports::new();
    let d = Daemon::start(&p.policy());
    assert_eq!(
        d.probe(
            "buyer",
            &["tcp-mapped", "127.0.0.1", &p.tcp4_ok.port().to_string()]
        ),
        "ok",
        "mapped TCP to an allowed IPv4 destination"
    );
    assert_eperm(
        &d.probe(
            "buyer",
            &["tcp-mapped", "127.0.0.1", &p.tcp4_no.port().to_string()],
        ),
        "mapped TCP to a denied IPv4 destination",
    );
    assert_eq!(
        d.probe(
            "buyer",
            &["udp-mapped", "127.0.0.1", &p.udp4_ok.port().to_string()]
        ),
        "ok",
        "mapped UDP to an allowed IPv4 destination"
    );
    assert!(p.udp4_ok.received());
    assert_eperm(
        &d.probe(
            "buyer",
            &["udp-mapped", "127.0.0.1", &p.udp4_no.port().to_string()],
        ),
        "mapped UDP to a denied IPv4 destination",
    );
}

#[test]
fn untagged_processes_are_never_touched() {
    if !privileged("untagged_processes_are_never_touched") {
        return;
    }
    let p = Ports::new();
    let _d = Daemon::start(&p.policy());
    let out = std::process::Command::new(PROBE)
        .args(["tcp", "127.0.0.1", &p.tcp4_no.port().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stdout(&out).trim(), "ok", "{}", describe(&out));
}

#[test]
fn verdicts_are_logged_with_agent_instance_and_rule() {
    if !privileged("verdicts_are_logged_with_agent_instance_and_rule") {
        return;
    }
    let p = Ports::new();
    let d = Daemon::start(&p.policy());
    let ok_port = p.tcp4_ok.port();
    let no_port = p.tcp4_no.port();
    assert_eq!(
        d.probe("buyer", &["tcp", "127.0.0.1", &ok_port.to_string()]),
        "ok"
    );
    assert_eperm(
        &d.probe("buyer", &["tcp", "127.0.0.1", &no_port.to_string()]),
        "denied",
    );
    let net = |r: &serde_json::Value, port: u16| {
        r["action"] == "connect" && r["target"]["port"].as_u64() == Some(u64::from(port))
    };
    let a = d.wait_record("allowed connect", |r| net(r, ok_port));
    let n = d.wait_record("denied connect", |r| net(r, no_port));
    assert_eq!(
        (
            a["agent"].as_str(),
            a["verdict"].as_str(),
            a["backend"].as_str()
        ),
        (Some("buyer"), Some("allowed"), Some("cgroup-sock-addr"))
    );
    assert_eq!(
        a["rule"].as_str(),
        Some(format!("127.0.0.1:{ok_port}").as_str())
    );
    assert!(
        a["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("buyer/"))
    );
    assert_eq!(
        (
            a["target"]["addr"].as_str(),
            a["target"]["protocol"].as_str()
        ),
        (Some("127.0.0.1"), Some("tcp"))
    );
    assert_eq!(
        (n["verdict"].as_str(), n["rule"].as_str()),
        (Some("denied"), None)
    );
    assert_eq!(n["comm"].as_str(), Some("agentguard-prob"));
    let verify =
        agentguard_tests::agentguard(&["log", "verify", "--state-dir", &d.state.to_string_lossy()]);
    assert!(
        verify.status.success(),
        "the log verifies: {}",
        describe(&verify)
    );
}

#[test]
fn enforcement_survives_kill_9_and_a_restart_readopts() {
    if !privileged("enforcement_survives_kill_9_and_a_restart_readopts") {
        return;
    }
    let p = Ports::new();
    let mut d = Daemon::start(&p.policy());
    // A long-lived agent started before the crash.
    let mut agent = agentguard_tests::ChildGuard::spawn(
        &mut d.run_command("buyer", &[PROBE, "sleep", agentguard_tests::UNTIL_TEARDOWN]),
    );
    d.wait_record("instance start", |r| r["kind"] == "instance-start");
    d.kill9();
    // With no daemon at all, a process in the agent's cgroup is still refused.
    let instance = agentguard_tests::instance_cgroup("buyer");
    let out = run_in_cgroup(
        &instance,
        &[PROBE, "tcp", "127.0.0.1", &p.tcp4_no.port().to_string()],
    );
    assert!(
        stdout(&out).starts_with("errno=1 "),
        "after kill -9: {}",
        describe(&out)
    );
    let out = run_in_cgroup(
        &instance,
        &[PROBE, "tcp", "127.0.0.1", &p.tcp4_ok.port().to_string()],
    );
    assert_eq!(
        stdout(&out).trim(),
        "ok",
        "after kill -9: {}",
        describe(&out)
    );

    d.restart();
    let status = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    let instances = v["agents"][0]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        instances.len(),
        1,
        "the running agent is re-adopted: {}",
        describe(&status)
    );
    assert!(
        d.output().contains("restart=true"),
        "programs adopted from pins:\n{}",
        d.output()
    );
    assert_eperm(
        &d.probe(
            "buyer",
            &["tcp", "127.0.0.1", &p.tcp4_no.port().to_string()],
        ),
        "after restart",
    );
    // A clean stop (SIGTERM) keeps enforcement in place too.
    d.stop();
    let out = run_in_cgroup(
        &instance,
        &[PROBE, "tcp", "127.0.0.1", &p.tcp4_no.port().to_string()],
    );
    assert!(
        stdout(&out).starts_with("errno=1 "),
        "after a clean stop: {}",
        describe(&out)
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
