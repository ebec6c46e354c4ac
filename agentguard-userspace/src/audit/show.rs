//! Records for people (one line each) and for SIEMs (one JSON object each), and the filters
//! `log show` offers.
//!
//! Free text from the watched side (paths, comms, rule text, reasons) is printed escaped in
//! lines, so an agent cannot forge log lines with a newline in a file name.

use agentguard_common::verdict::Verdict;
use serde_json::{Value, json};

use super::{
    clock, names,
    record::{Action, Actor, Body, OperatorAction, Record, Target, ToolCall},
};

/// Which records `log show` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only records about this agent or its sub-agents (`buyer` matches `buyer/search`).
    pub agent: Option<String>,
    /// Only actions with this verdict.
    pub verdict: Option<Verdict>,
    /// Only records written at or after this wall-clock time (ns since the epoch).
    pub since_ns: Option<u64>,
    /// Only records written at or before this wall-clock time (ns since the epoch).
    pub until_ns: Option<u64>,
    /// Only records of these kinds ([`Body::kind_id`]); every kind when empty.
    pub kinds: Vec<u16>,
    /// No records of these kinds.
    pub not_kinds: Vec<u16>,
}

impl Filter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &Record) -> bool {
        if self.since_ns.is_some_and(|t| record.wall_ns < t)
            || self.until_ns.is_some_and(|t| record.wall_ns > t)
        {
            return false;
        }
        let kind = record.body.kind_id();
        if (!self.kinds.is_empty() && !self.kinds.contains(&kind)) || self.not_kinds.contains(&kind)
        {
            return false;
        }
        if let Some(verdict) = self.verdict {
            match &record.body {
                Body::Action(a) if a.verdict == verdict as u8 => {}
                _ => return false,
            }
        }
        if let Some(agent) = &self.agent {
            let of = |name: &str| {
                name == agent
                    || name
                        .strip_prefix(agent.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            };
            return match &record.body {
                Body::Action(a) => of(&a.agent),
                Body::InstanceStart { agent, .. } | Body::InstanceExit { agent, .. } => of(agent),
                Body::Freeze(op) | Body::Thaw(op) | Body::Kill(op) => of(&op.target),
                _ => false,
            };
        }
        true
    }
}

/// One JSON object for `record`: seq, time (RFC 3339), kind by name and every body field,
/// numbers that stand for names given by name.
pub fn to_json(record: &Record) -> Value {
    let mut obj = json!({
        "seq": record.seq,
        "time": clock::rfc3339(record.wall_ns, 9),
        "wall_ns": record.wall_ns,
        "mono_ns": record.mono_ns,
        "kind": names::record_kind(&record.body),
        "kind_id": record.body.kind_id(),
    });
    let body = body_json(&record.body);
    if let (Some(obj), Value::Object(body)) = (obj.as_object_mut(), body) {
        obj.extend(body);
    }
    obj
}

