//! Budgets in the kernel and the operator's kill switch: deny, freeze, thaw, kill.

use std::{
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::{Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use agentguard_tests::{ChildGuard, Daemon, describe, net, patience, privileged, stdout};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

/// Seconds an agent sleeps when only the test (or its [`ChildGuard`]) should end it.
const FOREVER: &str = agentguard_tests::UNTIL_TEARDOWN;

fn policy(port: u16, throttle: &str) -> String {
    format!(
        "[agents.buyer]\nconnect = [\"127.0.0.1:{port}\"]\n\n[agents.buyer.throttle]\n{throttle}\n\n[agents.buyer.sub.search]\nconnect = [\"127.0.0.1:{port}\"]\n"
    )
}

/// Starts `agentguard run --agent AGENT -- CMD...` in the background.
fn spawn(d: &Daemon, agent: &str, cmd: &[&str]) -> ChildGuard {
    ChildGuard::spawn(d.run_command(agent, cmd).stdout(Stdio::piped()))
}

/// The status of one agent's instances: (name, state, pids).
fn instances(d: &Daemon, agent: &str) -> Vec<(String, String, Vec<u64>)> {
    let out = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["name"] == agent)
        .flat_map(|a| a["instances"].as_array().cloned().unwrap_or_default())
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_owned(),
                i["state"].as_str().unwrap_or_default().to_owned(),
                i["pids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(serde_json::Value::as_u64)
                    .collect(),
            )
        })
        .collect()
}

/// Polls `cond` until it holds; `timeout` is the native-host deadline, scaled by [`patience`].
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let timeout = patience(timeout);
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// user + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", describe(out));
}

#[test]
fn a_connect_budget_refuses_the_excess_with_eperm() {
    if !privileged("a_connect_budget_refuses_the_excess_with_eperm") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(&policy(l.port(), "connect = \"5/h\""));
    let out = d.run(
        "buyer",
        &[PROBE, "tcp-loop", "127.0.0.1", &l.port().to_string(), "50"],
    );
    assert_eq!(stdout(&out).trim(), "ok=5 eperm=45", "{}", describe(&out));
    let ev = d.wait_record("a throttled connect", |r| r["verdict"] == "throttled");
    assert_eq!(ev["action"].as_str(), Some("connect"), "{ev}");
}

#[test]
fn an_agent_scoped_budget_is_shared_by_its_processes() {
    if !privileged("an_agent_scoped_budget_is_shared_by_its_processes") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(&policy(l.port(), "connect = \"5/h\"\nscope = \"agent\""));
    let port = l.port().to_string();
    let script =
        format!("{PROBE} tcp-loop 127.0.0.1 {port} 3; {PROBE} tcp-loop 127.0.0.1 {port} 3");
    let out = d.run("buyer", &["/bin/sh", "-c", &script]);
    assert_eq!(
        stdout(&out),
        "ok=3 eperm=0\nok=2 eperm=1\n",
        "{}",
        describe(&out)
    );
}

#[test]
fn a_breach_with_on_exceed_freeze_freezes_the_instance() {
    if !privileged("a_breach_with_on_exceed_freeze_freezes_the_instance") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(&policy(
        l.port(),
        "connect = \"3/min\"\non_exceed = \"freeze\"",
    ));
    let script = format!(
        "{PROBE} tcp-loop 127.0.0.1 {} 10; exec {PROBE} sleep {FOREVER}",
        l.port()
    );
    let mut agent = spawn(&d, "buyer", &["/bin/sh", "-c", &script]);
    wait_for("the instance to be frozen", Duration::from_secs(30), || {
        instances(&d, "buyer").iter().any(|i| i.1 == "frozen")
    });
    let ev = d.wait_record("the freeze", |r| r["kind"] == "freeze");
    assert_eq!(ev["by"]["type"].as_str(), Some("daemon"), "{ev}");
    assert!(
        ev["budget"]
            .as_str()
            .is_some_and(|b| b.contains("connect 3/min")),
        "{ev}"
    );
    let name = instances(&d, "buyer")[0].0.clone();
    // `thaw` returns once the kernel reports the instance thawed. The freeze may have landed
    // before the loop finished, so the instance can breach (and be frozen) again right after:
    // that is the policy working, not a stale breach.
    ok(&d.cli(&["thaw", &name]));
    ok(&d.cli(&["kill", &name]));
    let status = agent.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(!status.success());
}

