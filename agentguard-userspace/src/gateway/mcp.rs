//! MCP over Streamable HTTP: a POST body is one JSON-RPC 2.0 message or a batch of them; each
//! call is judged against the tool's `mcp_methods` and, for `tools/call`, `mcp_tools`.
//!
//! Fail closed, and forward exactly what was judged:
//! - a body that is not JSON, an empty batch or an element that is not an object is refused;
//! - the upstream receives the judged messages re-serialised, not the agent's bytes, so a
//!   duplicate key (`"name": "search", "name": "delete"`: this parser keeps the last, another
//!   may keep the first) or any other parser difference cannot make the upstream see a call
//!   other than the one judged;
//! - a batch is judged element by element; if one is refused, none is forwarded, and every
//!   element with an id gets its own JSON-RPC error (the refused ones say why);
//! - responses from the client to the server's own requests (sampling, elicitation: objects
//!   with `result` or `error` and no `method`) call nothing and pass.
//!
//! A `tools/call` of an MCP tool with a `rate` of its own takes from the instance's bucket for
//! it; a body with calls over budget is refused whole (429), as a refused call would.
//!
//! GET (the server's SSE stream) and DELETE (end of session) carry no calls; the tool's
//! `methods` and `paths` judge them like any request. Responses, SSE included, stream through.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::policy::{throttle::Rate, tools::McpRules};

/// JSON-RPC error codes used in refusals.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
/// Implementation-defined server error range: "refused by policy".
const REFUSED: i64 = -32001;
/// "Over the MCP tool's budget".
const THROTTLED: i64 = -32002;

/// The budgets a body's calls take: (MCP tool, its rate, calls of it in the body). `Err` names
/// the MCP tools over budget and the time until the body would fit.
pub type Budget<'a> = dyn FnMut(&[(&str, Rate, u64)]) -> Result<(), (Vec<String>, Duration)> + 'a;

/// The verdict on one POST body.
#[derive(Debug, PartialEq)]
pub enum Judged {
    /// Forward this body; `calls` names what it carries (for the log).
    Forward {
        /// The judged messages, re-serialised.
        body: Bytes,
        /// `tools/call:NAME`, or the method, per call, comma-separated.
        calls: String,
    },
    /// Refuse with this JSON-RPC body; `calls` names what was refused.
    Refuse {
        /// The JSON-RPC error response (one object or a batch array).
        body: Bytes,
        /// The refused calls, comma-separated.
        calls: String,
        /// Whether the body could not be judged at all (400) rather than refused (403).
        malformed: bool,
    },
    /// Over an MCP tool's budget: refuse with this JSON-RPC body (429, `Retry-After: wait`).
    Throttled {
        /// The JSON-RPC error response (one object or a batch array).
        body: Bytes,
        /// The calls over budget, comma-separated.
        calls: String,
        /// Until the body would fit the budgets.
        wait: Duration,
    },
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn malformed(message: &str) -> Judged {
    Judged::Refuse {
        body: Bytes::from(error(&Value::Null, PARSE_ERROR, message).to_string()),
        calls: String::new(),
        malformed: true,
    }
}

/// What one message is, for the log, and why it is refused (`None`: allowed).
fn judge_one(msg: &Value, rules: &McpRules) -> (String, Option<(i64, String)>) {
    let Some(obj) = msg.as_object() else {
        return (
            "not-an-object".to_owned(),
            Some((INVALID_REQUEST, "not a JSON-RPC message".to_owned())),
        );
    };
    let Some(method) = obj.get("method") else {
        if obj.contains_key("result") || obj.contains_key("error") {
            return ("response".to_owned(), None);
        }
        return (
            "no-method".to_owned(),
            Some((INVALID_REQUEST, "not a JSON-RPC message".to_owned())),
        );
    };
    let Some(method) = method.as_str() else {
        return (
            "bad-method".to_owned(),
            Some((INVALID_REQUEST, "the method is not a string".to_owned())),
        );
    };
    let label = |m: &str| -> String { m.chars().filter(|c| !c.is_control()).take(128).collect() };
    if !rules.methods.iter().any(|m| m == method) {
        return (
            label(method),
            Some((
                REFUSED,
                format!("agentguard: JSON-RPC method {method:?} is not allowed for this tool"),
            )),
        );
    }
    if method != "tools/call" {
        return (label(method), None);
    }
    let name = obj
        .get("params")
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str);
    let Some(name) = name else {
        return (
            "tools/call:".to_owned(),
            Some((INVALID_REQUEST, "tools/call without params.name".to_owned())),
        );
    };
    let what = format!("tools/call:{}", label(name));
    if rules.tool(name).is_some() {
        (what, None)
    } else {
        (
            what,
            Some((
                REFUSED,
                format!("agentguard: MCP tool {name:?} is not allowed for this agent's tool"),
            )),
        )
    }
}

