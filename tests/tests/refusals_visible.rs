//! Every refusal is visible: refused reads, writes and execs are denied records with their
//! paths in the log on either backend (BPF LSM events; on the fallback, Landlock's audit
//! records and the exec program's kills), and `agentguard denials` inside an agent lists its
//! own refusals and nothing of another agent.

use std::{io::Write, process::Stdio};

use agentguard_tests::{
    ChildGuard, Daemon, ScratchTree, agentguard, agentguard_bin, describe, privileged, stdout,
};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

/// `allowed/` (readable), `ro/` (readable, one file), `secret/` (neither).
fn tree() -> ScratchTree {
    let t = ScratchTree::new("agentguard-visible");
    t.dirs(&["allowed", "ro", "secret"])
        .file("ro/ro.txt", "read only")
        .file("secret/a.txt", "secret")
        .file("secret/b.txt", "secret")
        .copy("/usr/bin/true", "allowed/copy-of-true");
    t
}

/// One agent per name, each with the same file rules.
fn policy(t: &ScratchTree, agents: &[&str]) -> String {
    let ag = agentguard_bin();
    agents
        .iter()
        .map(|name| {
            format!(
                "[agents.{name}]\nexec = [\"{PROBE}\", \"/bin/sh\", \"{ag}\"]\nread = [\"@system-runtime\", \"{a}\", \"{ro}\"]\nwrite = []\n\n",
                ag = ag.display(),
                a = t.p("allowed"),
                ro = t.p("ro"),
            )
        })
        .collect()
}

fn denied_with_path(d: &Daemon, what: &str, action: &str, path: &str) -> serde_json::Value {
    d.wait_record(what, |r| {
        r["kind"] == "action"
            && r["verdict"] == "denied"
            && r["action"] == action
            && r["target"]["path"] == path
    })
}

