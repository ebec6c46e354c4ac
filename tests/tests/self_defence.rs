//! An agent turning on agentguard itself: leaving its cgroup, unpinning the programs.

use agentguard_tests::{Daemon, assert_eperm, cgroup_root, net, privileged};

/// `buyer` runs as the default dynamic uid; `rooted` as root, the policy's explicit opt-in.
const POLICY: &str =
    "[agents.buyer]\nconnect = []\n\n[agents.rooted]\nuser = \"root\"\nconnect = []\n";

#[test]
fn an_agent_cannot_unpin_enforcement() {
    if !privileged("an_agent_cannot_unpin_enforcement") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    // `rooted` is the strongest attacker a policy allows: uid 0 without capabilities.
    let d = Daemon::start(POLICY);
    // /sys/fs/bpf/agentguard/<state>/links/<build>/ag_connect4
    let dirs = |p: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let link = dirs(std::path::Path::new("/sys/fs/bpf/agentguard"))
        .iter()
        .flat_map(|state| dirs(&state.join("links")))
        .map(|build| build.join("ag_connect4"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no pinned connect4 link"));
    let out = d.probe("buyer", &["unlink", &link.to_string_lossy()]);
    // Where the directories let a non-root agent reach the pin (seen on the 6.1 guest), the LSM
    // hook refuses the unlink (EPERM) before the kernel's permission check would (EACCES).
    let lsm_first = d.lsm() && out.starts_with("errno=1 ");
    assert!(
        out.starts_with("errno=13 ") || lsm_first,
        "a non-root agent fails on bpffs permissions: {out}"
    );
    let out = d.probe("rooted", &["unlink", &link.to_string_lossy()]);
    if d.lsm() {
        assert_eperm(&out, "unlinking a pinned link");
    }
    // Whether or not the pin is gone (the fallback cannot refuse the unlink of a root agent),
    // the daemon holds the link: enforcement stays.
    assert_eperm(
        &d.probe("rooted", &["tcp", "127.0.0.1", &l.port().to_string()]),
        "a connect after the attempt",
    );
}

#[test]
fn an_agent_cannot_move_itself_out_of_its_cgroup() {
    if !privileged("an_agent_cannot_move_itself_out_of_its_cgroup") {
        return;
    }
    let d = Daemon::start(POLICY);
    let root_procs = cgroup_root()
        .parent()
        .map(|p| p.join("cgroup.procs"))
        .unwrap_or_default();
    let root_procs = root_procs.to_string_lossy();
    let out = d.probe("buyer", &["move-self", &root_procs]);
    assert!(
        out.starts_with("errno=13 "),
        "a non-root agent fails on cgroupfs permissions: {out}"
    );
    if d.lsm() {
        let out = d.probe("rooted", &["move-self", &root_procs]);
        assert_eperm(&out, "a root agent writing to cgroupfs");
    }
    // On the fallback, Landlock applies only to agents with file rules: a root agent without
    // them can write to cgroupfs (docs/threat-model.md), which is why root needs the policy's
    // explicit `user = "root"`.
}