fn body_json(body: &Body) -> Value {
    match body {
        Body::Action(a) => action_json(a),
        Body::DaemonStart {
            version,
            pid,
            kernel,
            backends,
            adopted,
        } => json!({
            "version": version, "pid": pid, "kernel": kernel, "backends": backends,
            "adopted": adopted,
        }),
        Body::DaemonStop {
            reason,
            enforcement_kept,
        } => json!({ "reason": reason, "enforcement_kept": enforcement_kept }),
        Body::PolicyApplied {
            digest,
            origin,
            by,
            generation,
            agents,
            rules,
        } => json!({
            "digest": digest, "origin": origin, "by": actor_json(by), "generation": generation,
            "agents": agents, "rules": rules,
        }),
        Body::InstanceStart {
            agent,
            instance,
            cgroup_id,
            pid,
            how,
            by,
            files,
        } => json!({
            "agent": agent, "instance": instance, "cgroup_id": cgroup_id, "pid": pid, "how": how,
            "by": actor_json(by), "files": files,
        }),
        Body::InstanceExit {
            agent,
            instance,
            cgroup_id,
        } => json!({ "agent": agent, "instance": instance, "cgroup_id": cgroup_id }),
        Body::Freeze(op) | Body::Thaw(op) | Body::Kill(op) => operator_json(op),
        Body::Lost { dropped, total } => json!({ "dropped": dropped, "total": total }),
        Body::LostEvents {
            source,
            agent,
            instance,
            cgroup_id,
            allowed,
            refusals,
        } => json!({
            "source": source, "agent": agent, "instance": instance, "cgroup_id": cgroup_id,
            "allowed": allowed, "refusals": refusals,
        }),
        Body::Recovered {
            segment,
            cut_bytes,
            last_seq,
            reason,
        } => json!({
            "segment": segment, "cut_bytes": cut_bytes, "last_seq": last_seq, "reason": reason,
        }),
        Body::Seal { epoch, mac } => json!({ "epoch": epoch, "mac": mac }),
        Body::ToolCall(c) => tool_call_json(c, None),
        Body::McpCall { call, mcp } => tool_call_json(call, Some(mcp)),
        Body::VaultLease(v) => json!({
            "agent": v.agent, "instance": v.instance, "cgroup_id": v.cgroup_id, "name": v.name,
            "action": v.action, "lease": v.lease, "vault_lease": v.vault_lease, "ttl_s": v.ttl_s,
            "reason": v.reason, "error": v.error,
        }),
        Body::Credential(c) => json!({
            "agent": c.agent, "instance": c.instance, "cgroup_id": c.cgroup_id, "pid": c.pid,
            "name": c.name, "action": c.action, "lease": c.lease, "ttl_s": c.ttl_s,
            "reason": c.reason,
        }),
        Body::Pruned {
            first_kept_seq,
            pruned_head,
            removed_from_seq,
            segments,
            bytes,
            rule,
            by,
        } => json!({
            "first_kept_seq": first_kept_seq, "pruned_head": pruned_head,
            "removed_from_seq": removed_from_seq, "segments": segments, "bytes": bytes,
            "rule": rule, "by": actor_json(by),
        }),
        Body::Handover {
            previous,
            build,
            kept_state,
            reason,
        } => json!({
            "previous": previous, "build": build, "kept_state": kept_state, "reason": reason,
        }),
    }
}

fn action_json(a: &Action) -> Value {
    json!({
        "action": names::event_kind(a.kind),
        "verdict": names::verdict(a.verdict),
        "backend": names::backend(a.backend),
        "agent": a.agent,
        "instance": a.instance,
        "cgroup_id": a.cgroup_id,
        "pid": a.pid,
        "tid": a.tid,
        "uid": a.uid,
        "comm": a.comm,
        "target": target_json(&a.target),
        "rule": a.rule,
        "flags": names::flags(a.flags),
        "generation": a.generation,
    })
}

fn target_json(t: &Target) -> Value {
    match t {
        Target::Net {
            addr,
            port,
            protocol,
            name,
        } => json!({
            "type": "net", "addr": addr.to_string(), "port": port,
            "protocol": names::protocol(*protocol), "name": name,
        }),
        Target::Exec { path, dev, ino } => {
            json!({ "type": "exec", "path": path, "dev": dev, "ino": ino })
        }
        Target::File {
            op,
            access,
            path,
            target_pid,
        } => json!({
            "type": "file", "op": names::file_op(*op), "access": names::access(*access),
            "path": path, "target_pid": target_pid,
        }),
    }
}

fn actor_json(by: &Actor) -> Value {
    match by {
        Actor::Peer { uid, pid, exe } => {
            json!({ "type": "peer", "uid": uid, "pid": pid, "exe": exe })
        }
        Actor::Daemon { reason } => json!({ "type": "daemon", "reason": reason }),
        Actor::Agent { instance, pid } => {
            json!({ "type": "agent", "instance": instance, "pid": pid })
        }
    }
}

fn operator_json(op: &OperatorAction) -> Value {
    json!({
        "target": op.target, "instances": op.instances, "by": actor_json(&op.by),
        "budget": op.budget, "took_ms": op.took_ms, "ok": op.ok, "error": op.error,
    })
}