#[test]
fn a_breach_with_on_exceed_kill_kills_the_instance() {
    if !privileged("a_breach_with_on_exceed_kill_kills_the_instance") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(&policy(
        l.port(),
        "connect = \"3/min\"\non_exceed = \"kill\"",
    ));
    // The sleep outlasts any deadline of this suite: only the kill can end it.
    let script = format!(
        "{PROBE} tcp-loop 127.0.0.1 {} 10; exec {PROBE} sleep {}",
        l.port(),
        patience(Duration::from_secs(600)).as_secs()
    );
    let out = d.run("buyer", &["/bin/sh", "-c", &script]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "killed by the budget, not by the end of the sleep: {}",
        describe(&out)
    );
    let ev = d.wait_record("the kill", |r| r["kind"] == "kill");
    assert_eq!(ev["ok"].as_bool(), Some(true), "{ev}");
}

#[test]
fn freeze_stops_a_busy_loop_and_thaw_resumes_it() {
    if !privileged("freeze_stops_a_busy_loop_and_thaw_resumes_it") {
        return;
    }
    let d = Daemon::start(&policy(9, ""));
    let mut agent = spawn(&d, "buyer", &[PROBE, "spin"]);
    wait_for("the instance", Duration::from_secs(20), || {
        instances(&d, "buyer").iter().any(|i| !i.2.is_empty())
    });
    let (name, _, pids) = instances(&d, "buyer").remove(0);
    let pid = pids[0];
    let out = d.cli(&["freeze", &name]);
    ok(&out);
    assert!(stdout(&out).contains(&name), "{}", describe(&out));
    let frozen_at = cpu_ticks(pid);
    thread::sleep(Duration::from_millis(600));
    assert_eq!(cpu_ticks(pid), frozen_at, "no CPU time while frozen");
    ok(&d.cli(&["thaw", &name]));
    wait_for(
        "CPU time to advance after thaw",
        Duration::from_secs(10),
        || cpu_ticks(pid) > frozen_at,
    );
    ok(&d.cli(&["kill", "buyer"]));
    let _ = agent.wait();
    let freeze = d.wait_record("the freeze record", |r| r["kind"] == "freeze");
    assert_eq!(freeze["by"]["type"].as_str(), Some("peer"), "{freeze}");
    assert!(freeze["took_ms"].is_u64(), "{freeze}");
}

#[test]
fn kill_leaves_no_process_behind() {
    if !privileged("kill_leaves_no_process_behind") {
        return;
    }
    let d = Daemon::start(&policy(9, ""));
    // A child, a double-forked grandchild that re-parents away, and the shell itself.
    let script = format!(
        "{PROBE} sleep {FOREVER} & (setsid {PROBE} sleep {FOREVER} &) ; exec {PROBE} sleep {FOREVER}"
    );
    let mut agent = spawn(&d, "buyer", &["/bin/sh", "-c", &script]);
    wait_for("three processes", Duration::from_secs(20), || {
        instances(&d, "buyer")
            .first()
            .is_some_and(|i| i.2.len() >= 3)
    });
    let pids = instances(&d, "buyer")[0].2.clone();
    ok(&d.cli(&["kill", "buyer"]));
    let _ = agent.wait();
    for pid in pids {
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "process {pid} survived the kill");
    }
    wait_for("the instance to be gone", Duration::from_secs(10), || {
        instances(&d, "buyer").is_empty()
    });
}

