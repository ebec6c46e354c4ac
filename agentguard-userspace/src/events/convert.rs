//! Raw kernel events -> [`Action`] records with names instead of numbers where the daemon knows
//! them (agent, instance, rule).

use agentguard_common::{
    event::{EventHeader, NetEvent},
    user::{KernelEvent, c_bytes},
};

use crate::{
    audit::record::{Action, Target},
    policy::{compile::RuleInfo, net::from_key_space},
};

/// What the daemon knows about ids the kernel reports.
pub trait Names {
    /// Full agent name and instance path of an instance cgroup.
    fn instance(&self, cgroup_id: u64) -> Option<(String, String)>;
    /// Full agent name of an agent id.
    fn agent(&self, agent_id: u32) -> Option<String>;
    /// The rule a generation's rule id stands for.
    fn rule(&self, generation: u32, rule_id: u32) -> Option<&RuleInfo>;
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(c_bytes(bytes)).into_owned()
}

/// Converts one kernel event.
pub fn to_action(ev: &KernelEvent, names: &impl Names) -> Action {
    let h: &EventHeader = ev.header();
    let (agent, instance) = names
        .instance(h.cgroup_id)
        .or_else(|| names.agent(h.agent_id).map(|a| (a, String::new())))
        .unwrap_or_default();
    let rule = names.rule(h.generation, h.rule_id);
    let target = match ev {
        KernelEvent::Net(n) => net_target(n, rule),
        KernelEvent::Exec(e) => Target::Exec {
            path: lossy(&e.filename),
            dev: e.dev,
            ino: e.ino,
        },
        KernelEvent::File(f) => Target::File {
            op: f.op,
            access: f.access,
            path: lossy(&f.path),
            target_pid: (f.target_pid != 0).then_some(f.target_pid),
        },
    };
    Action {
        kind: h.kind,
        verdict: h.verdict,
        backend: h.backend,
        agent,
        instance,
        cgroup_id: h.cgroup_id,
        pid: h.pid,
        tid: h.tid,
        uid: h.uid,
        comm: lossy(&h.comm),
        target,
        rule: rule.map(|r| r.text.clone()),
        flags: h.flags,
        generation: h.generation,
    }
}

fn net_target(n: &NetEvent, rule: Option<&RuleInfo>) -> Target {
    Target::Net {
        addr: from_key_space(n.addr),
        port: n.port,
        protocol: n.protocol,
        name: rule.and_then(|r| r.name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::IpAddr};

    use agentguard_common::{
        COMM_LEN,
        event::{EventKind, PROTO_TCP},
        verdict::{Backend, Verdict},
    };

    use super::*;
    use crate::policy::compile::RuleKind;

    struct Fake {
        rules: HashMap<(u32, u32), RuleInfo>,
    }

    impl Names for Fake {
        fn instance(&self, cgroup_id: u64) -> Option<(String, String)> {
            (cgroup_id == 7).then(|| ("buyer".into(), "buyer/1".into()))
        }
        fn agent(&self, _: u32) -> Option<String> {
            None
        }
        fn rule(&self, generation: u32, rule_id: u32) -> Option<&RuleInfo> {
            self.rules.get(&(generation, rule_id))
        }
    }

    #[test]
    fn names_agent_instance_rule_and_dns_name() {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[192, 0, 2, 1]);
        let ev = KernelEvent::Net(NetEvent {
            header: EventHeader {
                kind: EventKind::Connect as u16,
                verdict: Verdict::Allowed as u8,
                backend: Backend::CgroupSockAddr as u8,
                rule_id: 3,
                ktime_ns: 1,
                cgroup_id: 7,
                agent_id: 99,
                generation: 1,
                pid: 10,
                tid: 11,
                uid: 1000,
                flags: 0,
                comm,
            },
            addr,
            port: 443,
            family: 2,
            protocol: PROTO_TCP,
            _pad: [0; 3],
        });
        let mut rules = HashMap::new();
        rules.insert(
            (1, 3),
            RuleInfo {
                agent: "buyer".into(),
                kind: RuleKind::Connect,
                text: "api.example.com:443".into(),
                name: Some("api.example.com".into()),
            },
        );
        let a = to_action(&ev, &Fake { rules });
        assert_eq!(
            (a.agent.as_str(), a.instance.as_str(), a.comm.as_str()),
            ("buyer", "buyer/1", "curl")
        );
        assert_eq!(a.rule.as_deref(), Some("api.example.com:443"));
        assert_eq!(
            a.target,
            Target::Net {
                addr: IpAddr::from([192, 0, 2, 1]),
                port: 443,
                protocol: PROTO_TCP,
                name: Some("api.example.com".into()),
            }
        );
    }
}
