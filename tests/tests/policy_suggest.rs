//! Learn mode: an audit run, `policy suggest`, review (`policy check`), apply, and the rerun
//! is refused nothing it did before, while what it never did stays refused.

use std::fs;

use agentguard_tests::{
    Daemon, ScratchTree, agentguard, agentguard_bin, describe, privileged, stdout,
};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

/// The refusals of one instance (by cgroup id: instance names are reused) in the log.
fn refusals(d: &Daemon, cgroup_id: &serde_json::Value) -> Vec<serde_json::Value> {
    d.records()
        .into_iter()
        .filter(|r| {
            r["kind"] == "action"
                && r["cgroup_id"] == *cgroup_id
                && ["denied", "audit-denied", "killed"]
                    .contains(&r["verdict"].as_str().unwrap_or(""))
        })
        .collect()
}

#[test]
fn an_audit_run_suggested_and_applied_is_refused_nothing_and_the_rest_stays_refused() {
    if !privileged(
        "an_audit_run_suggested_and_applied_is_refused_nothing_and_the_rest_stays_refused",
    ) {
        return;
    }
    let t = ScratchTree::new("agentguard-learn");
    t.dirs(&["data", "out", "secret"]);
    for f in ["data/a.txt", "data/b.txt", "out/o.txt", "secret/s.txt"] {
        t.file(f, "x");
    }
    let base = t.base();
    let p = |rel: &str| t.p(rel);
    let ag = agentguard_bin();
    let policy = format!(
        "[agents.learner]\nmode = \"audit\"\nexec = [\"{PROBE}\", \"/bin/sh\", \"{ag}\"]\nread = [\"@system-runtime\"]\nwrite = []\n\n[agents.bystander]\nconnect = [\"127.0.0.1:9\"]\n",
        ag = ag.display()
    );
    let policy_file = base.join("policy.toml");
    fs::write(&policy_file, &policy).unwrap_or_else(|e| panic!("{e}"));
    let d = Daemon::start(&policy);
    let script = format!(
        "{PROBE} read {a}; {PROBE} read {b}; {PROBE} open-write {o}; {PROBE} exec /usr/bin/true",
        a = p("data/a.txt"),
        b = p("data/b.txt"),
        o = p("out/o.txt"),
    );
    let out = d.run("learner", &["/bin/sh", "-c", &script]);
    // Each of the four is logged (refused by Landlock on the fallback, audit-denied by the LSM).
    for path in [
        p("data/a.txt"),
        p("data/b.txt"),
        p("out/o.txt"),
        "/usr/bin/true".into(),
    ] {
        d.wait_record(&format!("for {path}"), |r| {
            r["agent"] == "learner"
                && (r["verdict"] == "denied" || r["verdict"] == "audit-denied")
                && r["target"]["path"] == path.as_str()
        });
    }
    let _ = out;

    let state = d.state_dir().to_string_lossy().into_owned();
    let policy_path = policy_file.to_string_lossy().into_owned();
    let out = agentguard(&[
        "policy",
        "suggest",
        "--agent",
        "learner",
        "--policy",
        &policy_path,
        "--since",
        "1h",
        "--enforce",
        "--state-dir",
        &state,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let suggested = stdout(&out);
    let entry =
        |times: &str, value: &str| format!("# suggested: refused {times}\n    \"{value}\",\n");
    assert!(
        suggested.contains(&entry("2 times", &p("data"))),
        "two files of one directory collapse to it: {suggested}"
    );
    assert!(
        suggested.contains(&entry("1 time", &p("out/o.txt"))),
        "{suggested}"
    );
    assert!(
        suggested.contains(&entry("1 time", "/usr/bin/true")),
        "{suggested}"
    );
    assert!(!suggested.contains("secret"), "{suggested}");
    assert!(
        suggested.contains("[agents.bystander]"),
        "the rest of the policy is kept: {suggested}"
    );
    let new_file = base.join("suggested.toml");
    fs::write(&new_file, &suggested).unwrap_or_else(|e| panic!("{e}"));
    let new_path = new_file.to_string_lossy().into_owned();
    let out = agentguard(&["policy", "check", &new_path]);
    assert!(
        out.status.success(),
        "the suggestion passes policy check: {}\n{suggested}",
        describe(&out)
    );
    let out = d.cli(&["policy", "apply", &new_path]);
    assert!(out.status.success(), "{}", describe(&out));

    // The rerun: what was refused is allowed now, and nothing is refused.
    let rerun = format!(
        "{script}; echo done; {PROBE} read {s}",
        s = p("secret/s.txt")
    );
    let out = d.run("learner", &["/bin/sh", "-c", &rerun]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first().copied(), Some("ok"), "{}", describe(&out));
    assert_eq!(lines.get(1).copied(), Some("ok"), "{}", describe(&out));
    assert_eq!(lines.get(2).copied(), Some("ok"), "{}", describe(&out));
    assert_eq!(
        lines.get(3).copied(),
        Some("done"),
        "exec ran: {}",
        describe(&out)
    );
    // Something it never did before is still refused, now in enforce mode.
    let errno = if d.lsm() { "errno=1 " } else { "errno=13 " };
    assert!(
        lines.get(4).is_some_and(|l| l.starts_with(errno)),
        "{}",
        describe(&out)
    );
    let secret = p("secret/s.txt");
    let last = d.wait_record("for the secret", |r| {
        r["agent"] == "learner"
            && r["verdict"] == "denied"
            && r["target"]["path"] == secret.as_str()
    });
    // That refusal is the rerun instance's only one (it is logged after the others would be).
    // Processes other than the instance's first are refused their own /proc/<pid> on the
    // fallback (the Rust runtime reads /proc/self/maps); no policy entry can allow that, and
    // `suggest` says so instead of suggesting it.
    let refused: Vec<_> = refusals(&d, &last["cgroup_id"])
        .into_iter()
        .filter(|r| {
            !r["target"]["path"]
                .as_str()
                .unwrap_or("")
                .starts_with("/proc/")
        })
        .collect();
    assert_eq!(refused.len(), 1, "only the secret is refused: {refused:#?}");
}
