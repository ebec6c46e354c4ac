//! Validation tests: every class of bad input gets a diagnostic with the right line, column and
//! field; the bundled examples stay valid.

use super::{PolicyError, parse};

/// The diagnostics of an invalid policy as (line, column, field, message).
fn errors(text: &str) -> Vec<(usize, usize, String, String)> {
    match parse("p.toml", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(PolicyError::Invalid(d)) => d
            .into_iter()
            .map(|d| (d.line, d.column, d.field, d.message))
            .collect(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn one(text: &str) -> (usize, usize, String, String) {
    let mut e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    e.remove(0)
}

#[test]
fn the_bundled_examples_are_valid() {
    for (name, text) in [
        (
            "examples/policy.toml",
            include_str!("../../../examples/policy.toml"),
        ),
        (
            "examples/demo/policy.toml",
            include_str!("../../../examples/demo/policy.toml"),
        ),
    ] {
        if let Err(e) = parse(name, text) {
            panic!("{e}");
        }
    }
    let doc = include_str!("../../../docs/policy.md");
    let example = doc
        .split("## A complete example")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .unwrap_or_default();
    assert!(example.contains("[agents.buyer]"));
    if let Err(e) = parse("docs/policy.md", example) {
        panic!("{e}");
    }
}

#[test]
fn syntax_and_unknown_keys_are_located() {
    let (line, col, field, msg) = one("[agents.a]\nconect = [\"1.2.3.4:80\"]\n");
    assert_eq!((line, col, field.as_str()), (2, 1, "agents.a.conect"));
    assert!(msg.contains("unknown field `conect`"), "{msg}");
    let (line, _, _, _) = one("[agents.a]\nconnect = [\"1.2.3.4:80\"\n");
    assert!(line >= 2);
    let (line, col, field, _) = one("[agents.a]\nmode = \"loose\"\n");
    assert_eq!((line, col, field.as_str()), (2, 8, "agents.a.mode"));
    let (_, _, _, msg) = one("[agents.a]\nconnect = []\n[agents.a]\n");
    assert!(
        msg.contains("duplicate") || msg.contains("redefin"),
        "{msg}"
    );
}

#[test]
fn bad_network_entries_name_the_entry() {
    let e = errors(
        "[agents.a]\nconnect = [\"10.0.0.1/8:443\", \"1.2.3.4\", \"[::1]:0\", \"::1:80\", \"1.2.3.4:80\", \"1.2.3.4:80\"]\n",
    );
    let fields: Vec<(usize, usize, &str)> =
        e.iter().map(|(l, c, f, _)| (*l, *c, f.as_str())).collect();
    assert_eq!(
        fields,
        vec![
            (2, 12, "agents.a.connect[0]"),
            (2, 30, "agents.a.connect[1]"),
            (2, 41, "agents.a.connect[2]"),
            (2, 52, "agents.a.connect[3]"),
            (2, 76, "agents.a.connect[5]"),
        ]
    );
    assert!(e[0].3.contains("host bits"), "{}", e[0].3);
    assert!(e[1].3.contains("missing port"), "{}", e[1].3);
    assert!(e[2].3.contains("invalid port"), "{}", e[2].3);
    assert!(e[3].3.contains("brackets"), "{}", e[3].3);
    assert!(e[4].3.contains("duplicate"), "{}", e[4].3);
}

#[test]
fn bad_paths_names_and_capabilities() {
    let e = errors(
        "[agents.\"\"]\n[agents.Bad]\n[agents.ok]\nexec = [\"bin/sh\", \"/usr/../bin/sh\"]\nread = [\"@nope\", \"/proc/1/environ\"]\nwrite = [\"@system-runtime\"]\ncapabilities = [\"CAP_FLY\"]\n",
    );
    let got: Vec<(usize, &str)> = e.iter().map(|(l, _, f, _)| (*l, f.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (1, "agents."),
            (2, "agents.Bad"),
            (4, "agents.ok.exec[0]"),
            (4, "agents.ok.exec[1]"),
            (5, "agents.ok.read[0]"),
            (5, "agents.ok.read[1]"),
            (6, "agents.ok.write[0]"),
            (7, "agents.ok.capabilities[0]"),
        ]
    );
    assert!(e[2].3.contains("not an absolute path"), "{}", e[2].3);
    assert!(e[3].3.contains(".."), "{}", e[3].3);
    assert!(e[5].3.contains("/proc/self"), "{}", e[5].3);
}

#[test]
fn bad_budgets() {
    let e = errors(
        "[agents.a.throttle]\nconnect = \"5/day\"\nexec = \"0/s\"\nburst = -1.0\nscope = \"galaxy\"\n",
    );
    // serde stops at the first type error (scope), so check budgets without it too.
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].2, "agents.a.throttle.scope");
    let e = errors("[agents.a.throttle]\nconnect = \"5/day\"\nexec = \"0/s\"\nburst = -1.0\n");
    let got: Vec<(usize, &str)> = e.iter().map(|(l, _, f, _)| (*l, f.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (4, "agents.a.throttle.burst"),
            (2, "agents.a.throttle.connect"),
            (3, "agents.a.throttle.exec")
        ]
    );
}

#[test]
fn sub_agents_wider_than_their_parent_are_rejected() {
    let e = errors(
        "[agents.p]\nconnect = [\"10.0.0.0/8:443\"]\nexec = [\"/usr/bin/env\"]\nread = [\"/srv\"]\n\
         [agents.p.sub.s]\nconnect = [\"10.1.0.0/16:443\", \"11.0.0.0/8:443\", \"10.0.0.0/8:80\"]\n\
         exec = [\"/usr/bin/env\", \"/usr/bin/id\"]\nread = [\"/srv/x\", \"/etc\"]\ndns = true\nmode = \"audit\"\n",
    );
    let got: Vec<(usize, &str)> = e.iter().map(|(l, _, f, _)| (*l, f.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (10, "agents.p.sub.s.mode"),
            (9, "agents.p.sub.s.dns"),
            (6, "agents.p.sub.s.connect[1]"),
            (6, "agents.p.sub.s.connect[2]"),
            (7, "agents.p.sub.s.exec[1]"),
            (8, "agents.p.sub.s.read[1]"),
        ]
    );
    assert!(
        e[2].3.contains("not allowed to parent agent \"p\""),
        "{}",
        e[2].3
    );
}

#[test]
fn max_instances_is_a_positive_count_within_the_kernel_map() {
    let p = parse("p.toml", "[agents.a]\nconnect = []\nmax_instances = 2\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.agents[0].max_instances, Some(2));
    for bad in ["0", "-1", "16385"] {
        let (line, _, field, msg) = one(&format!(
            "[agents.a]\nconnect = []\nmax_instances = {bad}\n"
        ));
        assert_eq!((line, field.as_str()), (3, "agents.a.max_instances"));
        assert!(msg.contains("between 1 and 16384"), "{bad}: {msg}");
    }
}

fn policy(text: &str) -> super::Policy {
    parse("p.toml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn has(rules: &[super::Located<super::PathRule>], path: &str) -> bool {
    rules
        .iter()
        .any(|r| r.value == super::PathRule::Prefix(path.into()))
}

#[test]
fn device_files_come_with_file_rules_only() {
    let files = policy("[agents.a]\nread = [\"/srv\"]\n");
    let a = &files.agents[0];
    for dev in [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
    ] {
        assert!(has(&a.read, dev), "read {dev}");
    }
    for dev in ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"] {
        assert!(has(&a.write, dev), "write {dev}");
    }
    // Nothing else under /dev, and the random devices are not writable.
    assert!(!has(&a.write, "/dev/urandom"));
    assert!(
        !a.read
            .iter()
            .chain(&a.write)
            .any(|r| r.value.to_string() == "/dev"
                || r.value.to_string().starts_with("/dev/pts")
                || r.value.to_string().starts_with("/dev/shm"))
    );
    // A network-only agent is unrestricted in files: no rules are invented for it.
    let net = policy("[agents.a]\nconnect = [\"127.0.0.1:80\"]\n");
    assert!(net.agents[0].read.is_empty() && net.agents[0].write.is_empty());
    assert!(!net.agents[0].restricts_files());
}

#[test]
fn private_tmp_defaults_on_and_sub_agents_cannot_regain_it() {
    let p = policy("[agents.a]\n[agents.b]\nprivate_tmp = false\n[agents.b.sub.s]\n");
    assert!(p.agent("a").is_some_and(|a| a.private_tmp));
    assert!(p.agent("b").is_some_and(|a| !a.private_tmp));
    assert!(p.agent("b/s").is_some_and(|a| !a.private_tmp));
    let (line, _, field, msg) =
        one("[agents.b]\nprivate_tmp = false\n[agents.b.sub.s]\nprivate_tmp = true\n");
    assert_eq!((line, field.as_str()), (4, "agents.b.sub.s.private_tmp"));
    assert!(msg.contains("no private temp directory"), "{msg}");
}

#[test]
fn presets_are_checked_where_they_are_referenced() {
    let (line, _, field, msg) = one("[agents.a]\npresets = [\"@tls\", \"@cobol\"]\n");
    assert_eq!((line, field.as_str()), (2, "agents.a.presets[1]"));
    assert!(msg.contains("unknown preset \"@cobol\""), "{msg}");
    let (_, _, field, msg) = one("[agents.a]\npresets = [{ name = \"@tls\", venv = \"/\" }]\n");
    assert_eq!(field, "agents.a.presets[0]");
    assert!(msg.contains("takes no option \"venv\""), "{msg}");
    let (_, _, _, msg) = one("[agents.a]\nread = [\"@python\"]\n");
    assert!(msg.contains("presets = [...]"), "{msg}");
    // A sub-agent's preset must be within its parent's rules like anything else.
    let text = "[agents.a]\nread = [\"/srv\"]\n[agents.a.sub.s]\npresets = [\"@shell\"]\n";
    let errs = errors(text);
    assert!(
        errs.iter()
            .all(|(_, _, f, m)| f == "agents.a.sub.s.presets[0]" && m.contains("parent agent")),
        "{errs:?}"
    );
}

#[test]
fn a_preset_never_grants_writes() {
    // Whatever the host has installed: presets add exec and read entries, never write ones.
    let with = policy("[agents.a]\nread = [\"/srv\"]\npresets = [\"@tls\", \"@shell\"]\n");
    let without = policy("[agents.a]\nread = [\"/srv\"]\n");
    assert_eq!(with.agents[0].write, without.agents[0].write);
}

#[test]
fn unix_entries_are_located_and_a_sub_agent_stays_within_its_parent() {
    let (line, col, field, msg) =
        one("[agents.a]\nconnect = [\"127.0.0.1:80\", \"unix:run/x.sock\"]\n");
    assert_eq!((line, col, field.as_str()), (2, 28, "agents.a.connect[1]"));
    assert!(msg.contains("not an absolute path"), "{msg}");
    let (_, _, field, msg) = one("[agents.a]\nconnect = [\"unix:/run//x.sock\"]\n");
    assert_eq!(field, "agents.a.connect[0]");
    assert!(msg.contains("not a normalised path"), "{msg}");
    let (_, _, _, msg) = one("[agents.a]\nconnect = [\"unix:@x\", \"unix:@x\"]\n");
    assert!(msg.contains("duplicate"), "{msg}");
    let (line, _, field, msg) = one(
        "[agents.a]\nconnect = [\"unix:/run/a.sock\"]\n[agents.a.sub.s]\nconnect = [\"unix:/run/b.sock\"]\n",
    );
    assert_eq!((line, field.as_str()), (4, "agents.a.sub.s.connect[0]"));
    assert!(
        msg.contains("unix:/run/b.sock is not allowed to parent agent"),
        "{msg}"
    );
    // AF_UNIX is default deny for every agent: a parent without a connect list grants its
    // sub-agents no socket either.
    let (line, _, field, msg) =
        one("[agents.a]\nexec = []\n[agents.a.sub.s]\nconnect = [\"unix:@x\"]\n");
    assert_eq!((line, field.as_str()), (4, "agents.a.sub.s.connect[0]"));
    assert!(
        msg.contains("unix:@x is not allowed to parent agent"),
        "{msg}"
    );
}

const TOOL: &str = "[tools.supplier]\nurl = \"https://api.supplier.example/\"\ncredential = \"supplier-key\"\ninject = \"header:Authorization: Bearer {secret}\"\nmethods = [\"GET\", \"post\"]\npaths = [\"/v1/quotes\"]\nrate = \"10/min\"\nmax_body = \"64KiB\"\n";

#[test]
fn tools_validate_and_agents_name_them() {
    let p = parse(
        "p.toml",
        &format!("{TOOL}[agents.buyer]\ntools = [\"supplier\"]\n[agents.buyer.sub.s]\ntools = [\"supplier\"]\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let t = p.tool("supplier").unwrap_or_else(|| panic!("no tool"));
    assert_eq!(t.url, "https://api.supplier.example");
    assert_eq!(t.methods, ["GET", "POST"]);
    assert_eq!(t.max_body, 65536);
    assert_eq!(t.rate.map(|r| r.count), Some(10));
    assert_eq!(p.agent("buyer/s").map(|a| a.tools.len()), Some(1));
    assert!(p.uses_tools());
}

#[test]
fn tool_errors_name_their_field() {
    let (line, _, field, msg) = one(&format!("{TOOL}[agents.b]\ntools = [\"nope\"]\n"));
    assert_eq!((line, field.as_str()), (10, "agents.b.tools[0]"));
    assert!(msg.contains("unknown tool \"nope\""), "{msg}");
    let (line, _, field, _) = one(&TOOL.replace("Bearer {secret}", "Bearer"));
    assert_eq!((line, field.as_str()), (4, "tools.supplier.inject"));
    let (line, _, field, _) = one(&TOOL.replace("\"/v1/quotes\"", "\"/v1/../x\""));
    assert_eq!((line, field.as_str()), (6, "tools.supplier.paths[0]"));
    let (line, _, field, _) = one(&TOOL.replace("10/min", "10/fortnight"));
    assert_eq!((line, field.as_str()), (7, "tools.supplier.rate"));
    let (line, _, field, _) = one(&TOOL.replace("64KiB", "1GiB"));
    assert_eq!((line, field.as_str()), (8, "tools.supplier.max_body"));
    let (_, _, field, _) = one(&TOOL.replace("https://", "ftp://"));
    assert_eq!(field, "tools.supplier.url");
    let (_, _, field, msg) = one("[tools.x]\nurl = \"http://127.0.0.1:1\"\n");
    assert_eq!(field, "tools.x.paths");
    assert!(msg.contains("paths"), "{msg}");
}

#[test]
fn a_sub_agent_gets_no_tool_its_parent_lacks() {
    let (line, _, field, msg) = one(&format!(
        "{TOOL}[tools.other]\nurl = \"http://127.0.0.1:1\"\npaths = [\"/\"]\n[agents.b]\ntools = [\"supplier\"]\n[agents.b.sub.s]\ntools = [\"other\"]\n"
    ));
    assert_eq!((line, field.as_str()), (15, "agents.b.sub.s.tools[0]"));
    assert!(msg.contains("not granted to parent agent \"b\""), "{msg}");
}

#[test]
fn credentials_are_granted_per_agent_and_a_sub_agent_gets_a_subset() {
    let p = parse(
        "p.toml",
        "[agents.b]\ncredentials = [\"db-password\", \"ssh-key\"]\ncredential_ttl = \"5min\"\n[agents.b.sub.s]\ncredentials = [\"ssh-key\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let b = p.agent("b").unwrap_or_else(|| panic!("no b"));
    assert_eq!(b.credentials.len(), 2);
    assert_eq!(b.credential_ttl, std::time::Duration::from_secs(300));
    let s = p.agent("b/s").unwrap_or_else(|| panic!("no b/s"));
    assert_eq!(s.credentials[0].value, "ssh-key");
    assert_eq!(
        s.credential_ttl,
        std::time::Duration::from_secs(300),
        "inherited"
    );
    // A sub-agent asking for more than its parent has: a credential, or a longer TTL.
    let (line, _, field, msg) = one(
        "[agents.b]\ncredentials = [\"ssh-key\"]\n[agents.b.sub.s]\ncredentials = [\"db-password\"]\n",
    );
    assert_eq!((line, field.as_str()), (4, "agents.b.sub.s.credentials[0]"));
    assert!(msg.contains("not granted to parent agent \"b\""), "{msg}");
    let (line, _, field, _) =
        one("[agents.b]\ncredential_ttl = \"5min\"\n[agents.b.sub.s]\ncredential_ttl = \"1h\"\n");
    assert_eq!((line, field.as_str()), (4, "agents.b.sub.s.credential_ttl"));
    let (line, _, field, _) = one("[agents.b]\ncredentials = [\"../etc\"]\n");
    assert_eq!((line, field.as_str()), (2, "agents.b.credentials[0]"));
    let (_, _, field, _) = one("[agents.b]\ncredentials = [\"k\", \"k\"]\n");
    assert_eq!(field, "agents.b.credentials[1]");
    let (_, _, field, _) = one("[agents.b]\ncredential_ttl = \"forever\"\n");
    assert_eq!(field, "agents.b.credential_ttl");
}

#[test]
fn mcp_tools_validate() {
    let mcp = "[tools.m]\nurl = \"http://127.0.0.1:1\"\nprotocol = \"mcp\"\npaths = [\"/mcp\"]\nmcp_tools = [\"search\"]\n";
    let p = parse("p.toml", mcp).unwrap_or_else(|e| panic!("{e}"));
    let t = p.tool("m").unwrap_or_else(|| panic!("no tool"));
    let rules = t.mcp.clone().unwrap_or_else(|| panic!("no MCP rules"));
    assert!(rules.tools.len() == 1 && rules.tool("search").is_some_and(|t| t.rate.is_none()));
    assert!(rules.methods.iter().any(|m| m == "tools/call"));
    assert_eq!(t.methods, ["POST", "GET", "DELETE"]);
    let (line, _, field, _) = one(&mcp.replace("\"mcp\"", "\"grpc\""));
    assert_eq!((line, field.as_str()), (3, "tools.m.protocol"));
    let (line, _, field, msg) = one(&mcp.replace("protocol = \"mcp\"\n", ""));
    assert_eq!((line, field.as_str()), (4, "tools.m.mcp_tools[0]"));
    assert!(msg.contains("needs protocol"), "{msg}");
    let (_, _, field, _) = one(&mcp.replace("[\"search\"]", "[\"search\", \"search\"]"));
    assert_eq!(field, "tools.m.mcp_tools[1]");
    // Budgets per MCP tool: a table entry next to plain names.
    let budgeted = mcp.replace(
        "[\"search\"]",
        "[\"search\", { name = \"buy\", rate = \"3/h\" }]",
    );
    let p = parse("p.toml", &budgeted).unwrap_or_else(|e| panic!("{e}"));
    let rules = p
        .tool("m")
        .and_then(|t| t.mcp.clone())
        .unwrap_or_else(|| panic!("no MCP rules"));
    assert_eq!(rules.tool("search").and_then(|t| t.rate), None);
    assert_eq!(
        rules
            .tool("buy")
            .and_then(|t| t.rate)
            .map(|r| r.to_string()),
        Some("3/h".to_owned())
    );
    let (line, _, field, msg) = one(&budgeted.replace("3/h", "3/fortnight"));
    assert_eq!((line, field.as_str()), (5, "tools.m.mcp_tools[1].rate"));
    assert!(msg.contains("invalid rate"), "{msg}");
    let (_, _, field, _) = one(&budgeted.replace("\"buy\"", "\"search\""));
    assert_eq!(field, "tools.m.mcp_tools[1]");
    let e = errors(&budgeted.replace("protocol = \"mcp\"\n", ""));
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!((e[1].0, e[1].2.as_str()), (4, "tools.m.mcp_tools[1]"));
    // An entry that is neither a name nor { name, rate }: a parse error on its line.
    let e = errors(&budgeted.replace("rate = \"3/h\"", "budget = \"3/h\""));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, 5, "{e:?}");
}
