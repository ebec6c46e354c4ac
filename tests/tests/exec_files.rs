//! Exec and file allowlists on both backends: BPF LSM (EPERM before anything happens) and the
//! fallback (exec killed by SIGKILL before the binary runs its own code; files refused by
//! Landlock with EACCES).

use std::{
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Output,
};

use agentguard_tests::{
    Daemon, ScratchTree, describe, open_to_agents, open_tree_to_agents, privileged, stdout,
};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

const PROBE: &str = env!("CARGO_BIN_EXE_agentguard-probe");

/// A directory tree with allowed, read-only and secret parts.
fn tree() -> ScratchTree {
    let t = ScratchTree::new("agentguard-files");
    t.dirs(&["allowed", "ro", "out", "secret"])
        .file("allowed/data.txt", "data")
        .file("ro/ro.txt", "read only")
        .file("out/existing.txt", "x")
        .file("secret/key.txt", "secret")
        .symlink(t.path("secret/key.txt"), "allowed/link-to-secret")
        .symlink("/usr/bin/true", "allowed/link-to-true")
        .copy("/usr/bin/true", "allowed/copy-of-true");
    t
}

fn policy(t: &ScratchTree) -> String {
    format!(
        "[agents.files]\nexec = [\"{PROBE}\", \"/usr/bin/true\"]\nread = [\"@system-runtime\", \"{a}\", \"{ro}\", \"{out}\"]\nwrite = [\"{out}\"]\n",
        a = t.p("allowed"),
        ro = t.p("ro"),
        out = t.p("out"),
    )
}

fn probe(d: &Daemon, args: &[&str]) -> Output {
    let mut cmd = vec![PROBE];
    cmd.extend_from_slice(args);
    d.run("files", &cmd)
}

/// The errno a refused file access gets: EPERM from the BPF LSM, EACCES from Landlock.
fn refusal(d: &Daemon) -> &'static str {
    if d.lsm() { "errno=1 " } else { "errno=13 " }
}

fn assert_ok(out: &Output, what: &str) {
    assert_eq!(stdout(out).trim(), "ok", "{what}: {}", describe(out));
}

fn assert_refused(d: &Daemon, out: &Output, what: &str) {
    assert!(
        stdout(out).starts_with(refusal(d)),
        "{what}: expected {}: {}",
        refusal(d).trim(),
        describe(out)
    );
}

/// A denied exec: EPERM from exec itself (LSM), or the process killed before it ran (fallback).
fn assert_exec_refused(d: &Daemon, out: &Output, what: &str) {
    if d.lsm() {
        assert!(
            stdout(out).starts_with("errno=1 "),
            "{what}: expected EPERM: {}",
            describe(out)
        );
    } else {
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{what}: expected SIGKILL: {}",
            describe(out)
        );
    }
}

#[test]
fn exec_allowlist_follows_binary_identity() {
    if !privileged("exec_allowlist_follows_binary_identity") {
        return;
    }
    let t = tree();
    let d = Daemon::start(&policy(&t));
    assert_ok(
        &probe(&d, &["exec", "/usr/bin/true"]).clone().then_ok(),
        "allowed binary",
    );
    let link = t.p("allowed/link-to-true");
    assert!(
        probe(&d, &["exec", &link]).status.success(),
        "a symlink to an allowed binary runs"
    );
    let copy = t.p("allowed/copy-of-true");
    assert_exec_refused(
        &d,
        &probe(&d, &["exec", &copy]),
        "a copy of an allowed binary",
    );
    let out = probe(&d, &["exec", "/usr/bin/id"]);
    if d.lsm() {
        assert_exec_refused(&d, &out, "binary not in the list");
    } else {
        // Landlock refuses to execute a file outside every granted path before the kernel
        // program ever sees it.
        assert!(
            stdout(&out).starts_with("errno=13 "),
            "binary outside the sandbox: {}",
            describe(&out)
        );
    }
    let (want, backend) = if d.lsm() {
        ("denied", "bpf-lsm")
    } else {
        ("killed", "tp-btf")
    };
    let ev = d.wait_record("refused exec", |r| {
        r["action"] == "exec" && r["target"]["path"] == copy.as_str()
    });
    assert_eq!(
        (ev["verdict"].as_str(), ev["backend"].as_str()),
        (Some(want), Some(backend)),
        "{ev}"
    );
    assert_eq!(ev["agent"].as_str(), Some("files"), "{ev}");
}

