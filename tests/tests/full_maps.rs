//! Full kernel maps fail closed: a budget the kernel cannot store refuses the action; an ended
//! instance leaves nothing behind in the budget map; `max_instances` caps instances per agent.

use std::{path::PathBuf, process::Stdio};

use agentguard_common::{
    agent::{Bucket, BucketKey, ThrottleKind},
    maps::{AGENT_BUCKETS, MAX_AGENT_BUCKETS},
};
use agentguard_tests::{Daemon, assert_eperm, describe, net, privileged};
use aya::maps::{HashMap, Map, MapData};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

/// The instance budget map the running daemon pinned.
fn agent_buckets() -> HashMap<MapData, BucketKey, Bucket> {
    let root = std::path::Path::new("/sys/fs/bpf/agentguard");
    let pin: PathBuf = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("maps").join(AGENT_BUCKETS))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no pinned {AGENT_BUCKETS} under {}", root.display()));
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    HashMap::try_from(Map::HashMap(data)).unwrap_or_else(|e| panic!("{AGENT_BUCKETS}: {e}"))
}

fn policy(port: u16, extra: &str) -> String {
    format!(
        "[agents.a]\nconnect = [\"127.0.0.1:{port}\"]\n{extra}\n[agents.a.throttle.agent]\nconnect = \"1000/s\"\n"
    )
}

#[test]
fn a_full_instance_budget_map_refuses_instead_of_allowing() {
    if !privileged("a_full_instance_budget_map_refuses_instead_of_allowing") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(&policy(l.port(), ""));
    let port = l.port().to_string();
    // Room for the instance's bucket: the budget applies and has credit.
    assert_eq!(d.probe("a", &["tcp", "127.0.0.1", &port]), "ok");
    // What many instances (or a forgetful daemon) would leave: a full map. Keys no cgroup has.
    let mut buckets = agent_buckets();
    let mut filled = 0u64;
    while filled < u64::from(MAX_AGENT_BUCKETS) {
        let key = BucketKey {
            owner: u64::MAX - filled,
            kind: ThrottleKind::Connect as u32,
            _pad: 0,
        };
        if buckets.insert(key, Bucket::default(), 0).is_err() {
            break;
        }
        filled += 1;
    }
    let result = d.probe("a", &["tcp", "127.0.0.1", &port]);
    assert_eperm(&result, "a connect whose budget the kernel cannot store");
    d.wait_record("the unmetered connect refused as throttled", |r| {
        r["verdict"] == "throttled" && r["agent"] == "a"
    });
    for i in 0..filled {
        let _ = buckets.remove(&BucketKey {
            owner: u64::MAX - i,
            kind: ThrottleKind::Connect as u32,
            _pad: 0,
        });
    }
    assert_eq!(
        d.probe("a", &["tcp", "127.0.0.1", &port]),
        "ok",
        "with room again the budget applies as before"
    );
}

#[test]
fn an_ended_instance_leaves_no_budget_behind() {
    if !privileged("an_ended_instance_leaves_no_budget_behind") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(&policy(l.port(), ""));
    assert_eq!(
        d.probe("a", &["tcp", "127.0.0.1", &l.port().to_string()]),
        "ok"
    );
    let ev = d.wait_record("the allowed connect", |r| {
        r["action"] == "connect" && r["verdict"] == "allowed" && r["agent"] == "a"
    });
    let cgroup_id = ev["cgroup_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cgroup id: {ev}"));
    d.wait_record("the instance exit", |r| {
        r["kind"] == "instance-exit" && r["cgroup_id"].as_u64() == Some(cgroup_id)
    });
    let left: Vec<BucketKey> = agent_buckets()
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.owner == cgroup_id)
        .collect();
    assert!(left.is_empty(), "buckets of an ended instance: {left:?}");
}

#[test]
fn max_instances_caps_running_instances() {
    if !privileged("max_instances_caps_running_instances") {
        return;
    }
    let l = net::Tcp::listen("127.0.0.1");
    let d = Daemon::start(&policy(l.port(), "max_instances = 1\n"));
    let mut first = d
        .run_command("a", &[PROBE, "sleep", agentguard_tests::UNTIL_TEARDOWN])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let start = d.wait_record("the first instance", |r| {
        r["kind"] == "instance-start" && r["agent"] == "a"
    });
    let second = d.run("a", &[PROBE, "exit", "0"]);
    assert!(!second.status.success(), "{}", describe(&second));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("max_instances = 1"), "{}", describe(&second));
    let _ = first.kill();
    let _ = first.wait();
    d.wait_record("the first instance's exit", |r| {
        r["kind"] == "instance-exit" && r["cgroup_id"] == start["cgroup_id"]
    });
    let third = d.run("a", &[PROBE, "exit", "0"]);
    assert!(
        third.status.success(),
        "an ended instance frees its place: {}",
        describe(&third)
    );
}
