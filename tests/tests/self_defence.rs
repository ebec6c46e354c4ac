//! An agent turning on agentguard itself: leaving its cgroup, unpinning the programs.

use agentguard_tests::{Daemon, assert_eperm, cgroup_root, describe, net, privileged, stdout};

#[test]
fn an_agent_cannot_unpin_enforcement() {
    if !privileged("an_agent_cannot_unpin_enforcement") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start("[agents.buyer]\nconnect = []\n");
    let link = std::fs::read_dir("/sys/fs/bpf/agentguard")
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.path().join("links/ag_connect4"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no pinned connect4 link"));
    let out = d.probe("buyer", &["unlink", &link.to_string_lossy()]);
    if d.lsm() {
        assert_eperm(&out, "unlinking a pinned link");
    }
    // Whether or not the pin is gone (the fallback cannot refuse the unlink of a root agent),
    // the daemon holds the link: enforcement stays.
    assert_eperm(
        &d.probe("buyer", &["tcp", "127.0.0.1", &l.port().to_string()]),
        "a connect after the attempt",
    );
}

#[test]
fn an_agent_cannot_move_itself_out_of_its_cgroup() {
    if !privileged("an_agent_cannot_move_itself_out_of_its_cgroup") {
        return;
    }
    let d = Daemon::start("[agents.buyer]\nconnect = []\n");
    let root_procs = cgroup_root()
        .parent()
        .map(|p| p.join("cgroup.procs"))
        .unwrap_or_default();
    let out = d.probe("buyer", &["move-self", &root_procs.to_string_lossy()]);
    if d.lsm() {
        assert_eperm(&out, "writing to cgroupfs");
    } else {
        // Landlock applies only to agents with file rules; a root agent without them can write
        // to cgroupfs. docs/threat-model.md says to run agents with --user.
        let unprivileged = d.cli(&[
            "run",
            "--agent",
            "buyer",
            "--user",
            "nobody",
            "--",
            &agentguard_tests::probe_bin().to_string_lossy(),
            "move-self",
            &root_procs.to_string_lossy(),
        ]);
        assert!(
            stdout(&unprivileged).starts_with("errno=13 "),
            "an unprivileged agent cannot: {}",
            describe(&unprivileged)
        );
    }
}