trait ThenOk {
    fn then_ok(self) -> Output;
}

impl ThenOk for Output {
    /// `exec /usr/bin/true` prints nothing when it works; normalise to the probe's `ok`.
    fn then_ok(mut self) -> Output {
        if self.status.success() && self.stdout.is_empty() {
            self.stdout = b"ok\n".to_vec();
        }
        self
    }
}

#[test]
fn reads_follow_the_prefixes_whatever_the_path_spelling() {
    if !privileged("reads_follow_the_prefixes_whatever_the_path_spelling") {
        return;
    }
    let t = tree();
    let d = Daemon::start(&policy(&t));
    assert_ok(
        &probe(&d, &["read", &t.p("allowed/data.txt")]),
        "read inside an allowed prefix",
    );
    assert_refused(
        &d,
        &probe(&d, &["read", &t.p("secret/key.txt")]),
        "read outside",
    );
    assert_refused(
        &d,
        &probe(&d, &["read-at", &t.p("allowed"), "../secret/key.txt"]),
        "relative path with ..",
    );
    assert_refused(
        &d,
        &probe(
            &d,
            &["read", &format!("{}/../secret/key.txt", t.p("allowed"))],
        ),
        "absolute path with ..",
    );
    assert_refused(
        &d,
        &probe(&d, &["read", &t.p("allowed/link-to-secret")]),
        "symlink out of the prefix",
    );
    let prefix_twin = format!("{}X", t.p("allowed"));
    fs::create_dir(&prefix_twin).unwrap_or_else(|e| panic!("{e}"));
    fs::write(format!("{prefix_twin}/f"), "x").unwrap_or_else(|e| panic!("{e}"));
    open_tree_to_agents(&prefix_twin);
    assert_refused(
        &d,
        &probe(&d, &["read", &format!("{prefix_twin}/f")]),
        "a sibling sharing the prefix's name",
    );
    // Untagged processes are unaffected.
    assert_eq!(
        fs::read_to_string(t.path("secret/key.txt")).ok().as_deref(),
        Some("secret")
    );
}

#[test]
fn writes_need_a_write_rule() {
    if !privileged("writes_need_a_write_rule") {
        return;
    }
    let t = tree();
    let d = Daemon::start(&policy(&t));
    assert_ok(
        &probe(&d, &["write", &t.p("out/new.txt")]),
        "create in a write prefix",
    );
    assert_ok(
        &probe(
            &d,
            &["rename", &t.p("out/new.txt"), &t.p("out/renamed.txt")],
        ),
        "rename within a write prefix",
    );
    assert_ok(
        &probe(&d, &["unlink", &t.p("out/renamed.txt")]),
        "unlink in a write prefix",
    );
    assert_ok(
        &probe(&d, &["mkdir", &t.p("out/sub")]),
        "mkdir in a write prefix",
    );
    assert_refused(
        &d,
        &probe(&d, &["write", &t.p("ro/ro.txt")]),
        "write to a read-only prefix",
    );
    assert_refused(
        &d,
        &probe(&d, &["truncate", &t.p("ro/ro.txt")]),
        "truncate in a read-only prefix",
    );
    assert_refused(
        &d,
        &probe(&d, &["unlink", &t.p("ro/ro.txt")]),
        "unlink in a read-only prefix",
    );
    assert_refused(
        &d,
        &probe(&d, &["mkdir", &t.p("ro/sub")]),
        "mkdir in a read-only prefix",
    );
    assert_refused(
        &d,
        &probe(&d, &["rename", &t.p("ro/ro.txt"), &t.p("out/stolen.txt")]),
        "rename out of a read-only prefix",
    );
    assert_refused(
        &d,
        &probe(&d, &["reopen-rw", &t.p("ro/ro.txt")]),
        "re-open /proc/self/fd for writing",
    );
    assert_eq!(
        fs::read_to_string(t.path("ro/ro.txt")).ok().as_deref(),
        Some("read only"),
        "the read-only file is intact"
    );
}

