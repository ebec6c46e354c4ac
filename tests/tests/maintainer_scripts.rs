//! The .deb's maintainer scripts, as `cargo xtask package --check` extracted them from the built
//! package (`dpkg-deb -e` into target/package/control), run per dpkg action against the pinned
//! state of a real daemon: upgrade and remove keep the programs confining the running agent,
//! purge refuses while an agent runs and then removes pins and cgroups.
//!
//! Each script runs in a private mount namespace with a fresh tmpfs on /run holding
//! /run/systemd/system, so the scripts take their "systemd is running" branch, and with a stub
//! `systemctl` (and `deb-systemd-helper`) first in PATH that records its arguments.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use agentguard_tests::{
    ChildGuard, Daemon, assert_eperm, cgroup_root, describe, instance_cgroup, net, patience,
    privileged, tcp_from_cgroup,
};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");
const PINS: &str = "/sys/fs/bpf/agentguard";

struct Scripts {
    control: PathBuf,
    stubs: tempfile::TempDir,
}

impl Scripts {
    fn new() -> Self {
        let control = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/package/control");
        assert!(
            control.join("postrm").is_file(),
            "{} has no maintainer scripts: run `cargo xtask package --check`",
            control.display()
        );
        let stubs = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        for tool in ["systemctl", "deb-systemd-helper"] {
            let path = stubs.path().join(tool);
            let calls = stubs.path().join("calls");
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho \"{tool} $*\" >> '{}'\n", calls.display()),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let _ = Command::new("chmod").arg("755").arg(&path).status();
        }
        Self { control, stubs }
    }

    /// Runs `script args` as dpkg would; returns its output and the stub calls it made.
    fn run(&self, script: &str, args: &[&str]) -> (Output, Vec<String>) {
        let calls = self.stubs.path().join("calls");
        let _ = std::fs::remove_file(&calls);
        let path = format!(
            "{}:{}",
            self.stubs.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec sh \"$@\"")
            .arg("sh")
            .arg(self.control.join(script))
            .args(args)
            .env("PATH", path)
            .output()
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        let calls = std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        (out, calls)
    }
}

/// Waits for the kernel to report `cgroup` empty (`populated 0` in `cgroup.events`).
fn wait_empty(cgroup: &Path) {
    let deadline = std::time::Instant::now() + patience(std::time::Duration::from_secs(10));
    let events = cgroup.join("cgroup.events");
    while std::fs::read_to_string(&events).is_ok_and(|e| e.lines().any(|l| l == "populated 1")) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} still populated",
            cgroup.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn pinned() -> bool {
    Path::new(PINS).exists()
}

#[test]
fn maintainer_scripts_keep_enforcement_on_upgrade_and_remove_and_purge_tears_down() {
    if !privileged("maintainer_scripts_keep_enforcement_on_upgrade_and_remove_and_purge_tears_down")
    {
        return;
    }
    let scripts = Scripts::new();
    let no = net::Tcp::listen("127.0.0.1");
    let mut d = Daemon::start("[agents.buyer]\n");
    let agent = ChildGuard::spawn(
        &mut d.run_command("buyer", &[PROBE, "sleep", agentguard_tests::UNTIL_TEARDOWN]),
    );
    d.wait_record("instance start", |r| r["kind"] == "instance-start");
    let instance = instance_cgroup("buyer");
    let confined = |when: &str| assert_eperm(&tcp_from_cgroup(&instance, no.port()), when);
    // The service manager stops the daemon; the pins stay (what a package operation finds).
    d.stop();
    assert!(pinned());

    let (out, calls) = scripts.run("prerm", &["upgrade", "0.1.0"]);
    assert!(out.status.success(), "prerm upgrade: {}", describe(&out));
    assert!(calls.is_empty(), "prerm upgrade stops nothing: {calls:?}");
    assert!(pinned());
    confined("after prerm upgrade");

    let (out, calls) = scripts.run("postinst", &["configure", "0.1.0"]);
    assert!(
        out.status.success(),
        "postinst configure: {}",
        describe(&out)
    );
    assert_eq!(
        calls,
        [
            "systemctl daemon-reload",
            "systemctl try-restart agentguard.service"
        ],
        "an upgrade restarts the daemon on the new binary"
    );
    assert!(pinned());

    let (out, calls) = scripts.run("prerm", &["remove"]);
    assert!(out.status.success(), "prerm remove: {}", describe(&out));
    assert_eq!(calls, ["systemctl stop agentguard.service"]);
    let (out, _) = scripts.run("postrm", &["remove"]);
    assert!(out.status.success(), "postrm remove: {}", describe(&out));
    assert!(pinned(), "remove keeps the programs pinned");
    confined("after remove");

    let (out, _) = scripts.run("postrm", &["purge"]);
    assert!(
        !out.status.success(),
        "purge refuses while an agent runs: {}",
        describe(&out)
    );
    assert!(pinned(), "a refused purge changes nothing");
    confined("after a refused purge");

    // The launcher's death takes the agent with it; purge may go on once the cgroup is empty.
    drop(agent);
    wait_empty(&instance);
    let (out, calls) = scripts.run("postrm", &["purge"]);
    assert!(out.status.success(), "postrm purge: {}", describe(&out));
    assert!(calls.is_empty(), "{calls:?}");
    assert!(!pinned(), "purge removes the pins");
    assert!(!cgroup_root().exists(), "purge removes the cgroups");
}