/// One line for `record`.
pub fn to_line(record: &Record) -> String {
    let head = format!(
        "{} #{} {}",
        clock::rfc3339(record.wall_ns, 3),
        record.seq,
        names::record_kind(&record.body)
    );
    let rest = match &record.body {
        Body::Action(a) => action_line(a),
        Body::DaemonStart {
            version,
            pid,
            kernel,
            backends,
            adopted,
        } => format!(
            "version={version:?} pid={pid} kernel={kernel:?} backends={backends:?} adopted={adopted}"
        ),
        Body::DaemonStop {
            reason,
            enforcement_kept,
        } => format!("reason={reason:?} enforcement_kept={enforcement_kept}"),
        Body::PolicyApplied {
            digest,
            origin,
            by,
            generation,
            agents,
            rules,
        } => format!(
            "origin={origin:?} digest={digest} generation={generation} agents={agents} \
             rules={rules} by={}",
            actor_line(by)
        ),
        Body::InstanceStart {
            agent,
            instance,
            cgroup_id,
            pid,
            how,
            by,
            files,
        } => format!(
            "agent={agent:?} instance={instance:?} cgroup={cgroup_id} pid={pid} how={how} \
             files={files:?} by={}",
            actor_line(by)
        ),
        Body::InstanceExit {
            agent,
            instance,
            cgroup_id,
        } => format!("agent={agent:?} instance={instance:?} cgroup={cgroup_id}"),
        Body::Freeze(op) | Body::Thaw(op) | Body::Kill(op) => {
            let mut s = format!(
                "target={:?} instances={:?} ok={} took_ms={} by={}",
                op.target,
                op.instances,
                op.ok,
                op.took_ms,
                actor_line(&op.by)
            );
            if let Some(b) = &op.budget {
                s.push_str(&format!(" budget={b:?}"));
            }
            if let Some(e) = &op.error {
                s.push_str(&format!(" error={e:?}"));
            }
            s
        }
        Body::Lost { dropped, total } => format!("dropped={dropped} total={total}"),
        Body::LostEvents {
            source,
            agent,
            instance,
            cgroup_id: _,
            allowed,
            refusals,
        } => format!(
            "source={source} agent={agent:?} instance={instance:?} allowed={allowed} refusals={refusals}"
        ),
        Body::Recovered {
            segment,
            cut_bytes,
            last_seq,
            reason,
        } => format!(
            "segment={segment:?} cut_bytes={cut_bytes} last_seq={} reason={reason:?}",
            last_seq.map_or_else(|| "none".to_owned(), |s| s.to_string())
        ),
        Body::Seal { epoch, mac } => format!("epoch={epoch} mac={mac}"),
        Body::ToolCall(c) => tool_call_line(c, None),
        Body::McpCall { call, mcp } => tool_call_line(call, Some(mcp)),
        Body::VaultLease(v) => format!(
            "{} agent={:?} instance={:?} name={:?} lease={} vault_lease={:?} ttl_s={}{}{}",
            v.action,
            v.agent,
            v.instance,
            v.name,
            v.lease,
            v.vault_lease,
            v.ttl_s,
            if v.reason.is_empty() {
                String::new()
            } else {
                format!(" reason={:?}", v.reason)
            },
            if v.error.is_empty() {
                String::new()
            } else {
                format!(" error={:?}", v.error)
            }
        ),
        Body::Credential(c) => format!(
            "{} agent={:?} instance={:?} pid={} name={:?} lease={} ttl_s={}{}",
            c.action,
            c.agent,
            c.instance,
            c.pid,
            c.name,
            if c.lease.is_empty() { "none" } else { &c.lease },
            c.ttl_s,
            if c.reason.is_empty() {
                String::new()
            } else {
                format!(" reason={:?}", c.reason)
            }
        ),
        Body::Pruned {
            first_kept_seq,
            pruned_head,
            removed_from_seq,
            segments,
            bytes,
            rule,
            by,
        } => format!(
            "removed={removed_from_seq}..{first_kept_seq} segments={segments} bytes={bytes} rule={rule:?} pruned_head={pruned_head} by={}",
            actor_line(by)
        ),
        Body::Handover {
            previous,
            build,
            kept_state,
            reason,
        } => format!("previous={previous} build={build} kept_state={kept_state} reason={reason:?}"),
    };
    format!("{head} {rest}")
}