#[test]
fn agents_cannot_remap_paths_or_trace_outsiders() {
    if !privileged("agents_cannot_remap_paths_or_trace_outsiders") {
        return;
    }
    let t = tree();
    let d = Daemon::start(&policy(&t));
    let out = probe(&d, &["mount-in-userns"]);
    assert!(
        stdout(&out).starts_with("errno=1 "),
        "mount in a new user namespace: {}",
        describe(&out)
    );
    if d.lsm() {
        let out = probe(&d, &["userns"]);
        assert!(
            stdout(&out).starts_with("errno=1 "),
            "user namespace: {}",
            describe(&out)
        );
    }
    let mut outsider =
        agentguard_tests::ChildGuard::spawn(std::process::Command::new("/bin/sleep").arg("30"));
    let out = probe(&d, &["ptrace", &outsider.id().to_string()]);
    assert!(
        stdout(&out).starts_with("errno=1 "),
        "ptrace of a process outside the instance: {}",
        describe(&out)
    );
    let _ = outsider.kill();
    let _ = outsider.wait();
}

#[test]
fn python_starts_with_the_system_runtime_baseline() {
    if !privileged("python_starts_with_the_system_runtime_baseline") {
        return;
    }
    let d =
        Daemon::start("[agents.py]\nexec = [\"/usr/bin/python3\"]\nread = [\"@system-runtime\"]\n");
    let out = d.run("py", &["/usr/bin/python3", "-c", "print(6 * 7)"]);
    assert_eq!(stdout(&out).trim(), "42", "{}", describe(&out));
    let out = d.run(
        "py",
        &["/usr/bin/python3", "-c", "open('/etc/hostname').read()"],
    );
    assert!(
        !out.status.success(),
        "reading outside the baseline fails: {}",
        describe(&out)
    );
}

#[test]
fn a_binary_replaced_on_disk_is_re_resolved() {
    if !privileged("a_binary_replaced_on_disk_is_re_resolved") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("agentguard-bin")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    open_to_agents(dir.path());
    let tool = dir.path().join("tool");
    fs::copy("/usr/bin/true", &tool).unwrap_or_else(|e| panic!("{e}"));
    let tool_s = tool.to_string_lossy().into_owned();
    let d = Daemon::start(&format!(
        "[agents.files]\nexec = [\"{PROBE}\", \"{tool_s}\"]\nread = [\"@system-runtime\", \"{}\"]\n",
        dir.path().display()
    ));
    assert!(
        probe(&d, &["exec", &tool_s]).status.success(),
        "the original binary runs"
    );
    // What a package manager does: write the new version next to it, rename it over the old.
    let staged = dir.path().join(".tool.new");
    fs::copy("/usr/bin/true", &staged).unwrap_or_else(|e| panic!("{e}"));
    fs::rename(&staged, &tool).unwrap_or_else(|e| panic!("{e}"));
    let ev = d.wait_record("re-apply after the replacement", |r| {
        r["kind"] == "policy-applied"
            && r["by"]["reason"]
                .as_str()
                .is_some_and(|s| s.contains(&tool_s))
    });
    assert_eq!(ev["by"]["type"].as_str(), Some("daemon"), "{ev}");
    assert!(
        probe(&d, &["exec", &tool_s]).status.success(),
        "the replaced binary runs after re-resolution"
    );
}

/// An overlay on a tmpfs of its own (an overlay's upper layer cannot be on an overlay, which
/// `/tmp` may be), both unmounted when dropped.
struct Overlay {
    tmpfs: PathBuf,
    merged: PathBuf,
}