/// Judges a POST body of an MCP tool; calls with a budget take from it through `budget`.
pub fn judge(body: &[u8], rules: &McpRules, budget: &mut Budget<'_>) -> Judged {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return malformed("agentguard: the body is not JSON; an MCP call must be JSON-RPC 2.0");
    };
    let (batch, messages) = match value {
        Value::Array(items) if items.is_empty() => {
            return malformed("agentguard: an empty batch");
        }
        Value::Array(items) => (true, items),
        other => (false, vec![other]),
    };
    let mut verdicts: Vec<(String, Option<(i64, String)>)> =
        messages.iter().map(|m| judge_one(m, rules)).collect();
    if verdicts.iter().any(|(_, refusal)| refusal.is_some()) {
        let (body, calls) = refusal(&messages, &verdicts, batch);
        return Judged::Refuse {
            body,
            calls,
            malformed: false,
        };
    }
    // Every call is allowed: the budgets of the MCP tools called, all or nothing.
    let mut takes: Vec<(&str, Rate, u64)> = Vec::new();
    for (what, _) in &verdicts {
        let Some(t) = what
            .strip_prefix("tools/call:")
            .and_then(|name| rules.tool(name))
        else {
            continue;
        };
        let Some(rate) = t.rate else { continue };
        match takes.iter_mut().find(|(n, _, _)| *n == t.name) {
            Some(e) => e.2 += 1,
            None => takes.push((&t.name, rate, 1)),
        }
    }
    if !takes.is_empty()
        && let Err((short, wait)) = budget(&takes)
    {
        for (what, refusal) in &mut verdicts {
            if let Some(name) = what.strip_prefix("tools/call:")
                && short.iter().any(|s| s == name)
            {
                *refusal = Some((
                    THROTTLED,
                    format!(
                        "agentguard: over the budget of MCP tool {name:?}; retry in {} s",
                        wait.as_secs().max(1)
                    ),
                ));
            }
        }
        let (body, calls) = refusal(&messages, &verdicts, batch);
        return Judged::Throttled { body, calls, wait };
    }
    let calls = verdicts
        .iter()
        .map(|(c, _)| c.as_str())
        .filter(|c| *c != "response")
        .collect::<Vec<_>>()
        .join(",");
    let out = if batch {
        Value::Array(messages)
    } else {
        messages.into_iter().next().unwrap_or(Value::Null)
    };
    Judged::Forward {
        body: Bytes::from(out.to_string()),
        calls,
    }
}

