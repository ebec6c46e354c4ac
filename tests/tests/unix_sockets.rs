//! The AF_UNIX allowlist on a real kernel: `cgroup/connect_unix` and `cgroup/sendmsg_unix` on
//! the fallback (Linux >= 6.7), the `unix_stream_connect` and `unix_may_send` LSM hooks with
//! BPF LSM. An agent reaches only the Unix sockets its `connect` list names (and the agent
//! socket), with or without a list; every other connect or datagram is refused with EPERM and
//! logged.

use std::{
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram, UnixListener},
    },
    path::PathBuf,
    time::Duration,
};

use agentguard_tests::{Daemon, assert_eperm, open_to_agents, patience, privileged};

/// Listening sockets: allowed and refused, pathname stream, pathname datagram, abstract stream.
struct Sockets {
    dir: tempfile::TempDir,
    _stream_ok: UnixListener,
    _stream_no: UnixListener,
    /// Named like the allowed one and a byte longer.
    _stream_longer: UnixListener,
    dgram_ok: UnixDatagram,
    dgram_no: UnixDatagram,
    _abstract_ok: UnixListener,
    _abstract_no: UnixListener,
    tag: String,
}

impl Sockets {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // Agents run as dynamic uids: they need search on the directory and write on the
        // socket files to connect (the permission check agentguard adds to, not replaces).
        open_to_agents(dir.path());
        let bind = |name: &str| {
            let path = dir.path().join(name);
            let l = UnixListener::bind(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            open_to_agents(&path);
            l
        };
        let dgram = |name: &str| {
            let path = dir.path().join(name);
            let s = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            open_to_agents(&path);
            s.set_nonblocking(true)
                .unwrap_or_else(|e| panic!("nonblocking: {e}"));
            s
        };
        let tag = format!("agentguard-test-{}", std::process::id());
        let abstract_listener = |suffix: &str| {
            let addr = SocketAddr::from_abstract_name(format!("{tag}-{suffix}"))
                .unwrap_or_else(|e| panic!("abstract name: {e}"));
            UnixListener::bind_addr(&addr).unwrap_or_else(|e| panic!("abstract bind: {e}"))
        };
        Self {
            _stream_ok: bind("ok.sock"),
            _stream_no: bind("no.sock"),
            _stream_longer: bind("ok.sockx"),
            dgram_ok: dgram("ok.dgram"),
            dgram_no: dgram("no.dgram"),
            _abstract_ok: abstract_listener("ok"),
            _abstract_no: abstract_listener("no"),
            tag,
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn abstract_name(&self, suffix: &str) -> String {
        format!("@{}-{suffix}", self.tag)
    }

    fn policy(&self) -> String {
        format!(
            "[agents.buyer]\nconnect = [\"127.0.0.1:9\", \"unix:{}\", \"unix:{}\", \"unix:{}\"]\n\
             [agents.buyer.sub.helper]\nconnect = [\"unix:{}\"]\n\
             [agents.local]\nexec = []\n",
            self.path("ok.sock"),
            self.path("ok.dgram"),
            self.abstract_name("ok"),
            self.path("ok.sock"),
        )
    }
}

/// Whether `socket` received a datagram (waiting a little: delivery is synchronous for
/// AF_UNIX, so a datagram that was sent is already queued).
fn received(socket: &UnixDatagram) -> bool {
    let mut buf = [0u8; 64];
    socket.recv(&mut buf).is_ok()
}

fn agent_socket_path(d: &Daemon) -> PathBuf {
    d.agent_socket()
}

#[test]
fn unix_connects_and_sends_are_judged_by_address() {
    if !privileged("unix_connects_and_sends_are_judged_by_address") {
        return;
    }
    let s = Sockets::new();
    let d = Daemon::start(&s.policy());
    // Pathname stream sockets.
    assert_eq!(
        d.probe("buyer", &["unix-stream", &s.path("ok.sock")]),
        "ok",
        "allowed pathname socket"
    );
    assert_eperm(
        &d.probe("buyer", &["unix-stream", &s.path("no.sock")]),
        "unlisted pathname socket",
    );
    // The same pathnames under the address lengths C code passes: the name is what the
    // kernel resolves, not what follows it or the length's last byte.
    for mode in ["exact", "padded"] {
        assert_eq!(
            d.probe("buyer", &["unix-stream-len", &s.path("ok.sock"), mode]),
            "ok",
            "allowed pathname socket, {mode} address length"
        );
        assert_eperm(
            &d.probe("buyer", &["unix-stream-len", &s.path("ok.sockx"), mode]),
            &format!("a byte longer than the allowed pathname, {mode} address length"),
        );
    }
    // Abstract sockets.
    assert_eq!(
        d.probe("buyer", &["unix-stream", &s.abstract_name("ok")]),
        "ok",
        "allowed abstract socket"
    );
    assert_eperm(
        &d.probe("buyer", &["unix-stream", &s.abstract_name("no")]),
        "unlisted abstract socket",
    );
    // Datagrams sent to an address.
    assert_eq!(
        d.probe("buyer", &["unix-dgram", &s.path("ok.dgram")]),
        "ok",
        "allowed datagram socket"
    );
    assert!(received(&s.dgram_ok), "the allowed datagram must arrive");
    assert_eperm(
        &d.probe("buyer", &["unix-dgram", &s.path("no.dgram")]),
        "unlisted datagram socket",
    );
    assert!(
        !received(&s.dgram_no),
        "the refused datagram must not arrive"
    );
    // The agent socket needs no entry.
    let agent_socket = agent_socket_path(&d);
    assert_eq!(
        d.probe("buyer", &["unix-stream", &agent_socket.to_string_lossy()]),
        "ok",
        "the agent socket stays reachable"
    );
    // AF_UNIX is default deny for an agent without a connect list too (a socket such as
    // /var/run/docker.sock is a way out of any confinement): it reaches the agent socket only.
    assert_eperm(
        &d.probe("local", &["unix-stream", &s.path("ok.sock")]),
        "an agent without a connect list, stream",
    );
    assert_eperm(
        &d.probe("local", &["unix-dgram", &s.path("ok.dgram")]),
        "an agent without a connect list, datagram",
    );
    assert!(
        !received(&s.dgram_ok),
        "the refused datagram must not arrive"
    );
    assert_eq!(
        d.probe("local", &["unix-stream", &agent_socket.to_string_lossy()]),
        "ok",
        "the agent socket stays reachable without a connect list"
    );

    // Every refusal is in the log, with the address and the backend that judged it.
    let backend = if d.lsm() {
        "bpf-lsm"
    } else {
        "cgroup-sock-addr"
    };
    let refused = |action: &'static str, path: String| {
        let r = d.wait_record(&format!("{action} {path} refused"), |r| {
            r["action"] == action && r["target"]["path"] == path.as_str()
        });
        assert_eq!(
            (
                r["agent"].as_str(),
                r["verdict"].as_str(),
                r["backend"].as_str(),
                r["target"]["op"].as_str()
            ),
            (Some("buyer"), Some("denied"), Some(backend), Some(action)),
            "{r}"
        );
    };
    refused("unix-connect", s.path("no.sock"));
    refused("unix-connect", s.abstract_name("no"));
    refused("unix-send", s.path("no.dgram"));
    let local = d.wait_record("the connect-list-less agent's refusal", |r| {
        r["agent"] == "local" && r["action"] == "unix-connect"
    });
    assert_eq!(
        (local["verdict"].as_str(), local["target"]["path"].as_str()),
        (Some("denied"), Some(s.path("ok.sock").as_str())),
        "{local}"
    );
    // An allowed connect names its rule.
    let allowed = d.wait_record("allowed unix connect", |r| {
        r["action"] == "unix-connect" && r["verdict"] == "allowed"
    });
    assert!(
        allowed["rule"]
            .as_str()
            .is_some_and(|rule| rule.starts_with("unix:")),
        "{allowed}"
    );
    let _ = patience(Duration::from_millis(1));
}

#[test]
fn a_sub_agent_reaches_only_what_its_parent_may() {
    if !privileged("a_sub_agent_reaches_only_what_its_parent_may") {
        return;
    }
    let s = Sockets::new();
    let d = Daemon::start(&s.policy());
    let probe = agentguard_tests::probe_bin();
    let probe = probe.to_string_lossy().into_owned();
    // The parent starts the sub-agent through the agent socket, then the sub-agent probes.
    let run_sub = |target: &str| {
        let bin = agentguard_tests::agentguard_bin();
        let bin = bin.to_string_lossy().into_owned();
        let out = d.run(
            "buyer",
            &[
                &bin,
                "run",
                "--agent",
                "buyer/helper",
                "--",
                &probe,
                "unix-stream",
                target,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(run_sub(&s.path("ok.sock")), "ok", "listed by both");
    assert_eperm(
        &run_sub(&s.abstract_name("ok")),
        "listed by the parent only",
    );
    assert_eperm(&run_sub(&s.path("no.sock")), "listed by neither");
}

/// Policy generations alternate between two map halves: an entry removed by one apply must not
/// come back when a later apply writes the half it was in again.
#[test]
fn a_removed_unix_entry_stays_removed_across_applies() {
    if !privileged("a_removed_unix_entry_stays_removed_across_applies") {
        return;
    }
    let s = Sockets::new();
    let d = Daemon::start(&s.policy());
    let file = d.state_dir().join("unix-removed.toml");
    let apply = |text: &str| {
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let out = d.cli(&["policy", "apply", &file.to_string_lossy()]);
        assert!(
            out.status.success(),
            "policy apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ok_sock = s.path("ok.sock");
    assert_eq!(d.probe("buyer", &["unix-stream", &ok_sock]), "ok", "listed");
    // Three applies without the entry, each with a different TCP rule so every one is a change:
    // the second and third write the generation halves the entry was once in.
    for port in [10, 11, 12] {
        apply(&format!(
            "[agents.buyer]\nconnect = [\"127.0.0.1:{port}\"]\n"
        ));
        assert_eperm(
            &d.probe("buyer", &["unix-stream", &ok_sock]),
            &format!("unlisted after the apply with port {port}"),
        );
    }
    // And listing it again allows it again.
    apply(&format!("[agents.buyer]\nconnect = [\"unix:{ok_sock}\"]\n"));
    assert_eq!(
        d.probe("buyer", &["unix-stream", &ok_sock]),
        "ok",
        "listed again"
    );
}
