//! `agentguard credential checkout|return` over the agent socket: the daemon hands a credential
//! only to an instance whose agent the policy grants it, knows the caller by its cgroup, logs
//! the lease (never the value), and ends the lease on return and on kill.

use std::process::Stdio;

use agentguard_tests::{ChildGuard, Daemon, agentguard_bin, describe, privileged, stdout};

/// The credential. No agent without the grant may ever see it.
const VALUE: &str = "pg-pass-5e1c93a07bd2";

const POLICY: &str = "[agents.buyer]\ncredentials = [\"db-password\", \"never-set\"]\ncredential_ttl = \"10min\"\n\n[agents.buyer.sub.search]\n\n[agents.stranger]\n";

fn start() -> Daemon {
    let d = Daemon::start(POLICY);
    d.set_secret("db-password", VALUE);
    d
}

/// `sh -c SCRIPT` as an instance of `agent`; `$AG` is the agentguard binary.
fn agent_sh(d: &Daemon, agent: &str, script: &str) -> std::process::Output {
    let ag = agentguard_bin();
    let script = format!("AG={}; {script}", ag.display());
    d.run(agent, &["/bin/sh", "-c", &script])
}

fn log_text(d: &Daemon) -> String {
    let state = d.state.to_string_lossy().into_owned();
    stdout(&agentguard_tests::agentguard(&[
        "log",
        "show",
        "--json",
        "--state-dir",
        &state,
    ]))
}

