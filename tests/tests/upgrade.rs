//! An upgrade between two builds of the eBPF programs keeps enforcement in place: the running
//! agent stays confined while no daemon runs and while the new build starts, and its instance
//! and budget carry over (the new build re-opens the pinned maps instead of starting afresh).
//!
//! The second build is `target/ebpf-variant/...` (`cargo xtask build-ebpf --variant`): the
//! same source with other codegen metadata, so another object digest with the same maps. The
//! daemon loads it through its root-only `--ebpf-object` option.

use std::path::PathBuf;

use agentguard_tests::{
    ChildGuard, Daemon, assert_eperm, instance_cgroup, net, privileged, tcp_from_cgroup,
};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

fn variant_object() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/ebpf-variant/bpfel-unknown-none/release/agentguard-ebpf")
}

/// The build directories under the single state directory in bpffs.
fn pinned_builds() -> Vec<String> {
    let root = PathBuf::from("/sys/fs/bpf/agentguard");
    let states: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(states.len(), 1, "one state directory: {states:?}");
    let mut builds: Vec<String> = std::fs::read_dir(states[0].join("links"))
        .unwrap_or_else(|e| panic!("links: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    builds.sort();
    builds
}

#[test]
fn an_upgrade_to_another_build_keeps_the_agent_confined_and_its_budget() {
    if !privileged("an_upgrade_to_another_build_keeps_the_agent_confined_and_its_budget") {
        return;
    }
    let variant = variant_object();
    assert!(
        variant.is_file(),
        "{} is missing: run `cargo xtask build-ebpf --variant`",
        variant.display()
    );
    let ok = net::Tcp::listen("127.0.0.1");
    let no = net::Tcp::listen("127.0.0.1");
    // An instance-wide connect budget that does not refill during the test: 3 connects.
    let policy = format!(
        "[agents.buyer]\nconnect = [\"127.0.0.1:{}\"]\n\
         [agents.buyer.throttle.agent]\nconnect = \"3/h\"\n",
        ok.port()
    );
    let mut d = Daemon::start(&policy);
    let old_builds = pinned_builds();
    assert_eq!(old_builds.len(), 1, "{old_builds:?}");

    let _agent = ChildGuard::spawn(
        &mut d.run_command("buyer", &[PROBE, "sleep", agentguard_tests::UNTIL_TEARDOWN]),
    );
    d.wait_record("instance start", |r| r["kind"] == "instance-start");
    let instance = instance_cgroup("buyer");
    let connect = |port: u16| tcp_from_cgroup(&instance, port);
    // Two of the instance's three connects spent under the old build.
    assert_eq!(connect(ok.port()), "ok");
    assert_eq!(connect(ok.port()), "ok");

    // From the old daemon's exit until the new one answers, a denied connect is refused.
    let variant_arg = variant.to_string_lossy().into_owned();
    let mut attempts = 0;
    d.replace_with(&["--ebpf-object", &variant_arg], || {
        attempts += 1;
        assert_eperm(&connect(no.port()), "while the daemon is replaced");
    });
    assert!(
        attempts >= 2,
        "refused before and during the new daemon's start"
    );

    let new_builds = pinned_builds();
    assert_eq!(
        new_builds.len(),
        1,
        "the old build's links are gone: {new_builds:?}"
    );
    assert_ne!(
        new_builds, old_builds,
        "the variant is another build (object digest)"
    );
    // The cgroup sock_addr programs were swapped inside their links (BPF_LINK_UPDATE), not
    // attached beside the old ones.
    assert!(
        d.output()
            .contains("replaced the previous build's program in its link"),
        "{}",
        d.output()
    );
    let handover = d.wait_record("handover", |r| r["kind"] == "handover");
    assert_eq!(handover["kept_state"], true, "{handover}");
    assert_eq!(handover["previous"].as_str(), Some(old_builds[0].as_str()));
    assert_eq!(handover["build"].as_str(), Some(new_builds[0].as_str()));

    // The instance carried over ...
    assert_eq!(d.first_agent_instances(), 1, "the agent is re-adopted");
    // ... and so did its budget: one connect left, not a fresh three.
    assert_eq!(connect(ok.port()), "ok", "the third connect");
    assert_eperm(
        &connect(ok.port()),
        "the fourth connect is over the budget kept across the upgrade",
    );
    assert_eperm(&connect(no.port()), "after the upgrade");
}

#[test]
fn pinned_maps_of_another_layout_are_not_taken_over_and_the_agent_stays_confined() {
    if !privileged("pinned_maps_of_another_layout_are_not_taken_over_and_the_agent_stays_confined")
    {
        return;
    }
    let no = net::Tcp::listen("127.0.0.1");
    let mut d = Daemon::start("[agents.buyer]\n");
    let _agent = ChildGuard::spawn(
        &mut d.run_command("buyer", &[PROBE, "sleep", agentguard_tests::UNTIL_TEARDOWN]),
    );
    d.wait_record("instance start", |r| r["kind"] == "instance-start");
    let instance = instance_cgroup("buyer");
    let refused = |when: &str| assert_eperm(&tcp_from_cgroup(&instance, no.port()), when);
    d.stop();
    // Make the pinned state look like a build whose maps differ: another layout name, and its
    // AG_CGROUPS pin replaced by a map of another type and size (the AG_STATE array).
    let root = PathBuf::from("/sys/fs/bpf/agentguard");
    let state = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .unwrap_or_else(|| panic!("no state directory"));
    let abi = state
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .and_then(|n| n.split('-').next().map(str::to_owned))
        .unwrap_or_default();
    let other = root.join(format!("{abi}-000000000000"));
    std::fs::rename(&state, &other).unwrap_or_else(|e| panic!("rename: {e}"));
    std::fs::rename(other.join("maps/AG_STATE"), other.join("maps/AG_CGROUPS"))
        .unwrap_or_else(|e| panic!("rename map: {e}"));
    refused("with the old programs pinned under the other layout");

    let mut attempts = 0;
    d.replace_with(&[], || {
        attempts += 1;
        refused("while the new daemon starts from fresh maps");
    });
    assert!(attempts >= 2);
    let handover = d.wait_record("handover", |r| r["kind"] == "handover");
    assert_eq!(handover["kept_state"], false, "{handover}");
    assert_eq!(
        handover["previous"].as_str(),
        Some(format!("{abi}-000000000000").as_str())
    );
    let reason = handover["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("AG_CGROUPS"), "{reason}");
    assert!(
        d.output().contains("NOT taken over"),
        "said loudly:\n{}",
        d.output()
    );
    assert!(
        !other.exists(),
        "the old state is removed once the new programs are attached"
    );
    // The running agent was re-adopted from the cgroup tree and is judged by the new programs.
    refused("after the fallback");
    assert_eq!(d.first_agent_instances(), 1, "the agent is re-adopted");
}
