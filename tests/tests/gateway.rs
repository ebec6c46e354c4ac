//! The tool gateway: agents call a real local upstream through the daemon, which learns the
//! caller from the kernel, injects a credential the agent never sees, and refuses what the
//! tool's rules do not allow.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use agentguard_tests::{ChildGuard, Daemon, assert_eperm, describe, patience, privileged, stdout};

/// The credential the upstream expects. The agent must never see it.
const KEY: &str = "sk-test-7f3a9c0e51d24b6f";
/// Another secret the gateway holds (for the smuggling check).
const OTHER: &str = "other-secret-2b8d6e41";

/// What the upstream received: request line and headers of every request.
type Seen = Arc<Mutex<Vec<String>>>;

/// A minimal HTTP/1.1 upstream on loopback: records each request head, answers 200 with the
/// request path in the body, one request per connection.
fn upstream() -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or_default();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap_or_else(|e| panic!("{e}")));
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            s.lock().unwrap_or_else(|e| panic!("{e}")).push(head);
            let reply = format!("upstream-ok {path}");
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (port, seen)
}

fn policy(port: u16) -> String {
    format!(
        "[tools.echo]\nurl = \"http://127.0.0.1:{port}\"\ncredential = \"echo-key\"\ninject = \"header:Authorization: Bearer {{secret}}\"\nmethods = [\"GET\", \"POST\"]\npaths = [\"/v1/quotes\", \"/v1/orders\"]\nrate = \"10/min\"\nmax_body = \"1KiB\"\n\n[tools.other]\nurl = \"http://127.0.0.1:{port}\"\npaths = [\"/\"]\n\n[agents.buyer]\ntools = [\"echo\"]\n\n[agents.stranger]\ntools = [\"other\"]\n"
    )
}

fn start(port: u16) -> Daemon {
    let d = Daemon::start_with(&policy(port), &["--gateway-listen", "127.0.0.1:0"]);
    for (name, value) in [("echo-key", KEY), ("other-key", OTHER)] {
        let mut c = Command::new(agentguard_tests::agentguard_bin());
        c.args(["secret", "set", name])
            .env("AGENTGUARD_SOCKET", &d.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("{e}"));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{value}");
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "secret set: {}", describe(&out));
    }
    let list = d.cli(&["secret", "list"]);
    assert_eq!(
        stdout(&list),
        "echo-key\nother-key\n",
        "{}",
        describe(&list)
    );
    d
}

/// A shell script run as an agent; curl never uses a proxy and prints `CODE RETRY-AFTER`.
fn agent_sh(d: &Daemon, agent: &str, script: &str) -> String {
    let out = d.run(agent, &["/bin/sh", "-c", script]);
    assert!(out.status.success(), "agent script: {}", describe(&out));
    stdout(&out)
}

const CURL: &str = "curl --noproxy '*' -s -o /dev/null -w '%{http_code} %header{retry-after}\\n'";

