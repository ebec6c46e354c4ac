//! The systemd service protocol: `Type=notify` readiness, watchdog pings and stop notice, seen
//! from a socket the test binds in place of the service manager's (`NOTIFY_SOCKET`).

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use agentguard_tests::{Daemon, assert_eperm, net, patience, privileged};

/// Time the daemon may take to start (natively, with a wide margin).
const START: Duration = Duration::from_secs(30);

/// The service manager's end of the notification socket.
struct Manager {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: String,
}

impl Manager {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind: {e}"));
        Self {
            socket,
            path: path.to_string_lossy().into_owned(),
            _dir: dir,
        }
    }

    /// Waits for a datagram holding the line `want`; returns every line received up to it.
    fn wait_for(&self, d: &mut Daemon, want: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {want} within {within:?}; got {seen:?}; daemon:\n{}",
                d.output()
            );
            // Short reads, so a daemon that died is noticed.
            let _ = self
                .socket
                .set_read_timeout(Some(left.min(Duration::from_millis(200))));
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let found = text.lines().any(|l| l == want);
                    seen.extend(text.lines().map(str::to_owned));
                    if found {
                        return seen;
                    }
                }
                // Nothing queued: a daemon that exited will send nothing more.
                Err(_) => {
                    if let Some(status) = d.exited() {
                        panic!(
                            "daemon exited with {status} before {want}; got {seen:?}:\n{}",
                            d.output()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ready_is_notified_only_once_the_policy_is_enforced() {
    if !privileged("ready_is_notified_only_once_the_policy_is_enforced") {
        return;
    }
    let ok = net::Tcp::listen("127.0.0.1");
    let no = net::Tcp::listen("127.0.0.1");
    let manager = Manager::bind();
    let policy = format!("[agents.buyer]\nconnect = [\"127.0.0.1:{}\"]\n", ok.port());
    // 400 ms: several pings arrive within any patience, without flooding the socket.
    let mut d = Daemon::start_unready(
        &policy,
        &[
            ("NOTIFY_SOCKET", &manager.path),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let before = manager.wait_for(&mut d, "READY=1", patience(START));
    assert!(
        !before.iter().any(|l| l == "WATCHDOG=1"),
        "watchdog pings before READY: {before:?}"
    );
    // At READY, without retrying: the daemon logged the policy written and attached, its socket
    // answers and the kernel already refuses what the policy does not allow.
    let output = d.output();
    assert!(
        output.contains("policy written and programs attached"),
        "READY=1 before the policy was enforced:\n{output}"
    );
    assert_eperm(
        &d.probe("buyer", &["tcp", "127.0.0.1", &no.port().to_string()]),
        "a connect the policy does not allow, right after READY",
    );
    assert_eq!(
        d.probe("buyer", &["tcp", "127.0.0.1", &ok.port().to_string()]),
        "ok",
        "an allowed connect right after READY"
    );
    manager.wait_for(&mut d, "WATCHDOG=1", patience(Duration::from_secs(5)));

    if let Ok(pid) = i32::try_from(d.pid()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    manager.wait_for(&mut d, "STOPPING=1", patience(Duration::from_secs(10)));
}

/// `GET /metrics` from `addr`: the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = s.set_read_timeout(Some(patience(Duration::from_secs(10))));
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agentguard\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|e| panic!("send: {e}"));
    let mut text = String::new();
    s.read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The value of the sample line starting with `series` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_refusals_by_agent() {
    if !privileged("metrics_count_refusals_by_agent") {
        return;
    }
    let ok = net::Tcp::listen("127.0.0.1");
    let no = net::Tcp::listen("127.0.0.1");
    let policy = format!("[agents.buyer]\nconnect = [\"127.0.0.1:{}\"]\n", ok.port());
    let d = Daemon::start_with(&policy, &["--metrics-listen", "127.0.0.1:0"]);
    let output = d.output();
    let addr = output
        .lines()
        .find(|l| l.contains("serving metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no metrics address in the daemon's output:\n{output}"));
    let refusals = r#"agentguard_refusals_total{agent="buyer"}"#;
    let denied = r#"agentguard_actions_total{agent="buyer",action="connect",verdict="denied"}"#;
    let before = scrape(&addr);
    assert!(before.contains("agentguard_policy_generation"), "{before}");
    assert_eq!(sample(&before, refusals), 0.0, "{before}");

    assert_eperm(
        &d.probe("buyer", &["tcp", "127.0.0.1", &no.port().to_string()]),
        "a connect the policy does not allow",
    );
    // The refusal reaches the metrics with its event: wait for it, not for a fixed time.
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    let after = loop {
        let text = scrape(&addr);
        if sample(&text, refusals) >= 1.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        sample(&after, refusals) >= 1.0,
        "no refusal counted:\n{after}"
    );
    assert!(
        sample(&after, denied) >= 1.0,
        "no denied connect counted:\n{after}"
    );
    // Bounded labels: no instance or pid appears.
    assert!(!after.contains("buyer/"), "instance labels:\n{after}");
    assert!(!after.contains("pid="), "pid labels:\n{after}");
}
