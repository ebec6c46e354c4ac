//! Audit mode, hot reload and scale on a real kernel.

use std::{fmt::Write as _, fs, thread, time::Duration};

use agentguard_tests::{Daemon, describe, net, privileged, stdout};

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
    let mut agent = std::process::Command::new(agentguard_tests::agentguard_bin())
        .args([
            "run",
            "--agent",
            "buyer",
            "--",
            PROBE,
            "tcp-pair",
            "127.0.0.1",
            &a.port().to_string(),
            &b.port().to_string(),
            "4000",
        ])
        .env("AGENTGUARD_SOCKET", &d.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let file = d.dir.path().join("next.toml");
    let mut applied = 0;
    while agent.try_wait().ok().flatten().is_none() && applied < 40 {
        fs::write(&file, policy(a.port(), 1 + (applied % 2))).unwrap_or_else(|e| panic!("{e}"));
        let out = d.cli(&["policy", "apply", &file.to_string_lossy()]);
        assert!(out.status.success(), "{}", describe(&out));
        applied += 1;
    }
    let out = agent.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        applied >= 3,
        "applies happened while the agent connected ({applied})"
    );
    assert_eq!(
        stdout(&out).trim(),
        "a_ok=2000 a_refused=0 b_ok=0 b_refused=2000",
        "no wrong verdict during {applied} applies"
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
    let applied_records = d
        .records()
        .iter()
        .filter(|r| r["kind"] == "policy-applied")
        .count();
    assert!(
        applied_records > usize::from(applied),
        "every apply is logged ({applied_records} records)"
    );
}

#[test]
fn a_hundred_agents_with_ten_thousand_rules_load_and_apply() {
    if !privileged("a_hundred_agents_with_ten_thousand_rules_load_and_apply") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let big = |shift: u8| {
        let mut p = String::new();
        for agent in 0..100u32 {
            let _ = write!(
                p,
                "[agents.a{agent}]\nconnect = [\"127.0.0.1:{}\"",
                l.port()
            );
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
    let d = Daemon::start(&big(0));
    let out = d.run("a57", &[PROBE, "tcp", "127.0.0.1", &l.port().to_string()]);
    assert_eq!(stdout(&out).trim(), "ok", "{}", describe(&out));
    let file = d.dir.path().join("big.toml");
    fs::write(&file, big(1)).unwrap_or_else(|e| panic!("{e}"));
    let out = d.cli(&["policy", "apply", &file.to_string_lossy()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("10000 rules"), "{}", describe(&out));
    thread::sleep(Duration::from_millis(200));
    let out = d.run(
        "a99",
        &[
            PROBE,
            "tcp",
            "127.0.0.1",
            &(l.port().wrapping_add(1)).to_string(),
        ],
    );
    assert!(stdout(&out).starts_with("errno=1 "), "{}", describe(&out));
}
