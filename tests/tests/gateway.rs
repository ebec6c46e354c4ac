//! The tool gateway: agents call a real local upstream through the daemon, which learns the
//! caller from the kernel, injects a credential the agent never sees, and refuses what the
//! tool's rules do not allow.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
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
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let port = serve(move |req, conn| {
        let reply = format!("upstream-ok {}", req.path());
        s.lock().unwrap_or_else(|e| panic!("{e}")).push(req.head);
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
    });
    (port, seen)
}

/// One HTTP/1.1 request as a test server reads it.
struct Request {
    /// Request line and headers, each with its CRLF, without the blank line.
    head: String,
    /// The body, by Content-Length.
    body: Vec<u8>,
}

impl Request {
    fn read(reader: &mut impl BufRead) -> Self {
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            head.push_str(&line);
        }
        let mut body = vec![0u8; len];
        let _ = reader.read_exact(&mut body);
        Self { head, body }
    }

    fn path(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A loopback server answering one request per connection with `answer`; returns its port.
fn serve(answer: impl Fn(Request, &mut TcpStream) + Send + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or_default();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap_or_else(|e| panic!("{e}")));
            answer(Request::read(&mut reader), &mut conn);
        }
    });
    port
}

/// Writes a whole JSON answer and closes the exchange.
fn answer_json(conn: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn policy(port: u16) -> String {
    format!(
        "[tools.echo]\nurl = \"http://127.0.0.1:{port}\"\ncredential = \"echo-key\"\ninject = \"header:Authorization: Bearer {{secret}}\"\nmethods = [\"GET\", \"POST\"]\npaths = [\"/v1/quotes\", \"/v1/orders\"]\nrate = \"10/h\"\nmax_body = \"1KiB\"\n\n[tools.other]\nurl = \"http://127.0.0.1:{port}\"\npaths = [\"/\"]\n\n[agents.buyer]\ntools = [\"echo\"]\n\n[agents.stranger]\ntools = [\"other\"]\n"
    )
}

fn start(port: u16) -> Daemon {
    let d = Daemon::start_with(&policy(port), &["--gateway-listen", "127.0.0.1:0"]);
    for (name, value) in [("echo-key", KEY), ("other-key", OTHER)] {
        d.set_secret(name, value);
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

    // The budget: 10 an hour per instance (an hour, so that no token comes back while even an
    // emulated guest sends the 11), the 11th gets 429 with Retry-After.
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
        retry.parse::<u64>().is_ok_and(|s| (1..=360).contains(&s)),
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

/// Calls the upstream MCP server received: `tools/call:NAME` or the method, in order.
type Calls = Arc<Mutex<Vec<String>>>;

/// A minimal MCP server (JSON-RPC 2.0 over Streamable HTTP) on loopback: `initialize`,
/// `tools/list` and `tools/call` answered as JSON, except `tools/call`, answered as an SSE
/// stream read to the end of the connection.
fn mcp_upstream() -> (u16, Calls) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let port = serve(move |req, conn| {
        let msg: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let msgs = match msg {
            serde_json::Value::Array(a) => a,
            one => vec![one],
        };
        let mut results = Vec::new();
        let mut sse = false;
        for m in &msgs {
            let method = m["method"].as_str().unwrap_or_default();
            let label = if method == "tools/call" {
                sse = true;
                format!("tools/call:{}", m["params"]["name"].as_str().unwrap_or("?"))
            } else {
                method.to_owned()
            };
            seen.lock()
                .unwrap_or_else(|e| panic!("{e}"))
                .push(label.clone());
            let result = match method {
                "initialize" => serde_json::json!({"protocolVersion": "2025-06-18",
                    "capabilities": {"tools": {}}, "serverInfo": {"name": "market", "version": "1"}}),
                "tools/list" => {
                    serde_json::json!({"tools": [{"name": "search"}, {"name": "delete_all"}]})
                }
                _ => {
                    serde_json::json!({"content": [{"type": "text", "text": format!("did {label}")}]})
                }
            };
            if !m["id"].is_null() {
                results
                    .push(serde_json::json!({"jsonrpc": "2.0", "id": m["id"], "result": result}));
            }
        }
        if sse {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            );
            for r in results {
                let _ = write!(conn, "event: message\ndata: {r}\n\n");
                let _ = conn.flush();
            }
        } else if results.is_empty() {
            let _ = write!(
                conn,
                "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        } else {
            let reply = if results.len() == 1 && msgs.len() == 1 {
                results.remove(0).to_string()
            } else {
                serde_json::Value::Array(results).to_string()
            };
            answer_json(conn, "200 OK", &reply);
        }
    });
    (port, calls)
}

/// A daemon whose MCP tool `market` (at the upstream on `port`, path `/mcp`) allows the calls
/// `mcp_tools` (a TOML array) names, granted to agent `buyer`.
fn mcp_market(port: u16, mcp_tools: &str) -> Daemon {
    Daemon::start_with(
        &format!(
            "[tools.market]\nurl = \"http://127.0.0.1:{port}\"\nprotocol = \"mcp\"\npaths = [\"/mcp\"]\nmcp_tools = {mcp_tools}\n\n[agents.buyer]\ntools = [\"market\"]\n"
        ),
        &["--gateway-listen", "127.0.0.1:0"],
    )
}

/// A shell command POSTing `body` to the `market` tool through the gateway (with extra curl
/// `flags`), printing the answer, its status on a line of its own, then `---`.
fn mcp_post(body: &str, flags: &str) -> String {
    format!(
        "curl --noproxy '*' -s {flags} -w '\\n%{{http_code}}\\n' -H 'Content-Type: application/json' \
         -H 'Accept: application/json, text/event-stream' --data-binary '{body}' \
         \"$AGENTGUARD_GATEWAY/tools/market/mcp\"; echo ---"
    )
}

/// A JSON-RPC `tools/call` of MCP tool `name`.
fn mcp_call(id: u32, name: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
    )
}

#[test]
fn mcp_calls_are_judged_per_json_rpc_call() {
    if !privileged("mcp_calls_are_judged_per_json_rpc_call") {
        return;
    }
    let (port, calls) = mcp_upstream();
    let d = mcp_market(port, r#"["search", "get_quote"]"#);
    let post = |body: &str| mcp_post(body, "");
    let call = mcp_call;
    let script = [
        post(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#),
        post(&call(2, "search")),
        post(&call(3, "delete_all")),
        post(&format!("[{},{}]", call(4, "get_quote"), call(5, "delete_all"))),
        post(r#"{"jsonrpc":"2.0","id":6,"method":"resources/read","params":{"uri":"file:///etc/shadow"}}"#),
        // Two names: what is judged (the last) is what the upstream gets.
        post(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_all","name":"search"}}"#),
        post("not json"),
    ]
    .join("; ");
    let out = agent_sh(&d, "buyer", &script);
    let answers: Vec<(String, String)> = out
        .split("---\n")
        .filter(|a| !a.trim().is_empty())
        .map(|a| {
            let a = a.trim_end();
            let (body, code) = a.rsplit_once('\n').unwrap_or(("", a));
            (body.to_owned(), code.trim().to_owned())
        })
        .collect();
    assert_eq!(answers.len(), 7, "{out}");
    let codes: Vec<&str> = answers.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        codes,
        ["200", "200", "403", "403", "403", "200", "400"],
        "{out}"
    );
    assert!(answers[0].0.contains("protocolVersion"), "{out}");
    // The allowed call streams back as SSE.
    assert!(
        answers[1].0.contains("event: message") && answers[1].0.contains("did tools/call:search"),
        "{out}"
    );
    // Refusals are JSON-RPC errors, per element of a batch.
    let refused: serde_json::Value =
        serde_json::from_str(&answers[2].0).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(refused["id"], 3, "{out}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("delete_all")),
        "{out}"
    );
    let batch: serde_json::Value =
        serde_json::from_str(&answers[3].0).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(batch[0]["id"], 4, "{out}");
    assert_eq!(batch[1]["id"], 5, "{out}");
    assert!(
        batch[1]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("delete_all")),
        "{out}"
    );
    // The upstream saw the allowed calls only.
    let seen = calls.lock().unwrap_or_else(|e| panic!("{e}")).clone();
    assert_eq!(
        seen,
        ["initialize", "tools/call:search", "tools/call:search"],
        "the upstream received a refused call"
    );
    // The log names the refused MCP tool.
    let rec = d.wait_record("the refused MCP call", |r| {
        r["kind"] == "mcp-call" && r["mcp"] == "tools/call:delete_all" && r["status"] == 403
    });
    assert_eq!(rec["verdict"], "denied", "{rec}");
    assert_eq!(rec["tool"], "market", "{rec}");
    d.wait_record("the forwarded MCP call", |r| {
        r["kind"] == "mcp-call" && r["mcp"] == "tools/call:search" && r["status"] == 200
    });
    d.wait_record("the refused method", |r| {
        r["kind"] == "mcp-call" && r["mcp"] == "resources/read"
    });
}

#[test]
fn an_mcp_tool_over_its_own_budget_gets_429_while_another_still_passes() {
    if !privileged("an_mcp_tool_over_its_own_budget_gets_429_while_another_still_passes") {
        return;
    }
    let (port, calls) = mcp_upstream();
    // Per hour: nothing refills during the test.
    let d = mcp_market(port, r#"[{ name = "buy", rate = "3/h" }, "search"]"#);
    let post = |body: &str| mcp_post(body, "-i");
    let call = mcp_call;
    let mut script: Vec<String> = (1..=4).map(|i| post(&call(i, "buy"))).collect();
    script.push(post(&call(5, "search")));
    // A batch with one more buy: refused whole, the search in it not forwarded either.
    script.push(post(&format!("[{},{}]", call(6, "search"), call(7, "buy"))));
    let out = agent_sh(&d, "buyer", &script.join("; "));
    let answers: Vec<&str> = out
        .split("---\n")
        .filter(|a| !a.trim().is_empty())
        .collect();
    assert_eq!(answers.len(), 6, "{out}");
    for a in &answers[..3] {
        assert!(a.trim_end().ends_with("200"), "within the budget: {out}");
    }
    for a in [answers[3], answers[5]] {
        assert!(a.contains("429"), "over the budget: {out}");
        assert!(a.to_ascii_lowercase().contains("retry-after: "), "{out}");
        assert!(a.contains("\"code\":-32002"), "a JSON-RPC error: {out}");
    }
    assert!(
        answers[4].trim_end().ends_with("200"),
        "search has no budget: {out}"
    );
    let seen = calls.lock().unwrap_or_else(|e| panic!("{e}")).clone();
    assert_eq!(
        seen,
        [
            "tools/call:buy",
            "tools/call:buy",
            "tools/call:buy",
            "tools/call:search"
        ],
        "the upstream received a call over budget"
    );
    let rec = d.wait_record("the throttled MCP call", |r| {
        r["kind"] == "mcp-call" && r["mcp"] == "tools/call:buy" && r["status"] == 429
    });
    assert_eq!(rec["verdict"], "throttled", "{rec}");
    assert_eq!(rec["tool"], "market", "{rec}");
    d.wait_record("the throttled batch", |r| {
        r["kind"] == "mcp-call"
            && r["mcp"] == "tools/call:buy"
            && r["status"] == 429
            && r["verdict"] == "throttled"
    });
}

/// The value the fake Vault holds.
const VAULT_VALUE: &str = "vault-kv-9d41c2e7a6b0";
const VAULT_TOKEN: &str = "hvs.test-token-0c8e";

/// A fake Vault KV v2 read endpoint (protocol logic only: no Vault binary exists offline):
/// `GET /v1/secret/data/agentguard/NAME` answers the KV v2 shape for the names it holds, 404 for
/// others, 403 without the right `X-Vault-Token`. Records each request's path.
fn fake_vault() -> (u16, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let port = serve(move |req, conn| {
        let path = req.path().to_owned();
        s.lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .push(path.clone());
        let (status, body) = if req.header("x-vault-token") != Some(VAULT_TOKEN) {
            (
                "403 Forbidden",
                r#"{"errors":["permission denied"]}"#.to_owned(),
            )
        } else if path == "/v1/secret/data/agentguard/db-password" {
            (
                "200 OK",
                format!(
                    r#"{{"request_id":"r","data":{{"data":{{"value":"{VAULT_VALUE}"}},"metadata":{{"version":3}}}}}}"#
                ),
            )
        } else {
            ("404 Not Found", r#"{"errors":[]}"#.to_owned())
        };
        answer_json(conn, status, &body);
    });
    (port, seen)
}

/// A daemon with the gateway and the Vault backend at the fake Vault on `vault_port`, its
/// token in `dir/token`, and `more` Vault options.
fn start_with_vault(policy: &str, vault_port: u16, dir: &std::path::Path, more: &[&str]) -> Daemon {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{VAULT_TOKEN}\n")).unwrap_or_else(|e| panic!("{e}"));
    let token_arg = token_file.to_string_lossy().into_owned();
    let addr = format!("http://127.0.0.1:{vault_port}");
    let mut args = vec![
        "--gateway-listen",
        "127.0.0.1:0",
        "--vault-addr",
        &addr,
        "--vault-token-file",
        &token_arg,
    ];
    args.extend_from_slice(more);
    Daemon::start_with(policy, &args)
}

#[test]
fn secrets_come_from_vault_when_the_store_has_none() {
    if !privileged("secrets_come_from_vault_when_the_store_has_none") {
        return;
    }
    let (vault_port, vault_seen) = fake_vault();
    let (port, seen) = upstream();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = start_with_vault(
        &format!(
            "[tools.db]\nurl = \"http://127.0.0.1:{port}\"\ncredential = \"db-password\"\ninject = \"header:X-Key: {{secret}}\"\npaths = [\"/\"]\n\n[agents.buyer]\ntools = [\"db\"]\ncredentials = [\"db-password\", \"nowhere\"]\n"
        ),
        vault_port,
        dir.path(),
        &["--vault-prefix", "agentguard/", "--vault-cache-secs", "0"],
    );
    let ag = agentguard_tests::agentguard_bin();
    let out = agent_sh(
        &d,
        "buyer",
        &format!(
            "{ag} credential checkout db-password; {ag} credential checkout nowhere; echo nowhere=$?; \
             {CURL} \"$AGENTGUARD_GATEWAY/tools/db/x\"",
            ag = ag.display()
        ),
    );
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, [VAULT_VALUE, "nowhere=1", "200"], "{out}");
    let heads = seen.lock().unwrap_or_else(|e| panic!("{e}")).clone();
    assert!(
        heads.iter().any(|h| h
            .to_ascii_lowercase()
            .contains(&format!("x-key: {VAULT_VALUE}"))),
        "the upstream got no credential from Vault: {heads:?}"
    );
    let paths = vault_seen.lock().unwrap_or_else(|e| panic!("{e}")).clone();
    assert!(
        paths.contains(&"/v1/secret/data/agentguard/db-password".to_owned())
            && paths.contains(&"/v1/secret/data/agentguard/nowhere".to_owned()),
        "{paths:?}"
    );
    // A token Vault refuses: the checkout and the tool call fail closed.
    std::fs::write(dir.path().join("token"), "hvs.revoked\n").unwrap_or_else(|e| panic!("{e}"));
    let out = agent_sh(
        &d,
        "buyer",
        &format!(
            "{ag} credential checkout db-password; echo checkout=$?; {CURL} \"$AGENTGUARD_GATEWAY/tools/db/x\"",
            ag = ag.display()
        ),
    );
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["checkout=1", "503"], "{out}");
    let rec = d.wait_record("the refused checkout", |r| {
        r["kind"] == "credential" && r["action"] == "refused" && r["name"] == "db-password"
    });
    assert!(
        rec["reason"].as_str().is_some_and(|m| m.contains("403")),
        "{rec}"
    );
    let state = d.state.to_string_lossy().into_owned();
    let all = agentguard_tests::agentguard(&["log", "show", "--json", "--state-dir", &state]);
    assert!(
        !stdout(&all).contains(VAULT_VALUE),
        "a Vault value in the log"
    );
}

/// What a fake dynamic-secret Vault did: credentials issued (value, lease id) and lease ids
/// revoked, in order.
#[derive(Default)]
struct DynamicVault {
    issued: Vec<(String, String)>,
    revoked: Vec<String>,
    /// Revocations are answered 503 (Vault sealed or overloaded) while set.
    refuse_revokes: bool,
    /// Revocations asked for, answered or not.
    revoke_attempts: usize,
}

/// A fake Vault dynamic secrets engine (protocol logic only: no Vault binary exists offline):
/// `GET /v1/database/creds/buyer` issues a new credential on every call (the database engine's
/// answer: `lease_id`, `lease_duration`, `data.username`, `data.password`), and
/// `PUT /v1/sys/leases/revoke` records the `lease_id` of its JSON body; both want the token.
fn fake_dynamic_vault() -> (u16, Arc<Mutex<DynamicVault>>) {
    let state: Arc<Mutex<DynamicVault>> = Arc::default();
    let s = state.clone();
    let port = serve(move |req, conn| {
        let mut st = s.lock().unwrap_or_else(|e| panic!("{e}"));
        let method = req.head.split_whitespace().next().unwrap_or("").to_owned();
        if req.path() == "/v1/sys/leases/revoke" {
            st.revoke_attempts += 1;
        }
        let (status, body) = match (method.as_str(), req.path()) {
            _ if req.header("x-vault-token") != Some(VAULT_TOKEN) => (
                "403 Forbidden",
                r#"{"errors":["permission denied"]}"#.to_owned(),
            ),
            ("GET", "/v1/database/creds/buyer") => {
                let n = st.issued.len() + 1;
                let value = format!("dyn-pass-{n}-4f0c9a7e");
                let lease = format!("database/creds/buyer/lease{n}x7Qe");
                st.issued.push((value.clone(), lease.clone()));
                (
                    "200 OK",
                    format!(
                        r#"{{"request_id":"r{n}","lease_id":"{lease}","renewable":true,"lease_duration":3600,"data":{{"username":"v-buyer-{n}","password":"{value}"}}}}"#
                    ),
                )
            }
            ("PUT" | "POST", "/v1/sys/leases/revoke") if st.refuse_revokes => (
                "503 Service Unavailable",
                r#"{"errors":["Vault is sealed"]}"#.to_owned(),
            ),
            ("PUT" | "POST", "/v1/sys/leases/revoke") => {
                let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
                match body["lease_id"].as_str() {
                    Some(id) => {
                        st.revoked.push(id.to_owned());
                        ("204 No Content", String::new())
                    }
                    None => (
                        "400 Bad Request",
                        r#"{"errors":["no lease_id"]}"#.to_owned(),
                    ),
                }
            }
            _ => ("404 Not Found", r#"{"errors":[]}"#.to_owned()),
        };
        drop(st);
        answer_json(conn, status, &body);
    });
    (port, state)
}

/// Every instance gets a credential of its own from Vault's dynamic secrets engine; the end
/// of an instance's lease (its exit, a freeze) revokes exactly its credential at Vault, and a
/// thawed instance gets a new one. An instance sending another's credential is refused.
#[test]
fn vault_dynamic_secrets_are_per_instance_and_revoked_at_vault() {
    if !privileged("vault_dynamic_secrets_are_per_instance_and_revoked_at_vault") {
        return;
    }
    let (vault_port, vault) = fake_dynamic_vault();
    let (port, seen) = upstream();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let d = start_with_vault(
        &format!(
            "[tools.db]\nurl = \"http://127.0.0.1:{port}\"\ncredential = \"orders-db\"\ninject = \"header:X-Key: {{secret}}\"\npaths = [\"/\"]\n\n[agents.buyer]\ntools = [\"db\"]\ncredentials = [\"orders-db\"]\n"
        ),
        vault_port,
        dir.path(),
        &["--vault-dynamic", "orders-db=database/creds/buyer#password"],
    );
    let issued = || {
        vault
            .lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .issued
            .clone()
    };
    let revoked = || {
        vault
            .lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .revoked
            .clone()
    };
    let upstream_key = |path: &str| {
        let heads = seen.lock().unwrap_or_else(|e| panic!("{e}")).clone();
        heads
            .iter()
            .find(|h| h.split_whitespace().nth(1) == Some(path))
            .and_then(|h| {
                h.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("x-key").then(|| v.trim().to_owned())
                })
            })
            .unwrap_or_else(|| panic!("the upstream got no {path} with a key: {heads:?}"))
    };

    // Instance A: one call, then a second one once the test says go.
    let go = dir.path().join("go");
    let script = format!(
        "{CURL} \"$AGENTGUARD_GATEWAY/tools/db/a1\"; \
         while [ ! -e {go} ]; do sleep 0.05; done; \
         {CURL} \"$AGENTGUARD_GATEWAY/tools/db/a2\"",
        go = go.display()
    );
    let mut cmd = d.run_command("buyer", &["/bin/sh", "-c", &script]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = ChildGuard::spawn(&mut cmd);
    let a1 = d.wait_record("A's first call", |r| {
        r["kind"] == "tool-call" && r["path"] == "/a1"
    });
    assert_eq!(a1["status"], 200, "{a1}");
    let a_issue = d.wait_record("A's credential issued", |r| {
        r["kind"] == "vault-lease" && r["action"] == "issued" && r["lease"] == a1["lease"]
    });
    assert_eq!(issued().len(), 1);
    let (a_value, a_vault_lease) = issued()[0].clone();
    assert_eq!(upstream_key("/a1"), a_value);
    assert_eq!(a_issue["vault_lease"], a_vault_lease.as_str(), "{a_issue}");
    assert_eq!(a_issue["instance"], a1["instance"], "{a_issue}");
    assert!(
        a_issue["ttl_s"].as_u64().is_some_and(|t| t > 0 && t <= 900),
        "{a_issue}"
    );

    // Instance B, while A's credential lives: a credential of its own; A's, sent by B, refused;
    // its checkout another credential of its own.
    let out = agent_sh(
        &d,
        "buyer",
        &format!(
            "{CURL} \"$AGENTGUARD_GATEWAY/tools/db/b1\"; \
             {CURL} -H 'X-Note: {a_value}' \"$AGENTGUARD_GATEWAY/tools/db/b2\"; \
             {ag} credential checkout orders-db",
            ag = agentguard_tests::agentguard_bin().display()
        ),
    );
    let (c_value, c_vault_lease) = issued()[2].clone();
    assert_eq!(
        out.lines().map(str::trim).collect::<Vec<_>>(),
        ["200", "403", c_value.as_str()],
        "{out}"
    );
    let b1 = d.wait_record("B's call", |r| {
        r["kind"] == "tool-call" && r["path"] == "/b1"
    });
    assert_ne!(b1["instance"], a1["instance"]);
    assert_ne!(b1["lease"], a1["lease"]);
    let (b_value, b_vault_lease) = issued()[1].clone();
    assert_eq!(upstream_key("/b1"), b_value);
    assert_ne!(a_value, b_value, "two instances share a credential");
    d.wait_record("B's smuggled credential", |r| {
        r["kind"] == "tool-call" && r["path"] == "/b2" && r["verdict"] == "secret-in-request"
    });

    assert_ne!(
        c_value, b_value,
        "a checkout shares a gateway lease's credential"
    );
    let checkout = d.wait_record("B's checkout", |r| {
        r["kind"] == "credential" && r["action"] == "checkout"
    });

    // B ended: its credentials, and only its, are revoked at Vault.
    let b_revoked = d.wait_record("B's credential revoked", |r| {
        r["kind"] == "vault-lease" && r["action"] == "revoked" && r["lease"] == b1["lease"]
    });
    assert_eq!(b_revoked["reason"], "instance ended", "{b_revoked}");
    assert_eq!(b_revoked["vault_lease"], b_vault_lease.as_str());
    let c_revoked = d.wait_record("B's checked-out credential revoked", |r| {
        r["kind"] == "vault-lease" && r["action"] == "revoked" && r["lease"] == checkout["lease"]
    });
    assert_eq!(c_revoked["vault_lease"], c_vault_lease.as_str());
    let mut gone = revoked();
    gone.sort();
    let mut b_leases = vec![b_vault_lease.clone(), c_vault_lease.clone()];
    b_leases.sort();
    assert_eq!(
        gone, b_leases,
        "Vault must have revoked exactly B's two credentials"
    );

    // A frozen: its credential is revoked at Vault; thawed, its next call gets a new one.
    let frozen = d.cli(&["freeze", "buyer"]);
    assert!(frozen.status.success(), "{}", describe(&frozen));
    let a_revoked = d.wait_record("A's credential revoked", |r| {
        r["kind"] == "vault-lease" && r["action"] == "revoked" && r["lease"] == a1["lease"]
    });
    assert_eq!(a_revoked["reason"], "freeze", "{a_revoked}");
    assert_eq!(revoked().len(), 3);
    assert_eq!(revoked()[2], a_vault_lease);
    let thawed = d.cli(&["thaw", "buyer"]);
    assert!(thawed.status.success(), "{}", describe(&thawed));
    std::fs::write(&go, "").unwrap_or_else(|e| panic!("{e}"));
    let a2 = d.wait_record("A's second call", |r| {
        r["kind"] == "tool-call" && r["path"] == "/a2"
    });
    assert_eq!(a2["status"], 200, "{a2}");
    assert_eq!(a2["instance"], a1["instance"]);
    assert_ne!(a2["lease"], a1["lease"], "a freeze must end the lease");
    assert_eq!(issued().len(), 4);
    let (a2_value, _) = issued()[3].clone();
    assert_eq!(upstream_key("/a2"), a2_value);
    let out = child.wait_with_output();
    assert_eq!(
        stdout(&out).lines().map(str::trim).collect::<Vec<_>>(),
        ["200", "200"],
        "{}",
        describe(&out)
    );

    // No value in the log; the chain verifies.
    let state = d.state.to_string_lossy().into_owned();
    let all = stdout(&agentguard_tests::agentguard(&[
        "log",
        "show",
        "--json",
        "--state-dir",
        &state,
    ]));
    for (value, _) in issued() {
        assert!(!all.contains(&value), "a dynamic credential in the log");
    }
    let verify = agentguard_tests::agentguard(&["log", "verify", "--state-dir", &state]);
    assert!(verify.status.success(), "{}", describe(&verify));
}

/// A tool's budget belongs to the instance tree: an agent that starts sub-agents (or restarts
/// one) with the same tool gets no fresh bucket, so it cannot multiply the tool's `rate`.
#[test]
fn sub_agents_spend_their_parents_budget() {
    if !privileged("sub_agents_spend_their_parents_budget") {
        return;
    }
    let (port, seen) = upstream();
    let d = Daemon::start_with(
        &format!(
            "[tools.echo]\nurl = \"http://127.0.0.1:{port}\"\ncredential = \"echo-key\"\ninject = \"header:Authorization: Bearer {{secret}}\"\npaths = [\"/v1/quotes\"]\nrate = \"4/h\"\n\n[agents.buyer]\ntools = [\"echo\"]\n\n[agents.buyer.sub.helper]\ntools = [\"echo\"]\n"
        ),
        &["--gateway-listen", "127.0.0.1:0"],
    );
    d.set_secret("echo-key", KEY);
    let ag = agentguard_tests::agentguard_bin();
    let ag = ag.to_string_lossy();
    // Two of the four from the parent, then two sub-agent instances ask for two each.
    let call = format!("{CURL} \"$AGENTGUARD_GATEWAY/tools/echo/v1/quotes\"");
    let out = agent_sh(
        &d,
        "buyer",
        &format!(
            "{call}; {call}; \
             {ag} run --agent buyer/helper -- /bin/sh -c '{quoted}; {quoted}'; \
             {ag} run --agent buyer/helper -- /bin/sh -c '{quoted}; {quoted}'; \
             {call}",
            quoted = call.replace('\'', "'\\''")
        ),
    );
    let codes: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(
        codes,
        ["200", "200", "200", "200", "429", "429", "429"],
        "the parent's two, the first sub-agent's two, then nothing for anyone: {out}"
    );
    assert_eq!(
        seen.lock().unwrap_or_else(|e| panic!("{e}")).len(),
        4,
        "only the budget's four requests reach the upstream"
    );
    // The sub-agent's requests are its own (logged under its instance), only the budget is
    // shared.
    let records = d.wait_records("the seven tool calls", |r| {
        r.iter().filter(|r| r["kind"] == "tool-call").count() >= 7
    });
    let by: Vec<String> = records
        .iter()
        .filter(|r| r["kind"] == "tool-call")
        .map(|r| format!("{} {}", r["instance"].as_str().unwrap_or("?"), r["status"]))
        .collect();
    assert!(
        by[2].contains("/helper/") && by[4].contains("/helper/") && !by[0].contains("helper"),
        "tool calls by instance: {by:?}"
    );
}

/// A revocation Vault refused, waiting for its retry when the daemon stops, is tried once more
/// at once and ends in a record: before, the retry was dropped with the daemon, and the log
/// never said the credential outlived its lease.
#[test]
fn a_revocation_waiting_for_its_retry_is_logged_when_the_daemon_stops() {
    if !privileged("a_revocation_waiting_for_its_retry_is_logged_when_the_daemon_stops") {
        return;
    }
    let (vault_port, vault) = fake_dynamic_vault();
    vault
        .lock()
        .unwrap_or_else(|e| panic!("{e}"))
        .refuse_revokes = true;
    let (port, _seen) = upstream();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut d = start_with_vault(
        &format!(
            "[tools.db]\nurl = \"http://127.0.0.1:{port}\"\ncredential = \"orders-db\"\ninject = \"header:X-Key: {{secret}}\"\npaths = [\"/\"]\n\n[agents.buyer]\ntools = [\"db\"]\n"
        ),
        vault_port,
        dir.path(),
        &["--vault-dynamic", "orders-db=database/creds/buyer#password"],
    );
    // One call, then the instance ends: its lease ends, and Vault refuses the revocation.
    let out = agent_sh(
        &d,
        "buyer",
        &format!("{CURL} \"$AGENTGUARD_GATEWAY/tools/db/x\""),
    );
    assert_eq!(out.trim(), "200", "{out}");
    let call = d.wait_record("the call", |r| {
        r["kind"] == "tool-call" && r["path"] == "/x"
    });
    let attempts = || {
        vault
            .lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .revoke_attempts
    };
    let start = Instant::now();
    while attempts() == 0 {
        assert!(
            start.elapsed() < patience(Duration::from_secs(10)),
            "the daemon never asked Vault to revoke the ended lease"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let before = attempts();
    // Its retries wait 1, 5 and 30 s: the daemon stops while one waits.
    d.stop();
    assert!(
        attempts() > before,
        "no last try at shutdown ({before} before the stop, {} after)",
        attempts()
    );
    let records = d.records();
    let outcome: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| {
            r["kind"] == "vault-lease" && r["lease"] == call["lease"] && r["action"] != "issued"
        })
        .collect();
    assert!(
        matches!(&outcome[..], [r] if r["action"] == "revoke-failed" && r["error"].as_str().is_some_and(|e| !e.is_empty())),
        "the ended lease's revocation must end in one revoke-failed record: {outcome:?}"
    );
}
