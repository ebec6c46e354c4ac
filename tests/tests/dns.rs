//! DNS names in `connect` rules, resolved by the daemon from the hosts file (so no network is
//! needed), kept current when the file changes; and `dns = true` allowing the system resolvers.
//!
//! These tests edit `/etc/hosts` and `/etc/resolv.conf`: they add one line each and remove it
//! on drop (see `system_files`), never touching anything else in them.

use agentguard_tests::{Daemon, describe, net, privileged, stdout, system_files::AppendedLine};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");
/// A name that cannot exist in DNS (RFC 2606), so only the hosts file can answer it.
const NAME: &str = "agentguard-test.invalid";
const HOSTS: &str = "/etc/hosts";

fn probe(d: &Daemon, args: &[&str]) -> String {
    let mut cmd = vec![PROBE];
    cmd.extend_from_slice(args);
    let out = d.run("buyer", &cmd);
    let text = stdout(&out).trim().to_owned();
    if text.is_empty() {
        describe(&out)
    } else {
        text
    }
}

fn assert_eperm(result: &str, what: &str) {
    assert!(
        result.starts_with("errno=1 "),
        "{what}: expected EPERM, got {result:?}"
    );
}

/// The reason of a `policy-applied` record the daemon logged for a DNS change, if `r` is one.
fn dns_reason(r: &serde_json::Value) -> Option<&str> {
    (r["kind"] == "policy-applied" && r["by"]["type"] == "daemon")
        .then(|| r["by"]["reason"].as_str())
        .flatten()
        .filter(|reason| reason.starts_with("dns: "))
}

#[test]
fn a_name_from_the_hosts_file_is_resolved_enforced_and_logged() {
    if !privileged("a_name_from_the_hosts_file_is_resolved_enforced_and_logged") {
        return;
    }
    let _hosts = AppendedLine::add(HOSTS, &format!("127.0.0.77 {NAME}"));
    let allowed = net::Tcp::listen("127.0.0.77");
    let other = net::Tcp::listen("127.0.0.77");
    let port = allowed.port().to_string();
    let d = Daemon::start(&format!("[agents.buyer]\nconnect = [\"{NAME}:{port}\"]\n"));

    let check = d.cli(&["policy", "check", &d.policy.to_string_lossy()]);
    assert!(check.status.success(), "{}", describe(&check));
    assert!(
        stdout(&check).contains(&format!("  {NAME}: 127.0.0.77\n")),
        "check lists the address: {}",
        describe(&check)
    );
    assert!(
        !String::from_utf8_lossy(&check.stderr).contains("warning"),
        "a resolving name is no warning: {}",
        describe(&check)
    );

    assert_eq!(probe(&d, &["tcp-name", NAME, &port]), "ok", "by name");
    assert_eq!(probe(&d, &["tcp", "127.0.0.77", &port]), "ok", "by address");
    assert_eperm(
        &probe(&d, &["tcp", "127.0.0.77", &other.port().to_string()]),
        "the name's address on another port",
    );
    assert_eperm(
        &probe(&d, &["tcp", "127.0.0.1", &port]),
        "another address on the name's port",
    );

    let ev = d.wait_record("allowed connect to the name", |r| {
        r["action"] == "connect"
            && r["verdict"] == "allowed"
            && r["target"]["port"].as_u64() == Some(u64::from(allowed.port()))
    });
    assert_eq!(ev["target"]["name"].as_str(), Some(NAME), "{ev}");
    assert_eq!(ev["target"]["addr"].as_str(), Some("127.0.0.77"), "{ev}");
    assert_eq!(
        ev["rule"].as_str(),
        Some(format!("{NAME}:{port}").as_str()),
        "{ev}"
    );
}

#[test]
fn a_changed_hosts_entry_is_re_resolved_and_the_old_address_expires_after_the_grace() {
    if !privileged(
        "a_changed_hosts_entry_is_re_resolved_and_the_old_address_expires_after_the_grace",
    ) {
        return;
    }
    const GRACE_S: u64 = 4;
    let mut hosts = AppendedLine::add(HOSTS, &format!("127.0.0.77 {NAME}"));
    let old = net::Tcp::listen("127.0.0.77");
    let port = old.port().to_string();
    let _new = net::Tcp::listen_at(&format!("127.0.0.78:{port}"));
    // Hosts-file names have no TTL and are looked up every ceiling: 1 s here instead of 1 h.
    let d = Daemon::start_with(
        &format!("[agents.buyer]\nconnect = [\"{NAME}:{port}\"]\n"),
        &[
            "--dns-ttl-ceiling",
            "1",
            "--dns-grace",
            &GRACE_S.to_string(),
        ],
    );
    assert_eq!(probe(&d, &["tcp", "127.0.0.77", &port]), "ok");
    assert_eperm(
        &probe(&d, &["tcp", "127.0.0.78", &port]),
        "the new address before the change",
    );

    hosts.replace(&format!("127.0.0.78 {NAME}"));
    let added = d.wait_record("re-apply for the new address", |r| {
        dns_reason(r).is_some_and(|s| s.contains("+127.0.0.78"))
    });
    assert_eq!(
        dns_reason(&added),
        Some(format!("dns: {NAME} +127.0.0.78").as_str()),
        "the old address stays during the grace period: {added}"
    );
    assert_eq!(
        probe(&d, &["tcp", "127.0.0.78", &port]),
        "ok",
        "new address"
    );
    assert_eq!(
        probe(&d, &["tcp-name", NAME, &port]),
        "ok",
        "new address by name"
    );

    let removed = d.wait_record("re-apply when the grace period ends", |r| {
        dns_reason(r).is_some_and(|s| s.contains("-127.0.0.77"))
    });
    assert_eq!(
        dns_reason(&removed),
        Some(format!("dns: {NAME} -127.0.0.77").as_str()),
        "{removed}"
    );
    let waited_ns = removed["mono_ns"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(added["mono_ns"].as_u64().unwrap_or(0));
    assert!(
        waited_ns >= (GRACE_S - 1) * 1_000_000_000,
        "the old address was dropped {waited_ns} ns after the change was seen, before its grace"
    );
    assert_eperm(
        &probe(&d, &["tcp", "127.0.0.77", &port]),
        "the old address after the grace period",
    );
    assert_eq!(probe(&d, &["tcp", "127.0.0.78", &port]), "ok");
}

#[test]
fn dns_true_allows_the_system_resolvers_on_port_53_only() {
    if !privileged("dns_true_allows_the_system_resolvers_on_port_53_only") {
        return;
    }
    // Listed after the host's own resolvers, so nothing else on the host ever asks it.
    let _resolv = AppendedLine::add("/etc/resolv.conf", "nameserver 127.0.0.153");
    let resolver = net::Udp::bind_at("127.0.0.153:53");
    let other = net::Udp::bind("127.0.0.153");
    let d = Daemon::start("[agents.buyer]\ndns = true\n");

    assert_eq!(probe(&d, &["udp", "127.0.0.153", "53"]), "ok");
    assert!(resolver.received(), "the datagram to the resolver arrives");
    assert_eperm(
        &probe(&d, &["udp", "127.0.0.153", &other.port().to_string()]),
        "the resolver on another port",
    );
    assert!(!other.received());
    assert_eperm(
        &probe(&d, &["udp", "127.0.0.154", "53"]),
        "port 53 of an address that is no resolver",
    );
    let ev = d.wait_record("allowed datagram to the resolver", |r| {
        r["verdict"] == "allowed" && r["target"]["port"].as_u64() == Some(53)
    });
    assert_eq!(ev["rule"].as_str(), Some("127.0.0.153:53"), "{ev}");
}
