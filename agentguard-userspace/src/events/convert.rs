//! Raw kernel events -> [`Action`] records with names instead of numbers where the daemon knows
//! them (agent, instance, rule).

use agentguard_common::{
    event::{EventHeader, NetEvent},
    user::{KernelEvent, c_bytes},
};

use std::borrow::Cow;

use crate::{
    audit::{
        borrowed::{ActionRef, TargetRef},
        record::Action,
    },
    policy::{compile::RuleInfo, net::from_key_space},
};

/// What the daemon knows about ids the kernel reports, borrowed from where it keeps it.
pub trait Names {
    /// Full agent name and instance path of an instance cgroup.
    fn instance(&self, cgroup_id: u64) -> Option<(&str, &str)>;
    /// Full agent name of an agent id.
    fn agent(&self, agent_id: u32) -> Option<&str>;
    /// The rule a generation's rule id stands for.
    fn rule(&self, generation: u32, rule_id: u32) -> Option<&RuleInfo>;
}

/// Kernel bytes up to the first NUL as text; borrowed unless they are not UTF-8.
fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(c_bytes(bytes))
}

/// Converts one kernel event.
pub fn to_action(ev: &KernelEvent, names: &impl Names) -> Action {
    to_action_ref(ev, names).to_owned_action()
}

/// Converts one kernel event without allocating (unless the kernel's text is not UTF-8): the
/// record borrows from the event and from `names`.
pub fn to_action_ref<'a>(ev: &'a KernelEvent, names: &'a impl Names) -> ActionRef<'a> {
    let h: &EventHeader = ev.header();
    let (agent, instance) = names
        .instance(h.cgroup_id)
        .or_else(|| names.agent(h.agent_id).map(|a| (a, "")))
        .unwrap_or_default();
    let rule = names.rule(h.generation, h.rule_id);
    let target = match ev {
        KernelEvent::Net(n) => net_target(n, rule),
        KernelEvent::Exec(e) => TargetRef::Exec {
            path: lossy(&e.filename),
            dev: e.dev,
            ino: e.ino,
        },
        KernelEvent::File(f) => TargetRef::File {
            op: f.op,
            access: f.access,
            path: lossy(&f.path),
            target_pid: (f.target_pid != 0).then_some(f.target_pid),
        },
    };
    ActionRef {
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
        rule: rule.map(|r| r.text.as_str()),
        flags: h.flags,
        generation: h.generation,
    }
}

fn net_target<'a>(n: &NetEvent, rule: Option<&'a RuleInfo>) -> TargetRef<'a> {
    TargetRef::Net {
        addr: from_key_space(n.addr),
        port: n.port,
        protocol: n.protocol,
        name: rule.and_then(|r| r.name.as_deref()),
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
    use crate::{audit::record::Target, policy::compile::RuleKind};

    struct Fake {
        rules: HashMap<(u32, u32), RuleInfo>,
    }

    impl Names for Fake {
        fn instance(&self, cgroup_id: u64) -> Option<(&str, &str)> {
            (cgroup_id == 7).then_some(("buyer", "buyer/1"))
        }
        fn agent(&self, _: u32) -> Option<&str> {
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
        let fake = Fake { rules };
        let borrowed = to_action_ref(&ev, &fake);
        assert!(
            matches!(borrowed.comm, Cow::Borrowed(_)),
            "no copy of the comm"
        );
        let a = to_action(&ev, &fake);
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