#[test]
fn the_gateway_injects_credentials_and_enforces_the_tools_rules() {
    if !privileged("the_gateway_injects_credentials_and_enforces_the_tools_rules") {
        return;
    }
    let (port, seen) = upstream();
    let d = start(port);

    // A tool call: the upstream receives the credential, the agent sees neither it in its
    // environment nor in the response.
    let out = agent_sh(
        &d,
        "buyer",
        "env; echo; curl --noproxy '*' -s -D - \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes/7?q=1\"",
    );
    assert!(
        out.contains("AGENTGUARD_GATEWAY=http://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("upstream-ok /v1/quotes/7?q=1"), "{out}");
    assert!(!out.contains(KEY), "the agent saw the credential: {out}");
    let heads = seen.lock().unwrap_or_else(|e| panic!("{e}")).clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].to_ascii_lowercase().contains(&format!(
            "authorization: bearer {}",
            KEY.to_ascii_lowercase()
        )),
        "the upstream got no credential: {heads:?}"
    );
    let gateway = out
        .lines()
        .find_map(|l| l.strip_prefix("AGENTGUARD_GATEWAY="))
        .unwrap_or_default()
        .to_owned();

    // Outside the rules: a method, a path, a traversal, the gateway's own query parameter.
    let out = agent_sh(
        &d,
        "buyer",
        &format!(
            "{CURL} -X DELETE \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes/7\"; \
             {CURL} \"$AGENTGUARD_GATEWAY/tools/echo/v1/admin\"; \
             {CURL} --path-as-is \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes/../admin\"; \
             {CURL} \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotesX\"; \
             {CURL} \"$AGENTGUARD_GATEWAY/tools/other/x\""
        ),
    );
    let codes: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(codes, ["403", "403", "403", "403", "403"], "{out}");

    // A secret's value in a request is refused (403), wherever it is; a body over max_body 413.
    let out = agent_sh(
        &d,
        "buyer",
        &format!(
            "{CURL} \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes?k={OTHER}\"; \
             {CURL} -H 'X-Note: {OTHER}' \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes\"; \
             {CURL} -X POST --data 'a=other%2Dsecret%2D2b8d6e41' \"$AGENTGUARD_GATEWAY/tools/echo/v1/orders\"; \
             head -c 2048 /dev/zero | {CURL} -X POST --data-binary @- \"$AGENTGUARD_GATEWAY/tools/echo/v1/orders\""
        ),
    );
    let codes: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(codes, ["403", "403", "403", "413"], "{out}");
    assert_eq!(
        seen.lock().unwrap_or_else(|e| panic!("{e}")).len(),
        1,
        "a refused request reached the upstream"
    );

    // The budget: 10 per minute per instance, the 11th gets 429 with Retry-After.
    let out = agent_sh(
        &d,
        "buyer",
        &format!(
            "for i in 1 2 3 4 5 6 7 8 9 10 11; do {CURL} \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes/$i\"; done"
        ),
    );
    let codes: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(codes.len(), 11, "{out}");
    assert!(codes[..10].iter().all(|c| *c == "200"), "{out}");
    let (code, retry) = codes[10].split_once(' ').unwrap_or((codes[10], ""));
    assert_eq!(code, "429", "{out}");
    assert!(
        retry.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)),
        "Retry-After {retry:?}"
    );

    // An agent without the tool, and a process that is no agent at all: 403.
    let out = agent_sh(
        &d,
        "stranger",
        &format!("{CURL} \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes\""),
    );
    assert_eq!(out.trim(), "403", "{out}");
    let host = Command::new("curl")
        .args([
            "--noproxy",
            "*",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("{gateway}/tools/echo/v1/quotes"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stdout(&host), "403", "{}", describe(&host));

    // The agent cannot go around the gateway: a direct connect to the upstream is EPERM.
    assert_eperm(
        &d.probe("buyer", &["tcp", "127.0.0.1", &port.to_string()]),
        "direct connect to the upstream",
    );

    // The log: a record per request with path and status, never a secret.
    let rec = d.wait_record("tool-call 429", |r| {
        r["kind"] == "tool-call" && r["status"] == 429
    });
    assert_eq!(rec["verdict"], "throttled", "{rec}");
    let rec = d.wait_record("tool-call forwarded", |r| {
        r["kind"] == "tool-call" && r["path"] == "/v1/quotes/7" && r["status"] == 200
    });
    assert_eq!(rec["agent"], "buyer", "{rec}");
    assert_eq!(rec["tool"], "echo", "{rec}");
    assert_eq!(rec["method"], "GET", "{rec}");
    assert_eq!(rec["verdict"], "forwarded", "{rec}");
    assert!(rec["bytes_out"].as_u64().is_some_and(|b| b > 0), "{rec}");
    assert_eq!(rec["lease"].as_str().map(str::len), Some(32), "{rec}");
    d.wait_record("tool-call of a non-agent", |r| {
        r["kind"] == "tool-call" && r["agent"] == "" && r["status"] == 403
    });
    d.wait_record("tool-call smuggling", |r| {
        r["kind"] == "tool-call" && r["verdict"] == "secret-in-request"
    });
    let state = d.state.to_string_lossy().into_owned();
    let all = agentguard_tests::agentguard(&["log", "show", "--json", "--state-dir", &state]);
    let text = stdout(&all);
    assert!(text.contains("tool-call"), "{text}");
    assert!(
        !text.contains(KEY) && !text.contains(OTHER),
        "a secret in the log"
    );
    let verify = agentguard_tests::agentguard(&["log", "verify", "--state-dir", &state]);
    assert!(verify.status.success(), "{}", describe(&verify));
    // At rest, the store holds no value in clear.
    let store = std::fs::read_to_string(d.state.join("secrets/store.json")).unwrap_or_default();
    assert!(
        store.contains("echo-key") && !store.contains(KEY),
        "{store}"
    );
}

#[test]
fn a_freeze_revokes_the_lease() {
    if !privileged("a_freeze_revokes_the_lease") {
        return;
    }
    let (port, _seen) = upstream();
    let d = start(port);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let go = dir.path().join("go");
    let script = format!(
        "{CURL} \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes/1\"; \
         while [ ! -e {go} ]; do sleep 0.05; done; \
         {CURL} \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes/2\"",
        go = go.display()
    );
    let mut cmd = d.run_command("buyer", &["/bin/sh", "-c", &script]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = ChildGuard::spawn(&mut cmd);
    let first = d.wait_record("the first call", |r| {
        r["kind"] == "tool-call" && r["path"] == "/v1/quotes/1"
    });
    let frozen = d.cli(&["freeze", "buyer"]);
    assert!(frozen.status.success(), "{}", describe(&frozen));
    let thawed = d.cli(&["thaw", "buyer"]);
    assert!(thawed.status.success(), "{}", describe(&thawed));
    std::fs::write(&go, "").unwrap_or_else(|e| panic!("{e}"));
    let second = d.wait_record("the second call", |r| {
        r["kind"] == "tool-call" && r["path"] == "/v1/quotes/2"
    });
    let start = Instant::now();
    let out = child.wait_with_output();
    assert!(start.elapsed() < patience(Duration::from_secs(30)));
    assert_eq!(
        stdout(&out).lines().map(str::trim).collect::<Vec<_>>(),
        ["200", "200"],
        "{}",
        describe(&out)
    );
    assert_eq!(first["instance"], second["instance"]);
    assert_ne!(
        first["lease"], second["lease"],
        "a freeze must end the lease: {first} {second}"
    );
}