/// The JSON-RPC errors for a body with refused elements, and the refused calls (for the log).
fn refusal(
    messages: &[Value],
    verdicts: &[(String, Option<(i64, String)>)],
    batch: bool,
) -> (Bytes, String) {
    let refused_calls = verdicts
        .iter()
        .filter(|(_, r)| r.is_some())
        .map(|(c, _)| c.as_str())
        .collect::<Vec<_>>()
        .join(",");
    // One error per element that has an id (a notification gets no response, unless the
    // whole body was a lone notification: then an error with a null id, so the agent learns).
    let errors: Vec<Value> = messages
        .iter()
        .zip(verdicts)
        .filter_map(|(m, (_, refusal))| {
            let id = m.get("id").cloned();
            let (code, message) = refusal.clone().unwrap_or((
                REFUSED,
                "agentguard: not forwarded, another call in the batch was refused".to_owned(),
            ));
            match id {
                Some(id) => Some(error(&id, code, &message)),
                None if !batch => Some(error(&Value::Null, code, &message)),
                None => None,
            }
        })
        .collect();
    let body = if batch {
        Value::Array(errors)
    } else {
        errors.into_iter().next().unwrap_or(Value::Null)
    };
    (Bytes::from(body.to_string()), refused_calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tools::McpTool;

    fn rules() -> McpRules {
        McpRules {
            methods: crate::policy::tools::DEFAULT_MCP_METHODS
                .map(str::to_owned)
                .to_vec(),
            tools: ["search", "get_quote"]
                .map(|n| McpTool {
                    name: n.into(),
                    rate: None,
                })
                .to_vec(),
        }
    }

    fn unlimited(_: &[(&str, Rate, u64)]) -> Result<(), (Vec<String>, Duration)> {
        Ok(())
    }

    fn judge(body: &[u8], rules: &McpRules) -> Judged {
        super::judge(body, rules, &mut unlimited)
    }

    fn call(id: u32, name: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
        )
    }

    #[test]
    fn allowed_calls_pass_as_judged() {
        let Judged::Forward { body, calls } = judge(call(1, "search").as_bytes(), &rules()) else {
            panic!("refused");
        };
        assert_eq!(calls, "tools/call:search");
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["params"]["name"], "search");
        let batch = format!(
            r#"[{},{{"jsonrpc":"2.0","method":"notifications/initialized"}},{{"jsonrpc":"2.0","id":9,"result":{{}}}}]"#,
            call(2, "get_quote")
        );
        let Judged::Forward { calls, .. } = judge(batch.as_bytes(), &rules()) else {
            panic!("refused");
        };
        assert_eq!(calls, "tools/call:get_quote,notifications/initialized");
    }

    #[test]
    fn refusals_are_per_element_and_nothing_of_the_batch_goes() {
        let Judged::Refuse {
            body,
            calls,
            malformed,
        } = judge(call(1, "delete_all").as_bytes(), &rules())
        else {
            panic!("forwarded");
        };
        assert!(!malformed);
        assert_eq!(calls, "tools/call:delete_all");
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["id"], 1);
        assert_eq!(v["error"]["code"], REFUSED);
        let batch = format!("[{},{}]", call(1, "search"), call(2, "delete_all"));
        let Judged::Refuse { body, calls, .. } = judge(batch.as_bytes(), &rules()) else {
            panic!("forwarded");
        };
        assert_eq!(calls, "tools/call:delete_all");
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v.as_array().map(Vec::len), Some(2));
        assert!(
            v[0]["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("another call"))
        );
        assert!(
            v[1]["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("delete_all"))
        );
        // A method outside mcp_methods, a tool named by no string, junk.
        let other = r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{}}"#;
        assert!(
            matches!(judge(other.as_bytes(), &rules()), Judged::Refuse { calls, .. } if calls == "resources/read")
        );
        let noname = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":7}}"#;
        assert!(matches!(
            judge(noname.as_bytes(), &rules()),
            Judged::Refuse { .. }
        ));
        for junk in ["", "[]", "not json", "[1]", r#"{"id":1}"#] {
            assert!(
                matches!(judge(junk.as_bytes(), &rules()), Judged::Refuse { .. }),
                "{junk}"
            );
        }
    }

    #[test]
    fn a_duplicate_key_reaches_the_upstream_as_judged() {
        // This parser keeps the last "name"; the upstream gets only that one.
        let dup = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all","name":"search"}}"#;
        let Judged::Forward { body, .. } = judge(dup.as_bytes(), &rules()) else {
            panic!("refused");
        };
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("delete_all"), "{text}");
        let dup = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete_all"}}"#;
        assert!(matches!(
            judge(dup.as_bytes(), &rules()),
            Judged::Refuse { .. }
        ));
    }

    #[test]
    fn calls_over_an_mcp_tool_budget_refuse_the_whole_body() {
        let mut r = rules();
        r.tools[0].rate = Some("2/h".parse().unwrap_or_else(|e| panic!("{e:?}")));
        let mut left = 2u64;
        let mut seen = Vec::new();
        let mut budget = |takes: &[(&str, Rate, u64)]| {
            seen.push(
                takes
                    .iter()
                    .map(|(n, _, k)| ((*n).to_owned(), *k))
                    .collect::<Vec<_>>(),
            );
            let want: u64 = takes.iter().map(|t| t.2).sum();
            if want > left {
                return Err((vec!["search".to_owned()], Duration::from_secs(1800)));
            }
            left -= want;
            Ok(())
        };
        // get_quote has no budget of its own: the callback is not asked.
        assert!(matches!(
            super::judge(call(1, "get_quote").as_bytes(), &r, &mut budget),
            Judged::Forward { .. }
        ));
        let batch = format!(
            "[{},{},{}]",
            call(1, "search"),
            call(2, "search"),
            call(3, "search")
        );
        let Judged::Throttled { body, calls, wait } =
            super::judge(batch.as_bytes(), &r, &mut budget)
        else {
            panic!("not throttled");
        };
        assert_eq!(
            calls,
            "tools/call:search,tools/call:search,tools/call:search"
        );
        assert_eq!(wait, Duration::from_secs(1800));
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v[2]["error"]["code"], THROTTLED);
        assert!(matches!(
            super::judge(call(4, "search").as_bytes(), &r, &mut budget),
            Judged::Forward { .. }
        ));
        assert_eq!(
            seen,
            [
                vec![("search".to_owned(), 3)],
                vec![("search".to_owned(), 1)]
            ]
        );
    }
}
