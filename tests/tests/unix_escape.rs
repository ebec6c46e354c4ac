//! The attack AF_UNIX judging closes: an agent whose policy allows one TCP destination reaches a
//! root-owned daemon's Unix socket (as `/var/run/docker.sock` would be: host root), with a
//! policy that any agentguard version accepts. Before AF_UNIX was judged, the connect went
//! through; now it is refused with EPERM and logged.

use std::os::unix::net::UnixListener;

use agentguard_tests::{Daemon, assert_eperm, open_to_agents, privileged};

#[test]
fn a_network_policy_keeps_an_agent_away_from_unlisted_unix_sockets() {
    if !privileged("a_network_policy_keeps_an_agent_away_from_unlisted_unix_sockets") {
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("docker.sock");
    let _listener = UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind: {e}"));
    // World-writable, so that only agentguard stands between the agent and the socket.
    open_to_agents(dir.path());
    open_to_agents(&path);
    let d = Daemon::start("[agents.buyer]\nconnect = [\"127.0.0.1:9\"]\n");
    let target = path.to_string_lossy().into_owned();
    assert_eperm(
        &d.probe("buyer", &["unix-stream", &target]),
        "a Unix socket the policy does not list",
    );
    d.wait_record("the refusal", |r| {
        r["action"] == "unix-connect"
            && r["verdict"] == "denied"
            && r["target"]["path"] == target.as_str()
    });
}
