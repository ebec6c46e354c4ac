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
