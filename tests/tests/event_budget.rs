//! One agent cannot blind the log for others: each instance has an event budget in the kernel;
//! what it causes beyond it is counted for that instance (a `lost-events` record) instead of
//! filling the ring buffers, and refusals have a ring buffer of their own.

use agentguard_tests::{Daemon, assert_eperm, privileged};

#[test]
fn a_flooding_agent_loses_its_own_events_not_the_others() {
    if !privileged("a_flooding_agent_loses_its_own_events_not_the_others") {
        return;
    }
    // Port 9 (discard) is allowed to nobody: every send below is a refusal, and an event.
    let d = Daemon::start("[agents.flood]\nconnect = []\n\n[agents.quiet]\nconnect = []\n");
    // Far more refusals than one instance's burst of 2,000 refusal events, as fast as it can.
    let flood = d.probe("flood", &["send-loop", "127.0.0.1", "9", "50000"]);
    assert!(
        flood.starts_with("sent=0 "),
        "every send is refused: {flood}"
    );
    assert_eperm(
        &d.probe("quiet", &["tcp", "127.0.0.1", "9"]),
        "the other agent's connect",
    );
    let gap = d.wait_record("the flooding instance's gap", |r| {
        r["kind"] == "lost-events" && r["source"] == "instance-budget" && r["agent"] == "flood"
    });
    assert!(
        gap["refusals"].as_u64().is_some_and(|n| n > 0),
        "refusals over the budget are counted: {gap}"
    );
    d.wait_record("the other agent's refusal", |r| {
        r["action"] == "connect" && r["verdict"] == "denied" && r["agent"] == "quiet"
    });
    let quiet_gaps = d
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "lost-events" && r["agent"] == "quiet")
        .count();
    assert_eq!(quiet_gaps, 0, "the quiet agent lost nothing");
}