#[test]
fn a_granted_agent_checks_out_and_returns_and_nobody_else_gets_it() {
    if !privileged("a_granted_agent_checks_out_and_returns_and_nobody_else_gets_it") {
        return;
    }
    let d = start();

    // The granted agent: the value with its TTL; return ends the lease; a second return finds
    // none; a checkout after return is a new lease (the old id is worth nothing).
    let out = agent_sh(
        &d,
        "buyer",
        "$AG credential checkout --json db-password; \
         $AG credential return db-password; \
         $AG credential return db-password; echo again=$?; \
         $AG credential checkout --json db-password",
    );
    let text = describe(&out);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{text}");
    let first: serde_json::Value =
        serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(first["value"], VALUE, "{text}");
    assert_eq!(first["name"], "db-password", "{text}");
    let lease = first["lease"].as_str().unwrap_or_default().to_owned();
    assert_eq!(lease.len(), 32, "{text}");
    assert!(
        first["ttl_s"].as_u64().is_some_and(|t| t > 0 && t <= 600),
        "the TTL is the policy's: {text}"
    );
    assert!(
        lines[1].contains(&lease) && lines[1].contains("ended"),
        "{text}"
    );
    assert_eq!(lines[2], "again=1", "a second return: {text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no live lease"),
        "{text}"
    );
    let second: serde_json::Value =
        serde_json::from_str(&lines[3]).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(second["value"], VALUE, "{text}");
    assert_ne!(second["lease"], first["lease"], "a new lease after return");

    // Granted but not set: refused, no value.
    let out = agent_sh(&d, "buyer", "$AG credential checkout never-set");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not set"),
        "{}",
        describe(&out)
    );

    // Another agent asking for buyer's credential.
    let out = agent_sh(&d, "stranger", "$AG credential checkout db-password");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(!stdout(&out).contains(VALUE), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not granted"),
        "{}",
        describe(&out)
    );

    // buyer's own sub-agent, which the policy does not grant it: nested in a granted instance,
    // still refused (the daemon judges the deepest instance the caller is in).
    let out = agent_sh(
        &d,
        "buyer",
        "$AG run --agent buyer/search -- $AG credential checkout db-password; echo sub=$?",
    );
    assert_eq!(stdout(&out).trim(), "sub=1", "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"buyer/search\" is not granted"),
        "{}",
        describe(&out)
    );

    // A process outside every agent instance, as root, on the agent socket.
    let out = d.cli(&["credential", "checkout", "db-password"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(!stdout(&out).contains(VALUE), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("agent socket serves processes inside agent instances"),
        "{}",
        describe(&out)
    );

    // The log: checkout and return with the lease id, refusals with their reason, never the
    // value; the chain verifies.
    let rec = d.wait_record("the checkout", |r| {
        r["kind"] == "credential" && r["action"] == "checkout" && r["lease"] == lease.as_str()
    });
    assert_eq!(rec["agent"], "buyer", "{rec}");
    assert_eq!(rec["name"], "db-password", "{rec}");
    d.wait_record("the return", |r| {
        r["kind"] == "credential" && r["action"] == "return" && r["lease"] == lease.as_str()
    });
    for agent in ["stranger", "buyer/search"] {
        d.wait_record(&format!("the refusal of {agent}"), |r| {
            r["kind"] == "credential" && r["action"] == "refused" && r["agent"] == agent
        });
    }
    let text = log_text(&d);
    assert!(!text.contains(VALUE), "the value is in the log");
    let state = d.state.to_string_lossy().into_owned();
    let verify = agentguard_tests::agentguard(&["log", "verify", "--state-dir", &state]);
    assert!(verify.status.success(), "{}", describe(&verify));
}

#[test]
fn a_kill_revokes_the_checkout() {
    if !privileged("a_kill_revokes_the_checkout") {
        return;
    }
    let d = start();
    let ag = agentguard_bin();
    let script = format!(
        "{} credential checkout db-password >/dev/null && exec sleep 600",
        ag.display()
    );
    let mut cmd = d.run_command("buyer", &["/bin/sh", "-c", &script]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = ChildGuard::spawn(&mut cmd);
    let rec = d.wait_record("the checkout", |r| {
        r["kind"] == "credential" && r["action"] == "checkout"
    });
    let lease = rec["lease"].as_str().unwrap_or_default().to_owned();
    assert_eq!(lease.len(), 32, "{rec}");
    let killed = d.cli(&["kill", "buyer"]);
    assert!(killed.status.success(), "{}", describe(&killed));
    let revoked = d.wait_record("the revocation", |r| {
        r["kind"] == "credential" && r["action"] == "revoke" && r["lease"] == lease.as_str()
    });
    // The kill's own revocation, or the instance's end if the exit watcher saw it first.
    assert!(
        revoked["reason"] == "kill" || revoked["reason"] == "instance ended",
        "{revoked}"
    );
    assert_eq!(revoked["instance"], rec["instance"], "{revoked}");
    let _ = child.wait_with_output();
    // Revoked once: the instance's end finds nothing more to revoke.
    d.wait_record("the instance's exit", |r| {
        r["kind"] == "instance-exit" && r["instance"] == rec["instance"]
    });
    let revocations = d
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "credential" && r["action"] == "revoke")
        .count();
    assert_eq!(revocations, 1);
}

/// Reads every readable mapping of process `$1` through `/proc/$1/mem` and prints `found` if
/// the bytes of `$2` are in it; prints why each way in failed.
const MEMORY_SCAN: &str = r#"
import sys
pid, needle = sys.argv[1], sys.argv[2].encode()
found = False
try:
    maps = open(f"/proc/{pid}/maps").read().splitlines()
except OSError as e:
    print(f"maps: {e.__class__.__name__}")
    maps = []
try:
    mem = open(f"/proc/{pid}/mem", "rb", 0)
    for line in maps:
        span, perms = line.split()[:2]
        if not perms.startswith("r"):
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        try:
            mem.seek(start)
            if needle in mem.read(end - start):
                found = True
        except OSError:
            pass
except OSError as e:
    print(f"mem: {e.__class__.__name__}")
for name in ("environ", "cmdline"):
    try:
        if needle in open(f"/proc/{pid}/{name}", "rb").read():
            found = True
    except OSError as e:
        print(f"{name}: {e.__class__.__name__}")
print("found" if found else "not found")
"#;

/// The value lives in the daemon's memory and, encrypted, in its state directory: an agent,
/// even one that runs as root, reads it out of neither (the process and files of the daemon
/// are outside every agent's reach), and its own environment never carries it.
#[test]
fn no_agent_reads_a_credential_out_of_the_daemon() {
    if !privileged("no_agent_reads_a_credential_out_of_the_daemon") {
        return;
    }
    let policy = format!("{POLICY}\n[agents.rooted]\nuser = \"root\"\n");
    let d = Daemon::start(&policy);
    d.set_secret("db-password", VALUE);
    // The daemon has decrypted and handed out the value: it is in its memory now.
    let out = agent_sh(&d, "buyer", "$AG credential checkout db-password");
    assert_eq!(stdout(&out).trim(), VALUE, "{}", describe(&out));
    let pid = d.pid().to_string();
    let script = std::env::temp_dir().join(format!("agentguard-memscan-{pid}.py"));
    std::fs::write(&script, MEMORY_SCAN).unwrap_or_else(|e| panic!("{e}"));
    agentguard_tests::open_to_agents(&script);
    let secrets = d.state.join("secrets");
    for agent in ["stranger", "rooted"] {
        let out = agent_sh(
            &d,
            agent,
            &format!(
                "python3 {} {pid} {VALUE}; env; cat {}/key {}/store.json; echo",
                script.display(),
                secrets.display(),
                secrets.display()
            ),
        );
        let text = describe(&out);
        assert!(!text.contains(VALUE), "{agent} read the credential: {text}");
        assert!(
            stdout(&out).lines().any(|l| l == "not found"),
            "{agent}: the scan did not run: {text}"
        );
        // Every way in was closed, not merely empty.
        for what in ["mem: ", "environ: "] {
            assert!(
                stdout(&out).lines().any(|l| l.starts_with(what)),
                "{agent}: {what}was not refused: {text}"
            );
        }
    }
    let _ = std::fs::remove_file(&script);
}