#[test]
fn refused_reads_writes_and_execs_are_denied_records_with_their_paths() {
    if !privileged("refused_reads_writes_and_execs_are_denied_records_with_their_paths") {
        return;
    }
    let t = tree();
    let d = Daemon::start(&policy(&t, &["files"]));
    let (backend, errno) = if d.lsm() {
        ("bpf-lsm", "errno=1 ")
    } else {
        ("landlock", "errno=13 ")
    };
    let secret = t.p("secret/a.txt");
    let out = d.run("files", &[PROBE, "read", &secret]);
    assert!(
        stdout(&out).starts_with(errno),
        "read refused: {}",
        describe(&out)
    );
    let ro = t.p("ro/ro.txt");
    let out = d.run("files", &[PROBE, "open-write", &ro]);
    assert!(
        stdout(&out).starts_with(errno),
        "write refused: {}",
        describe(&out)
    );
    // /usr/bin/id is in no exec list and outside every readable prefix: refused by the exec
    // hook (LSM) or by Landlock's execute right (fallback).
    let out = d.run("files", &[PROBE, "exec", "/usr/bin/id"]);
    assert!(
        stdout(&out).starts_with(errno),
        "exec refused: {}",
        describe(&out)
    );

    let read = denied_with_path(&d, "for the refused read", "file-open", &secret);
    let write = denied_with_path(&d, "for the refused write", "file-open", &ro);
    let exec = denied_with_path(&d, "for the refused exec", "exec", "/usr/bin/id");
    for (r, access) in [
        (&read, Some("read")),
        (&write, Some("write")),
        (&exec, None),
    ] {
        assert_eq!(r["backend"].as_str(), Some(backend), "{r}");
        assert_eq!(r["agent"].as_str(), Some("files"), "{r}");
        assert!(
            r["instance"]
                .as_str()
                .is_some_and(|i| i.starts_with("files/")),
            "the instance is named: {r}"
        );
        assert!(r["pid"].as_u64().is_some_and(|p| p > 0), "the pid: {r}");
        if let Some(access) = access {
            assert!(
                r["target"]["access"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == access)),
                "{access}: {r}"
            );
        }
    }

    if !d.lsm() {
        // The fallback exec program cannot refuse; it kills a binary Landlock let through
        // (a copy of an allowed binary, in a readable prefix), and says so with the path.
        let copy = t.p("allowed/copy-of-true");
        let out = d.run("files", &[PROBE, "exec", &copy]);
        assert!(!out.status.success(), "{}", describe(&out));
        let killed = d.wait_record("for the killed exec", |r| {
            r["verdict"] == "killed"
                && r["action"] == "exec"
                && r["target"]["path"] == copy.as_str()
        });
        assert_eq!(killed["backend"].as_str(), Some("tp-btf"), "{killed}");
    }

    // The same refusals through `log show --verdict denied --since`.
    let state = d.state_dir().to_string_lossy().into_owned();
    let out = agentguard(&[
        "log",
        "show",
        "--json",
        "--verdict",
        "denied",
        "--since",
        "1h",
        "--state-dir",
        &state,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let shown = stdout(&out);
    for path in [secret.as_str(), ro.as_str(), "/usr/bin/id"] {
        assert!(
            shown.contains(&format!("\"path\":\"{path}\"")),
            "{path} in {shown}"
        );
    }
    let out = agentguard(&[
        "log",
        "show",
        "--json",
        "--until",
        "2000-01-01T00:00:00Z",
        "--state-dir",
        &state,
    ]);
    assert_eq!(
        stdout(&out).trim(),
        "",
        "nothing before 2000: {}",
        describe(&out)
    );
}

#[test]
fn denials_inside_an_agent_lists_its_own_refusals_and_nothing_of_another_agent() {
    if !privileged("denials_inside_an_agent_lists_its_own_refusals_and_nothing_of_another_agent") {
        return;
    }
    let t = tree();
    let d = Daemon::start(&policy(&t, &["alpha", "beta"]));
    let (a, b) = (t.p("secret/a.txt"), t.p("secret/b.txt"));

    // beta is refused b.txt, and that refusal is in the daemon (it logs after it keeps it).
    let out = d.run("beta", &[PROBE, "read", &b]);
    assert!(!stdout(&out).starts_with("ok"), "{}", describe(&out));
    denied_with_path(&d, "for beta's refusal", "file-open", &b);

    // alpha is refused a.txt, then (once the refusal is logged) asks for its denials.
    let ag = agentguard_bin();
    let script = format!(
        "{PROBE} read {a}; read go; {ag} denials --json; echo status=$?",
        ag = ag.display()
    );
    let mut child = ChildGuard::spawn(
        d.run_command("alpha", &["/bin/sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    denied_with_path(&d, "for alpha's refusal", "file-open", &a);
    child
        .stdin
        .as_mut()
        .unwrap_or_else(|| panic!("piped stdin"))
        .write_all(b"go\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = child.wait_with_output();
    let text = stdout(&out);
    assert!(text.contains("status=0"), "{}", describe(&out));
    let denials: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mine = denials
        .iter()
        .find(|x| x["target"] == a.as_str())
        .unwrap_or_else(|| panic!("alpha's refusal is listed: {}", describe(&out)));
    assert!(
        mine["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("alpha/")),
        "{mine}"
    );
    assert_eq!(mine["verdict"].as_str(), Some("denied"), "{mine}");
    assert!(
        mine["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no rule")),
        "{mine}"
    );
    assert_eq!(
        mine["allow_with"].as_str(),
        Some(format!("[agents.alpha] read = [\"{a}\"]").as_str()),
        "{mine}"
    );
    assert!(
        denials.iter().all(|x| x["agent"] == "alpha"),
        "nothing of beta: {}",
        describe(&out)
    );
    assert!(
        !text.contains(&b),
        "beta's path never shows: {}",
        describe(&out)
    );
}

/// Lost records as the log counts them for one source (and instance, if given).
fn gap(records: &[serde_json::Value], source: &str, instance: Option<&str>) -> u64 {
    records
        .iter()
        .filter(|r| r["kind"] == "lost-events" && r["source"] == source)
        .filter(|r| instance.is_none_or(|i| r["instance"] == i))
        .filter_map(|r| r["refusals"].as_u64())
        .sum()
}

#[test]
fn a_flood_of_file_refusals_is_bounded_per_instance_counted_as_a_gap_and_audit_is_restored() {
    if !privileged(
        "a_flood_of_file_refusals_is_bounded_per_instance_counted_as_a_gap_and_audit_is_restored",
    ) {
        return;
    }
    // The BPF LSM's refusals are events under the kernel's per-instance event budget
    // (tests/tests/event_budget.rs); no audit records are read there, so there is nothing to
    // flood. Decided before a daemon starts: attaching every LSM program only to detach it at
    // once is a needless round of trampoline patching (the 6.12 guest under TCG once oopsed in
    // `bpf_lsm_file_open` doing exactly that).
    if agentguard_tests::expected_backend().as_deref() == Some("lsm") {
        return;
    }
    let before = agentguard::sys::audit::Control::open()
        .and_then(|mut c| c.status())
        .unwrap_or_else(|e| panic!("audit status: {e}"));
    let t = tree();
    let mut d = Daemon::start(&policy(&t, &["flood", "quiet"]));
    if d.lsm() {
        // The BPF LSM's refusals are events under the kernel's per-instance event budget
        // (tests/tests/event_budget.rs); no audit records are read there.
        return;
    }
    const N: u64 = 20_000;
    let secret = t.p("secret/a.txt");
    let out = d.run("flood", &[PROBE, "open-loop", &secret, &N.to_string()]);
    assert!(
        stdout(&out).contains(&format!("failed={N}")),
        "every open refused: {}",
        describe(&out)
    );
    // Another instance's refusal after the flood is logged: the audit stream is in order, so
    // every flood record before it has been read; and the flood did not cost it its record.
    let other = t.p("secret/b.txt");
    let out = d.run("quiet", &[PROBE, "read", &other]);
    assert!(stdout(&out).starts_with("errno=13 "), "{}", describe(&out));
    denied_with_path(&d, "for the other agent's refusal", "file-open", &other);
    let flood_instance = denied_with_path(&d, "for the flood", "file-open", &secret)["instance"]
        .as_str()
        .unwrap_or_else(|| panic!("the flood's instance is named"))
        .to_owned();
    // Every refusal is either a record or counted in a gap (the kernel's and the socket's drops
    // count records of any kind, so the sum may exceed N, never fall short of it).
    let records = d.wait_records("until every refusal is accounted for", |records| {
        let logged = records
            .iter()
            .filter(|r| {
                r["verdict"] == "denied"
                    && r["instance"] == flood_instance.as_str()
                    && r["target"]["path"] == secret.as_str()
            })
            .count() as u64;
        logged
            + gap(records, "landlock-budget", Some(&flood_instance))
            + gap(records, "audit-kernel", None)
            + gap(records, "audit-socket", None)
            >= N
    });
    let logged = records
        .iter()
        .filter(|r| r["verdict"] == "denied" && r["instance"] == flood_instance.as_str())
        .count() as u64;
    assert!(
        logged < N / 2,
        "the flood's records are bounded ({logged} of {N} logged)"
    );
    assert!(
        gap(&records, "landlock-budget", None)
            == gap(&records, "landlock-budget", Some(&flood_instance)),
        "only the flooding instance lost records to its budget"
    );

    d.stop();
    let after = agentguard::sys::audit::Control::open()
        .and_then(|mut c| c.status())
        .unwrap_or_else(|e| panic!("audit status: {e}"));
    assert_eq!(
        (after.enabled, after.backlog_limit),
        (before.enabled, before.backlog_limit),
        "the daemon put audit back as it found it"
    );
}