fn action_line(a: &Action) -> String {
    let target = match &a.target {
        Target::Net {
            addr,
            port,
            protocol,
            name,
        } => {
            let addr = match addr {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                std::net::IpAddr::V4(v4) => v4.to_string(),
            };
            let mut s = format!("{addr}:{port}/{}", names::protocol(*protocol));
            if let Some(name) = name {
                s.push_str(&format!(" ({name:?})"));
            }
            s
        }
        Target::Exec { path, .. } => format!("{path:?}"),
        Target::File {
            op,
            access,
            path,
            target_pid,
        } => {
            let mut s = format!("{} {:?}", names::file_op(*op), path);
            let access = names::access(*access);
            if !access.is_empty() {
                s.push_str(&format!(" [{}]", access.join(",")));
            }
            if let Some(pid) = target_pid {
                s.push_str(&format!(" target_pid={pid}"));
            }
            s
        }
    };
    let mut s = format!(
        "{} {} {target} agent={:?} instance={:?} pid={} uid={} comm={:?} backend={}",
        names::verdict(a.verdict),
        names::event_kind(a.kind),
        a.agent,
        a.instance,
        a.pid,
        a.uid,
        a.comm,
        names::backend(a.backend),
    );
    if let Some(rule) = &a.rule {
        s.push_str(&format!(" rule={rule:?}"));
    }
    let flags = names::flags(a.flags);
    if !flags.is_empty() {
        s.push_str(&format!(" flags={}", flags.join(",")));
    }
    s
}

fn actor_line(by: &Actor) -> String {
    match by {
        Actor::Peer { uid, pid, exe } => match exe {
            Some(exe) => format!("peer(uid={uid},pid={pid},exe={exe:?})"),
            None => format!("peer(uid={uid},pid={pid})"),
        },
        Actor::Daemon { reason } => format!("daemon({reason:?})"),
        Actor::Agent { instance, pid } => format!("agent({instance:?},pid={pid})"),
    }
}

fn tool_call_json(c: &ToolCall, mcp: Option<&str>) -> Value {
    let mut v = json!({
        "agent": c.agent, "instance": c.instance, "cgroup_id": c.cgroup_id, "tool": c.tool,
        "method": c.method, "path": c.path, "status": c.status, "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out, "duration_us": c.duration_us, "lease": c.lease,
        "verdict": names::tool_verdict(c.verdict),
    });
    if let Some(mcp) = mcp {
        v["mcp"] = json!(mcp);
    }
    v
}

