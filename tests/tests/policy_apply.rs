//! Audit mode, hot reload and scale on a real kernel.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    process::Stdio,
};

use agentguard_tests::{ChildGuard, Daemon, describe, net, privileged, stdout};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

#[test]
fn audit_mode_logs_would_be_refusals_and_allows_them() {
    if !privileged("audit_mode_logs_would_be_refusals_and_allows_them") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start("[agents.watch]\nmode = \"audit\"\nconnect = []\n");
    let out = d.run("watch", &[PROBE, "tcp", "127.0.0.1", &l.port().to_string()]);
    assert_eq!(
        stdout(&out).trim(),
        "ok",
        "audit mode allows: {}",
        describe(&out)
    );
    let ev = d.wait_record("the audit-denied connect", |r| r["action"] == "connect");
    assert_eq!(ev["verdict"].as_str(), Some("audit-denied"), "{ev}");
}

/// A policy allowing port `a` for agent `buyer`, plus `filler` rules that change between
/// generations.
fn policy(a: u16, filler: u8) -> String {
    let mut p = format!("[agents.buyer]\nconnect = [\"127.0.0.1:{a}\"");
    for i in 0..50u8 {
        let _ = write!(p, ", \"10.{filler}.{i}.0/24:443\"");
    }
    p.push_str("]\n");
    p
}

#[test]
fn apply_swaps_rules_atomically_under_load_and_a_bad_apply_changes_nothing() {
    if !privileged("apply_swaps_rules_atomically_under_load_and_a_bad_apply_changes_nothing") {
        return;
    }
    let a = net::Tcp::listen("127.0.0.1");
    let b = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(&policy(a.port(), 0));
    // The agent connects until told to stop, so the applies below always overlap its load,
    // however fast or slow this machine is.
    let mut agent = ChildGuard::spawn(
        d.run_command(
            "buyer",
            &[
                PROBE,
                "tcp-pair-until-eof",
                "127.0.0.1",
                &a.port().to_string(),
                &b.port().to_string(),
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped()),
    );
    let mut lines = BufReader::new(agent.stdout.take().unwrap_or_else(|| panic!("no stdout")))
        .lines()
        .map_while(Result::ok);
    assert_eq!(
        lines.next().as_deref(),
        Some("connecting"),
        "the agent started"
    );
    let file = d.dir.path().join("next.toml");
    const APPLIES: u8 = 6;
    for applied in 0..APPLIES {
        fs::write(&file, policy(a.port(), 1 + (applied % 2))).unwrap_or_else(|e| panic!("{e}"));
        let out = d.cli(&["policy", "apply", &file.to_string_lossy()]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    drop(agent.stdin.take());
    let summary = lines.next().unwrap_or_default();
    let status = agent.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "the agent exited with {status}");
    let counts: Vec<usize> = summary
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=')?.1.parse().ok())
        .collect();
    let [a_ok, a_refused, b_ok, b_refused] = counts[..] else {
        panic!("agent summary: {summary:?}");
    };
    assert!(
        a_ok >= 1 && b_refused >= 1 && a_refused == 0 && b_ok == 0,
        "no wrong verdict during {APPLIES} applies: {summary}"
    );

    // A bad policy is refused with its diagnostics, and the old one stays in force.
    fs::write(&file, "[agents.buyer]\nconnect = [\"127.0.0.1\"]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = d.cli(&["policy", "apply", &file.to_string_lossy()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("next.toml:2:12: agents.buyer.connect[0]"),
        "{}",
        describe(&out)
    );
    let out = d.run("buyer", &[PROBE, "tcp", "127.0.0.1", &a.port().to_string()]);
    assert_eq!(
        stdout(&out).trim(),
        "ok",
        "the old policy still allows A: {}",
        describe(&out)
    );
    // The start's policy and every apply; the log hands records to the kernel on its next
    // tick, which may come after the reply.
    let applied = |records: &[serde_json::Value]| {
        records
            .iter()
            .filter(|r| r["kind"] == "policy-applied")
            .count()
    };
    let records = d.wait_records("a policy-applied record for every apply", |r| {
        applied(r) > usize::from(APPLIES)
    });
    assert_eq!(
        applied(&records),
        usize::from(APPLIES) + 1,
        "the refused apply is not logged as applied"
    );
}

#[test]
fn a_hundred_agents_with_ten_thousand_rules_load_and_apply() {
    if !privileged("a_hundred_agents_with_ten_thousand_rules_load_and_apply") {
        return;
    }
    // Generation 0 allows every agent `old`, generation 1 `new`: a probe of each after the
    // apply shows the new rules are in force and the old ones gone.
    let old = net::Tcp::listen("127.0.0.1");
    let new = net::Tcp::listen("127.0.0.1");
    let big = |shift: u8| {
        let port = if shift.is_multiple_of(2) {
            old.port()
        } else {
            new.port()
        };
        let mut p = String::new();
        for agent in 0..100u32 {
            let _ = write!(p, "[agents.a{agent}]\nconnect = [\"127.0.0.1:{port}\"");
            for rule in 0..99u32 {
                let _ = write!(
                    p,
                    ", \"10.{}.{}.{}/32:{}\"",
                    agent,
                    rule,
                    shift,
                    1000 + rule
                );
            }
            p.push_str("]\n");
        }
        p
    };
    let tcp = |d: &Daemon, agent: &str, port: u16| {
        let out = d.run(agent, &[PROBE, "tcp", "127.0.0.1", &port.to_string()]);
        stdout(&out).trim().to_owned() + &describe(&out)
    };
    let d = Daemon::start(&big(0));
    assert!(
        tcp(&d, "a57", old.port()).starts_with("ok"),
        "generation 0 allows old"
    );
    assert!(
        tcp(&d, "a57", new.port()).starts_with("errno=1 "),
        "generation 0 refuses new"
    );
    let file = d.dir.path().join("big.toml");
    fs::write(&file, big(1)).unwrap_or_else(|e| panic!("{e}"));
    let out = d.cli(&["policy", "apply", &file.to_string_lossy()]);
    assert!(out.status.success(), "{}", describe(&out));
    // 10,000 connect entries and each agent's implicit rule for the agent socket.
    assert!(stdout(&out).contains("10100 rules"), "{}", describe(&out));
    // The apply's reply comes after the generation flip: no wait needed.
    for agent in ["a0", "a99"] {
        let allowed = tcp(&d, agent, new.port());
        assert!(
            allowed.starts_with("ok"),
            "{agent}: generation 1 allows new: {allowed}"
        );
        let refused = tcp(&d, agent, old.port());
        assert!(
            refused.starts_with("errno=1 "),
            "{agent}: generation 1 refuses old: {refused}"
        );
    }
    // Each apply removes the generation it replaced (after the reply): more 10,000-rule
    // policies, each with rules of its own, than the rule map (65,536 entries) could hold
    // leftovers of, apply, and the last one is in force.
    for round in 2..9u8 {
        fs::write(&file, big(round)).unwrap_or_else(|e| panic!("{e}"));
        let out = d.cli(&["policy", "apply", &file.to_string_lossy()]);
        assert!(out.status.success(), "apply {round}: {}", describe(&out));
    }
    let allowed = tcp(&d, "a42", old.port());
    assert!(
        allowed.starts_with("ok"),
        "the last apply allows old: {allowed}"
    );
    let refused = tcp(&d, "a42", new.port());
    assert!(
        refused.starts_with("errno=1 "),
        "the last apply refuses new: {refused}"
    );
}