#[test]
fn freezing_a_parent_freezes_its_sub_agents() {
    if !privileged("freezing_a_parent_freezes_its_sub_agents") {
        return;
    }
    let d = Daemon::start(&policy(9, ""));
    let mut parent = spawn(&d, "buyer", &[PROBE, "sleep", FOREVER]);
    wait_for("the parent instance", Duration::from_secs(20), || {
        !instances(&d, "buyer").is_empty()
    });
    let mut sub = spawn(&d, "buyer/search", &[PROBE, "sleep", FOREVER]);
    wait_for("the sub-agent instance", Duration::from_secs(20), || {
        !instances(&d, "buyer/search").is_empty()
    });
    let (sub_name, _, _) = instances(&d, "buyer/search").remove(0);
    assert!(
        sub_name.starts_with("buyer/") && sub_name.contains("/search/"),
        "{sub_name}"
    );
    ok(&d.cli(&["freeze", "buyer"]));
    // The kernel updates each cgroup's own `frozen` flag as its tasks stop; the sub-agent's
    // may trail its parent's report by a moment (seen once in a loaded host run).
    wait_for(
        "the sub-agent to be frozen with its parent",
        Duration::from_secs(10),
        || instances(&d, "buyer/search")[0].1 == "frozen",
    );
    ok(&d.cli(&["kill", "buyer"]));
    let _ = parent.wait();
    let _ = sub.wait();
    // The daemon notices the emptied cgroups asynchronously (inotify on cgroup.events).
    wait_for("both instances to be gone", Duration::from_secs(10), || {
        instances(&d, "buyer/search").is_empty() && instances(&d, "buyer").is_empty()
    });
}

/// Links of agentguard's open-budget programs attached in the kernel right now, read from the
/// kernel's own lists (every bpf link and the program it runs), not from agentguard's pins.
/// The kernel keeps 15 characters of a program name: all three read `ag_open_budget_`.
fn open_budget_links() -> usize {
    let programs: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| n.starts_with("ag_open_budget"))
        })
        .map(|p| p.id())
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| programs.contains(&l.program_id()))
        .count()
}

#[test]
fn an_open_budget_can_freeze_an_instance() {
    if !privileged("an_open_budget_can_freeze_an_instance") {
        return;
    }
    let open_budget = "open = \"20/min\"\non_exceed = \"freeze\"";
    // Without an open budget no syscall tracepoint is attached: every task on the host would
    // pay for it on every syscall.
    let d = Daemon::start(&policy(9, ""));
    let fallback = !d.lsm();
    assert_eq!(open_budget_links(), 0, "open-budget links without a budget");
    let status = stdout(&d.cli(&["status"]));
    if fallback {
        assert!(
            status.contains("syscall tracepoints not attached"),
            "{status}"
        );
    }
    // Applying a policy with one attaches them (on the fallback; the LSM counts in file_open),
    // and the budget is enforced.
    let file = d.state_dir().join("open-budget.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    write(&policy(9, open_budget));
    ok(&d.cli(&["policy", "apply", &file.to_string_lossy()]));
    assert_eq!(open_budget_links(), if fallback { 3 } else { 0 });
    let status = stdout(&d.cli(&["status"]));
    if fallback {
        assert!(status.contains("(attached)"), "{status}");
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let script = format!(
        "{PROBE} open-loop {} 200; exec {PROBE} sleep {FOREVER}",
        target.display()
    );
    let mut agent = spawn(&d, "buyer", &["/bin/sh", "-c", &script]);
    wait_for("the instance to be frozen", Duration::from_secs(30), || {
        instances(&d, "buyer").iter().any(|i| i.1 == "frozen")
    });
    let ev = d.wait_record("the freeze", |r| r["kind"] == "freeze");
    assert!(
        ev["budget"]
            .as_str()
            .is_some_and(|b| b.contains("open 20/min")),
        "{ev}"
    );
    ok(&d.cli(&["kill", "buyer"]));
    let _ = agent.wait();
    // Pinned: they outlive the daemon, like every other link.
    let mut d = d;
    let attached = if fallback { 3 } else { 0 };
    d.kill9();
    assert_eq!(open_budget_links(), attached, "after kill -9");
    // A daemon that starts with a policy without open budgets (the start-up file has none)
    // removes the adopted ones.
    d.restart();
    assert_eq!(
        open_budget_links(),
        0,
        "after a restart without open budgets"
    );
    // And applying, then removing, the budget attaches and detaches them again.
    ok(&d.cli(&["policy", "apply", &file.to_string_lossy()]));
    assert_eq!(
        open_budget_links(),
        attached,
        "after re-applying the budget"
    );
    write(&policy(9, ""));
    ok(&d.cli(&["policy", "apply", &file.to_string_lossy()]));
    assert_eq!(
        open_budget_links(),
        0,
        "open-budget links after the budget went"
    );
}