fn tool_call_line(c: &ToolCall, mcp: Option<&str>) -> String {
    format!(
        "{} agent={:?} instance={:?} tool={:?} {} {:?} status={} in={} out={} took_us={} lease={}{}",
        names::tool_verdict(c.verdict),
        c.agent,
        c.instance,
        c.tool,
        c.method,
        c.path,
        c.status,
        c.bytes_in,
        c.bytes_out,
        c.duration_us,
        if c.lease.is_empty() { "none" } else { &c.lease },
        mcp.map(|m| format!(" mcp={m:?}")).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use agentguard_common::event::{EVENT_TRUNCATED, EventKind, FileOp};

    use super::*;
    use crate::audit::{names::RECORD_KINDS, testutil::action};

    fn tool_call() -> ToolCall {
        ToolCall {
            agent: "buyer".into(),
            instance: "buyer/1".into(),
            cgroup_id: 9,
            tool: "supplier".into(),
            method: "GET".into(),
            path: "/v1/quotes".into(),
            status: 200,
            bytes_in: 0,
            bytes_out: 12,
            duration_us: 800,
            lease: "ab".into(),
            verdict: 1,
        }
    }

    fn record(body: Body) -> Record {
        Record {
            seq: 7,
            wall_ns: 1_709_251_199_123_456_789,
            mono_ns: 5,
            body,
        }
    }

    fn actor() -> Actor {
        Actor::Peer {
            uid: 0,
            pid: 1,
            exe: None,
        }
    }

    fn op() -> OperatorAction {
        OperatorAction {
            target: "buyer".into(),
            instances: vec!["buyer/1".into()],
            by: actor(),
            budget: None,
            took_ms: 3,
            ok: true,
            error: None,
        }
    }

    /// One body of every kind, in kind order.
    fn every_kind() -> Vec<Body> {
        vec![
            action(0),
            Body::DaemonStart {
                version: "0.1.0".into(),
                pid: 1,
                kernel: "6.8".into(),
                backends: "network=cgroup-sock-addr".into(),
                adopted: false,
            },
            Body::DaemonStop {
                reason: "SIGTERM".into(),
                enforcement_kept: true,
            },
            Body::PolicyApplied {
                digest: "ab".into(),
                origin: "/etc/agentguard/policy.toml".into(),
                by: actor(),
                generation: 1,
                agents: 2,
                rules: 3,
            },
            Body::InstanceStart {
                agent: "buyer".into(),
                instance: "buyer/1".into(),
                cgroup_id: 9,
                pid: 10,
                how: "run".into(),
                by: actor(),
                files: "landlock".into(),
            },
            Body::InstanceExit {
                agent: "buyer".into(),
                instance: "buyer/1".into(),
                cgroup_id: 9,
            },
            Body::Freeze(op()),
            Body::Thaw(op()),
            Body::Kill(op()),
            Body::Lost {
                dropped: 1,
                total: 2,
            },
            Body::Recovered {
                segment: "00000000000000000000.seg".into(),
                cut_bytes: 10,
                last_seq: Some(3),
                reason: "torn tail".into(),
            },
            Body::Seal {
                epoch: 0,
                mac: "00".into(),
            },
            Body::LostEvents {
                source: "instance-budget".into(),
                agent: "buyer".into(),
                instance: "buyer/1".into(),
                cgroup_id: 9,
                allowed: 3,
                refusals: 4,
            },
            Body::ToolCall(tool_call()),
            Body::Pruned {
                first_kept_seq: 10,
                pruned_head: "00".into(),
                removed_from_seq: 0,
                segments: 1,
                bytes: 100,
                rule: "keep-days 30".into(),
                by: Actor::Daemon {
                    reason: "retention".into(),
                },
            },
            Body::Credential(crate::audit::record::CredentialUse {
                agent: "buyer".into(),
                instance: "buyer/1".into(),
                cgroup_id: 9,
                pid: 10,
                name: "orders-db".into(),
                action: "checkout".into(),
                lease: "ab".into(),
                ttl_s: 600,
                reason: String::new(),
            }),
            Body::Handover {
                previous: "0123456789ab".into(),
                build: "ba9876543210".into(),
                kept_state: true,
                reason: String::new(),
            },
            Body::McpCall {
                call: tool_call(),
                mcp: "tools/call:search".into(),
            },
            Body::VaultLease(crate::audit::record::VaultLease {
                agent: "buyer".into(),
                instance: "buyer/1".into(),
                cgroup_id: 9,
                name: "orders-db".into(),
                action: "revoke-failed".into(),
                lease: "ab".into(),
                vault_lease: "database/creds/ro/x".into(),
                ttl_s: 0,
                reason: "freeze".into(),
                error: "Vault answered 403 Forbidden".into(),
            }),
        ]
    }

    #[test]
    fn every_kind_has_its_name_and_renders() {
        for (i, body) in every_kind().into_iter().enumerate() {
            assert_eq!(usize::from(body.kind_id()), i);
            let r = record(body);
            let json = to_json(&r);
            assert_eq!(json["kind"], RECORD_KINDS[i]);
            assert_eq!(json["seq"], 7);
            assert_eq!(json["time"], "2024-02-29T23:59:59.123456789Z");
            let line = to_line(&r);
            assert!(line.starts_with("2024-02-29T23:59:59.123Z #7 "), "{line}");
            assert!(!line.contains('\n'));
        }
    }

    #[test]
    fn actions_show_names_not_numbers() {
        let json = to_json(&record(action(0)));
        assert_eq!(json["action"], "connect");
        assert_eq!(json["verdict"], "denied");
        assert_eq!(json["backend"], "cgroup-sock-addr");
        assert_eq!(json["agent"], "buyer");
        assert_eq!(json["target"]["addr"], "192.0.2.1");
        assert_eq!(json["target"]["protocol"], "tcp");
        assert_eq!(json["rule"], "api.example.com:443");
        let line = to_line(&record(action(0)));
        assert!(
            line.contains("denied connect 192.0.2.1:443/tcp (\"api.example.com\") agent=\"buyer\""),
            "{line}"
        );

        let Body::Action(mut a) = action(1) else {
            unreachable!()
        };
        a.kind = EventKind::FileOpen as u16;
        a.target = Target::File {
            op: FileOp::Open as u16,
            access: 2,
            path: "/etc/passwd\nFAKE LINE".into(),
            target_pid: None,
        };
        a.flags = EVENT_TRUNCATED;
        let r = record(Body::Action(a));
        let json = to_json(&r);
        assert_eq!(json["target"]["op"], "open");
        assert_eq!(json["target"]["access"], serde_json::json!(["write"]));
        assert_eq!(json["flags"], serde_json::json!(["truncated"]));
        let line = to_line(&r);
        assert!(!line.contains('\n'), "a path cannot add a line: {line}");
        assert!(
            line.contains(r#"open "/etc/passwd\nFAKE LINE" [write]"#),
            "{line}"
        );
    }

    #[test]
    fn filters_by_agent_and_verdict() {
        let denied_buyer = record(action(0));
        let allowed_search = record(action(1));
        let start = record(every_kind()[1].clone());
        let by_agent = Filter {
            agent: Some("buyer".into()),
            verdict: None,
            ..Filter::default()
        };
        assert!(by_agent.matches(&denied_buyer));
        assert!(
            by_agent.matches(&allowed_search),
            "sub-agents belong to their parent"
        );
        assert!(!by_agent.matches(&start));
        let sub = Filter {
            agent: Some("buyer/search".into()),
            verdict: None,
            ..Filter::default()
        };
        assert!(!sub.matches(&denied_buyer));
        assert!(sub.matches(&allowed_search));
        let other = Filter {
            agent: Some("buy".into()),
            verdict: None,
            ..Filter::default()
        };
        assert!(!other.matches(&denied_buyer), "not a name prefix");
        let denied = Filter {
            agent: None,
            verdict: Some(Verdict::Denied),
            ..Filter::default()
        };
        assert!(denied.matches(&denied_buyer));
        assert!(!denied.matches(&allowed_search));
        assert!(!denied.matches(&start));
        assert!(Filter::default().matches(&start));
        let window = |since, until| Filter {
            since_ns: since,
            until_ns: until,
            ..Filter::default()
        };
        let at = denied_buyer.wall_ns;
        assert!(
            window(Some(at), Some(at)).matches(&denied_buyer),
            "bounds are inclusive"
        );
        assert!(!window(Some(at + 1), None).matches(&denied_buyer));
        assert!(!window(None, Some(at.saturating_sub(1))).matches(&denied_buyer));
        let kinds = |kinds: &[u16], not_kinds: &[u16]| Filter {
            kinds: kinds.to_vec(),
            not_kinds: not_kinds.to_vec(),
            ..Filter::default()
        };
        assert!(kinds(&[0], &[]).matches(&denied_buyer));
        assert!(!kinds(&[0], &[]).matches(&start));
        assert!(kinds(&[0, 1], &[]).matches(&start));
        assert!(!kinds(&[], &[0]).matches(&denied_buyer));
        assert!(kinds(&[], &[0]).matches(&start));

        let Body::Action(mut v6) = action(0) else {
            unreachable!()
        };
        v6.target = Target::Net {
            addr: IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
            port: 53,
            protocol: 17,
            name: None,
        };
        assert!(to_line(&record(Body::Action(v6))).contains("[2001:db8::1]:53/udp"));
    }
}
