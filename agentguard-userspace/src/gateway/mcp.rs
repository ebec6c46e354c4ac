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
//! GET (the server's SSE stream) and DELETE (end of session) carry no calls; the tool's
//! `methods` and `paths` judge them like any request. Responses, SSE included, stream through.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::policy::tools::McpRules;

/// JSON-RPC error codes used in refusals.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
/// Implementation-defined server error range: "refused by policy".
const REFUSED: i64 = -32001;

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
    if rules.tools.iter().any(|t| t == name) {
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

/// Judges a POST body of an MCP tool.
pub fn judge(body: &[u8], rules: &McpRules) -> Judged {
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
    let verdicts: Vec<(String, Option<(i64, String)>)> =
        messages.iter().map(|m| judge_one(m, rules)).collect();
    if verdicts.iter().all(|(_, refusal)| refusal.is_none()) {
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
        return Judged::Forward {
            body: Bytes::from(out.to_string()),
            calls,
        };
    }
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
        .zip(&verdicts)
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
    Judged::Refuse {
        body: Bytes::from(body.to_string()),
        calls: refused_calls,
        malformed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> McpRules {
        McpRules {
            methods: crate::policy::tools::DEFAULT_MCP_METHODS
                .map(str::to_owned)
                .to_vec(),
            tools: vec!["search".into(), "get_quote".into()],
        }
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
}