impl Overlay {
    /// Mounts it in `dir`, its lower layer holding a file for each of `files`.
    fn mount(dir: &Path, files: &[&str]) -> Self {
        let tmpfs = dir.join("fs");
        fs::create_dir(&tmpfs).unwrap_or_else(|e| panic!("{e}"));
        mount(
            Some("tmpfs"),
            &tmpfs,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0777"),
        )
        .unwrap_or_else(|e| panic!("tmpfs on {}: {e}", tmpfs.display()));
        let o = Self {
            merged: tmpfs.join("merged"),
            tmpfs,
        };
        for d in ["lower", "upper", "work", "merged"] {
            fs::create_dir(o.tmpfs.join(d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        }
        for f in files {
            fs::write(o.tmpfs.join("lower").join(f), "x").unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        open_tree_to_agents(&o.tmpfs);
        let options = format!(
            "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
            o.tmpfs.display()
        );
        mount(
            Some("overlay"),
            &o.merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("overlay on {}: {e}", o.merged.display()));
        o
    }

    fn p(&self, name: &str) -> String {
        self.merged.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
        let _ = umount2(&self.tmpfs, MntFlags::MNT_DETACH);
    }
}

/// Overlayfs opens the real file under every file an agent opens on it (with the mounter's
/// credentials; on Linux 6.1 under the overlay's own path): that open is the kernel's, not the
/// agent's, and must not be judged, logged or charged a second time.
#[test]
fn an_open_on_an_overlay_is_judged_and_logged_once() {
    if !privileged("an_open_on_an_overlay_is_judged_and_logged_once") {
        return;
    }
    let t = ScratchTree::new("agentguard-overlay");
    let o = Overlay::mount(
        t.base(),
        &["data.txt", "out.txt", "marker.txt", "secret.txt"],
    );
    let d = Daemon::start(&format!(
        "[agents.files]\nexec = [\"{PROBE}\"]\nread = [\"@system-runtime\", \"{data}\", \"{out}\", \"{marker}\"]\nwrite = [\"{out}\"]\n",
        data = o.p("data.txt"),
        out = o.p("out.txt"),
        marker = o.p("marker.txt"),
    ));
    assert_ok(&probe(&d, &["read", &o.p("data.txt")]), "an allowed read");
    // A write to a lower file: overlayfs copies it up, then opens the copy.
    assert_ok(
        &probe(&d, &["open-write", &o.p("out.txt")]),
        "an allowed write",
    );
    assert_refused(
        &d,
        &probe(&d, &["read", &o.p("secret.txt")]),
        "a read without a rule",
    );
    if !d.lsm() {
        // Landlock logs refusals only, and judges the real file under the mounter's domain.
        return;
    }
    // Allowed opens share one ring buffer, logged in the order they were made: once the last
    // one is in the log, so is everything the earlier ones logged.
    assert_ok(&probe(&d, &["read", &o.p("marker.txt")]), "the last read");
    d.wait_record("for the last read", |r| {
        r["target"]["path"] == o.p("marker.txt").as_str()
    });
    let records = d.records();
    for (name, access) in [("data.txt", "read"), ("out.txt", "write")] {
        let opens: Vec<_> = records
            .iter()
            .filter(|r| {
                r["action"] == "file-open"
                    && r["target"]["path"] == o.p(name).as_str()
                    && r["target"]["access"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == access))
            })
            .collect();
        assert_eq!(opens.len(), 1, "one open of {name}, one record: {opens:#?}");
        assert_eq!(opens[0]["verdict"], "allowed", "{:#}", opens[0]);
    }
}

/// A process of the instance in a mount namespace of its own (an agent granted `CAP_SYS_ADMIN`
/// can make one) sees the same files on that namespace's copies of the mounts. Reached through
/// its `/proc/<pid>/root`, a file is judged like any other open, not waved through as one the
/// kernel makes for itself on a mount the agent cannot name.
#[test]
fn a_file_reached_through_another_mount_namespace_is_judged() {
    if !privileged("a_file_reached_through_another_mount_namespace_is_judged") {
        return;
    }
    let t = tree();
    let d = Daemon::start(&format!(
        "[agents.files]\nexec = [\"{PROBE}\", \"/bin/sh\"]\ncapabilities = [\"CAP_SYS_ADMIN\"]\nread = [\"@system-runtime\", \"{a}\"]\nwrite = [\"{out}\"]\n",
        a = t.p("allowed"),
        out = t.p("out"),
    ));
    // Files on the kernel's own mounts are the agent's already: a pipe reopened as /dev/stdin.
    let out = d.run(
        "files",
        &[
            "/bin/sh",
            "-c",
            &format!("echo x | {PROBE} read /dev/stdin"),
        ],
    );
    assert_ok(&out, "a pipe reopened through /dev/stdin");
    assert_refused(
        &d,
        &probe(&d, &["read", &t.p("secret/key.txt")]),
        "a read outside the rules",
    );
    assert_refused(
        &d,
        &probe(&d, &["in-other-mount-ns", "read", &t.p("secret/key.txt")]),
        "the same read through another mount namespace",
    );
    assert_ok(
        &probe(&d, &["in-other-mount-ns", "read", &t.p("allowed/data.txt")]),
        "an allowed read through another mount namespace (the path is the file's)",
    );
    // The path_* write hooks (a dentry walk on 6.1) render the same path there.
    assert_refused(
        &d,
        &probe(&d, &["in-other-mount-ns", "mkdir", &t.p("secret/planted")]),
        "a directory made without a write rule through another mount namespace",
    );
    assert!(!t.path("secret/planted").exists(), "nothing was planted");
    assert_ok(
        &probe(&d, &["in-other-mount-ns", "mkdir", &t.p("out/made")]),
        "a directory made under a write rule through another mount namespace",
    );
}
