//! Compilation: a validated [`Policy`] plus its [`Resolved`] inputs -> the map entries of one
//! generation. Pure: no I/O, deterministic, unit-tested.

use agentguard_common::{
    agent::{
        AGENT_ALLOW_BPF, AGENT_ALLOW_OTHER_SOCKETS, AGENT_ALLOW_PING_SOCKETS,
        AGENT_ALLOW_RAW_SOCKETS, AGENT_AUDIT, AGENT_EXEC_INHERITED, AGENT_EXEC_RULES,
        AGENT_FILE_INHERITED, AGENT_FILE_RULES, AGENT_LOG_ALLOWED, AGENT_UNIX_INHERITED,
        AGENT_UNIX_RULES, AgentConfig, AgentKey, exec_restricted, files_restricted, throttle_slot,
        unix_restricted,
    },
    rules::{
        ExecKey, NET_KEY_FIXED_BITS, NetKey, PATH_KEY_FIXED_BITS, PATH_KEY_LEN, PathKey, RuleRef,
        UnixKey,
    },
    verdict::{ACCESS_READ, ACCESS_WRITE},
};
use ipnet::IpNet;
use serde::Serialize;

use super::{
    Mode, PathRule, Policy,
    net::{NetTarget, to_key_space},
    resolve::Resolved,
    runtime,
    unix::UnixAddr,
};

/// What kind of rule a rule id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// A `connect` entry.
    Connect,
    /// A `unix:` entry of `connect`.
    Unix,
    /// agentguard's agent socket, reachable by every agent.
    AgentSocket,
    /// A system resolver allowed by `dns = true`.
    Dns,
    /// The tool gateway, implicitly reachable by agents with `tools`.
    Gateway,
    /// An `exec` entry.
    Exec,
    /// A `read` entry.
    Read,
    /// A `write` entry.
    Write,
}

/// A rule as the log shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleInfo {
    /// Full agent name.
    pub agent: String,
    /// Kind of rule.
    pub kind: RuleKind,
    /// The rule as written (`10.0.0.0/8:443`, `/usr/bin/python3`, ...).
    pub text: String,
    /// For rules from a DNS name: the name.
    pub name: Option<String>,
}

/// The map entries of one policy generation.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// The generation these entries are keyed with.
    pub generation: u8,
    /// Per-agent configuration.
    pub agents: Vec<(AgentKey, AgentConfig)>,
    /// Network LPM entries: key data, prefix length in bits, value.
    pub net: Vec<(NetKey, u32, RuleRef)>,
    /// Exec entries.
    pub exec: Vec<(ExecKey, RuleRef)>,
    /// AF_UNIX entries.
    pub unix: Vec<(UnixKey, RuleRef)>,
    /// Path LPM entries: key data, prefix length in bits, value.
    pub paths: Vec<(PathKey, u32, RuleRef)>,
    /// Rule table: `rule_id` indexes it.
    pub rules: Vec<RuleInfo>,
}

impl Compiled {
    /// Whether some agent has an open budget (in any scope): only then must opens be counted
    /// where no LSM hook sees them (the fallback's syscall tracepoints).
    pub fn has_open_budget(&self) -> bool {
        use agentguard_common::agent::{ThrottleKind, ThrottleScope};
        self.agents.iter().any(|(_, c)| {
            [ThrottleScope::Process, ThrottleScope::Agent]
                .iter()
                .any(|&scope| c.throttles[throttle_slot(ThrottleKind::Open, scope)].cost_ns != 0)
        })
    }

    /// The rule an event names, if any.
    pub fn rule(&self, rule_id: u32) -> Option<&RuleInfo> {
        self.rules.get(usize::try_from(rule_id).ok()?)
    }

    fn add_rule(
        &mut self,
        agent: &str,
        kind: RuleKind,
        text: String,
        name: Option<String>,
    ) -> RuleRef {
        let rule_id = u32::try_from(self.rules.len()).unwrap_or(u32::MAX - 1);
        self.rules.push(RuleInfo {
            agent: agent.to_owned(),
            kind,
            text,
            name,
        });
        RuleRef { rule_id }
    }
}

/// Compiles `policy` into the entries of `generation`.
pub fn compile(policy: &Policy, generation: u8, resolved: &Resolved) -> Compiled {
    let mut out = Compiled {
        generation,
        ..Compiled::default()
    };
    for agent in &policy.agents {
        let mut flags = 0;
        if agent.mode == Mode::Audit {
            flags |= AGENT_AUDIT;
        }
        if agent.log_allowed {
            flags |= AGENT_LOG_ALLOWED;
        }
        if agent.restricts_files() {
            flags |= AGENT_EXEC_RULES | AGENT_FILE_RULES;
        }
        // AF_UNIX is default deny like the network: a socket such as /var/run/docker.sock is
        // a way out of any confinement, so an agent without `unix:` entries reaches only the
        // agent socket.
        flags |= AGENT_UNIX_RULES;
        for group in &agent.allow_syscalls {
            // The BPF LSM refuses what the seccomp filter refuses, and honours the same grants.
            flags |= match group.value.as_str() {
                "bpf" => AGENT_ALLOW_BPF,
                "raw_sockets" => AGENT_ALLOW_RAW_SOCKETS,
                "ping_sockets" => AGENT_ALLOW_PING_SOCKETS,
                "other_sockets" => AGENT_ALLOW_OTHER_SOCKETS,
                _ => 0,
            };
        }
        let parent = agent.parent.as_deref().and_then(|p| policy.agent(p));
        if let Some(parent) = parent {
            // A sub-agent is held to every ancestor's exec and file rules even without rules of
            // its own: the kernel skips those checks for an agent without either flag. Parents
            // come before their sub-agents, so the parent's flags are already complete.
            let parent_flags = out
                .agents
                .iter()
                .find(|(k, _)| k.agent_id == parent.id)
                .map_or(0, |(_, c)| c.flags);
            if exec_restricted(parent_flags) {
                flags |= AGENT_EXEC_INHERITED;
            }
            if files_restricted(parent_flags) {
                flags |= AGENT_FILE_INHERITED;
            }
            if unix_restricted(parent_flags) {
                flags |= AGENT_UNIX_INHERITED;
            }
        }
        let mut config = AgentConfig {
            flags,
            parent_agent_id: parent.map_or(0, |p| p.id),
            ..AgentConfig::default()
        };
        for limit in &agent.limits {
            config.throttles[throttle_slot(limit.kind, limit.scope)] = limit.to_kernel();
        }
        out.agents.push((
            AgentKey {
                generation: u32::from(generation),
                agent_id: agent.id,
            },
            config,
        ));

        for entry in &agent.connect {
            match &entry.value.target {
                NetTarget::Net(net) => {
                    let rule = out.add_rule(
                        &agent.name,
                        RuleKind::Connect,
                        entry.value.to_string(),
                        None,
                    );
                    out.net
                        .push(net_entry(generation, agent.id, net, entry.value.port, rule));
                }
                NetTarget::Name(name) => {
                    let rule = out.add_rule(
                        &agent.name,
                        RuleKind::Connect,
                        entry.value.to_string(),
                        Some(name.clone()),
                    );
                    for addr in resolved.names.get(name).into_iter().flatten() {
                        out.net.push(net_entry(
                            generation,
                            agent.id,
                            &IpNet::from(*addr),
                            entry.value.port,
                            rule,
                        ));
                    }
                }
            }
        }
        for entry in &agent.unix {
            let rule = out.add_rule(&agent.name, RuleKind::Unix, entry.value.to_string(), None);
            out.unix.push((entry.value.key(agent.id, generation), rule));
        }
        // The agent socket stays reachable: an agent must be able to start its sub-agents
        // (the socket serves nothing else to agents, see control/). Every ancestor gets it too,
        // so the kernel's walk up the parents allows it.
        if let Some(socket) = &resolved.agent_socket
            && let Ok(addr) = socket.to_string_lossy().parse::<UnixAddr>()
            && !agent.unix.iter().any(|e| e.value == addr)
        {
            let rule = out.add_rule(&agent.name, RuleKind::AgentSocket, addr.to_string(), None);
            out.unix.push((addr.key(agent.id, generation), rule));
        }
        if agent.dns {
            for resolver in &resolved.resolvers {
                let rule = out.add_rule(
                    &agent.name,
                    RuleKind::Dns,
                    format!(
                        "{}",
                        super::net::NetEntry {
                            target: NetTarget::Net(IpNet::from(*resolver)),
                            port: 53,
                        }
                    ),
                    None,
                );
                out.net.push(net_entry(
                    generation,
                    agent.id,
                    &IpNet::from(*resolver),
                    53,
                    rule,
                ));
            }
        }
        if let Some(gw) = resolved.gateway.filter(|_| !agent.tools.is_empty()) {
            let net = IpNet::from(gw.ip());
            let rule = out.add_rule(
                &agent.name,
                RuleKind::Gateway,
                format!(
                    "{} (gateway)",
                    super::net::NetEntry {
                        target: NetTarget::Net(net),
                        port: gw.port(),
                    }
                ),
                None,
            );
            out.net
                .push(net_entry(generation, agent.id, &net, gw.port(), rule));
        }
        for e in &agent.exec {
            let rule = out.add_rule(
                &agent.name,
                RuleKind::Exec,
                e.value.display().to_string(),
                None,
            );
            if let Some(id) = resolved.binaries.get(&e.value) {
                for (dev, ino) in id.keys() {
                    out.exec.push((
                        ExecKey {
                            agent_id: agent.id,
                            generation: u32::from(generation),
                            dev,
                            ino,
                        },
                        rule,
                    ));
                }
            }
        }
        let tmp = private_tmp_rule(agent, resolved);
        for (rules, access, kind) in [
            (&agent.read, ACCESS_READ, RuleKind::Read),
            (&agent.write, ACCESS_WRITE, RuleKind::Write),
        ] {
            for r in rules.iter().map(|r| &r.value).chain(&tmp) {
                let rule = out.add_rule(&agent.name, kind, r.to_string(), None);
                if let Some(entry) = path_entry(generation, agent.id, access, r, rule) {
                    out.paths.push(entry);
                }
            }
        }
    }
    out
}

/// The private temp rule of an agent with file rules: `<root>/<top-level agent>`, which holds
/// the directory of every instance of that agent (rules are per agent, not per instance; the
/// directories' 0700 mode and per-instance uids keep instances apart). A sub-agent shares its
/// top-level instance's directory, so it gets the same prefix.
pub fn private_tmp_rule(agent: &crate::policy::Agent, resolved: &Resolved) -> Option<PathRule> {
    let root = resolved.private_tmp.as_ref()?;
    let top = agent.name.split('/').next().unwrap_or(&agent.name);
    (agent.restricts_files() && agent.private_tmp).then(|| PathRule::Prefix(root.join(top)))
}

fn net_entry(
    generation: u8,
    agent_id: u32,
    net: &IpNet,
    port: u16,
    rule: RuleRef,
) -> (NetKey, u32, RuleRef) {
    let (addr, prefix) = to_key_space(net);
    (
        NetKey {
            agent_id,
            generation,
            _pad: 0,
            port_be: port.to_be_bytes(),
            addr: addr.octets(),
        },
        NET_KEY_FIXED_BITS + u32::from(prefix),
        rule,
    )
}

/// The bytes a path rule is stored as: the prefix with a trailing `/`, so `/srv/buyer` matches
/// `/srv/buyer` and `/srv/buyer/x` but never `/srv/buyerX` (lookups append a `/` too).
pub fn path_key_bytes(rule: &PathRule) -> Vec<u8> {
    let mut bytes = match rule {
        PathRule::Prefix(p) => p.as_os_str().as_encoded_bytes().to_vec(),
        PathRule::ProcSelf => runtime::PROC_SELF.as_bytes().to_vec(),
    };
    if bytes.last() != Some(&b'/') {
        bytes.push(b'/');
    }
    bytes
}

fn path_entry(
    generation: u8,
    agent_id: u32,
    access: u8,
    rule: &PathRule,
    value: RuleRef,
) -> Option<(PathKey, u32, RuleRef)> {
    let bytes = path_key_bytes(rule);
    if bytes.len() > PATH_KEY_LEN {
        return None;
    }
    let mut key = PathKey {
        agent_id,
        generation,
        access,
        ..PathKey::default()
    };
    key.path[..bytes.len()].copy_from_slice(&bytes);
    let bits = u32::try_from(bytes.len() * 8).ok()?;
    Some((key, PATH_KEY_FIXED_BITS + bits, value))
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, path::PathBuf};

    use super::*;
    use crate::{policy::parse, sys::identity::FileIdentity};

    fn policy(text: &str) -> Policy {
        parse("p.toml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn compiles_network_rules_into_one_key_space() {
        let p = policy(
            "[agents.buyer]\nconnect = [\"127.0.0.1:8080\", \"10.0.0.0/8:443\", \"[::1]:8080\", \"[2001:db8::/32]:443\"]\n",
        );
        let c = compile(&p, 1, &Resolved::default());
        assert_eq!(c.net.len(), 4);
        let id = p.agents[0].id;
        let (k, bits, r) = c.net[0];
        assert_eq!(
            (k.agent_id, k.generation, k.port_be),
            (id, 1, 8080u16.to_be_bytes())
        );
        assert_eq!(&k.addr[10..], &[0xff, 0xff, 127, 0, 0, 1]);
        assert_eq!(bits, 64 + 128);
        assert_eq!(r.rule_id, 0);
        assert_eq!(c.net[1].1, 64 + 96 + 8);
        assert_eq!(c.net[2].1, 64 + 128);
        assert_eq!(c.net[3].1, 64 + 32);
        assert_eq!(c.rule(1).map(|r| r.text.as_str()), Some("10.0.0.0/8:443"));
        let (key, cfg) = c.agents[0];
        assert_eq!(
            key,
            AgentKey {
                generation: 1,
                agent_id: id
            }
        );
        assert_eq!(cfg.flags, AGENT_LOG_ALLOWED | AGENT_UNIX_RULES);
    }

    #[test]
    fn unix_entries_are_exact_keys_and_the_agent_socket_is_added() {
        let p = policy(
            "[agents.buyer]\nconnect = [\"unix:/run/x.sock\", \"unix:@bus\"]\n\
             [agents.buyer.sub.s]\nexec = []\n[agents.free]\nexec = []\n",
        );
        let r = Resolved {
            agent_socket: Some(PathBuf::from("/run/agentguard/agent.sock")),
            ..Resolved::default()
        };
        let c = compile(&p, 1, &r);
        let id = |name: &str| p.agent(name).map(|a| a.id).unwrap_or_default();
        let buyer = id("buyer");
        let keys: Vec<(u32, Vec<u8>)> = c
            .unix
            .iter()
            .map(|(k, _)| {
                assert_eq!(k.generation, 1);
                (k.agent_id, k.path[..k.len as usize].to_vec())
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                (buyer, b"/run/x.sock".to_vec()),
                (buyer, b"\0bus".to_vec()),
                (buyer, b"/run/agentguard/agent.sock".to_vec()),
                (id("buyer/s"), b"/run/agentguard/agent.sock".to_vec()),
                (id("free"), b"/run/agentguard/agent.sock".to_vec()),
            ]
        );
        assert_eq!(
            c.rule(c.unix[2].1.rule_id).map(|r| r.kind),
            Some(RuleKind::AgentSocket)
        );
        let flags = |name: &str| {
            c.agents
                .iter()
                .find(|(k, _)| k.agent_id == id(name))
                .map_or(0, |(_, cfg)| cfg.flags)
        };
        assert_ne!(flags("buyer") & AGENT_UNIX_RULES, 0);
        // A sub-agent is held to its own list and its parent's.
        assert_eq!(
            flags("buyer/s") & (AGENT_UNIX_RULES | AGENT_UNIX_INHERITED),
            AGENT_UNIX_RULES | AGENT_UNIX_INHERITED
        );
        // An agent without a connect list is judged too: it reaches only the agent socket.
        assert_eq!(
            flags("free") & (AGENT_UNIX_RULES | AGENT_UNIX_INHERITED),
            AGENT_UNIX_RULES
        );
    }

    #[test]
    fn names_expand_to_their_addresses_and_keep_the_name() {
        let p = policy("[agents.a]\nconnect = [\"api.example.com:443\"]\ndns = true\n");
        let mut r = Resolved::default();
        r.names.insert(
            "api.example.com".into(),
            vec![
                "192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4])),
                "2001:db8::1".parse().unwrap_or(IpAddr::from([0; 4])),
            ],
        );
        r.resolvers = vec!["10.0.0.53".parse().unwrap_or(IpAddr::from([0; 4]))];
        let c = compile(&p, 0, &r);
        assert_eq!(c.net.len(), 3);
        assert_eq!(c.net[0].2, c.net[1].2);
        assert_eq!(
            c.rule(0).and_then(|r| r.name.as_deref()),
            Some("api.example.com")
        );
        assert_eq!(
            c.rule(1).map(|r| (r.kind, r.text.as_str())),
            Some((RuleKind::Dns, "10.0.0.53:53"))
        );
    }

    #[test]
    fn file_rules_set_default_deny_and_trailing_slash_keys() {
        let p = policy(
            "[agents.a]\nexec = [\"/usr/bin/env\"]\nread = [\"/srv/buyer\", \"/proc/self\"]\nwrite = [\"/\"]\nmode = \"audit\"\n",
        );
        let mut r = Resolved::default();
        r.binaries.insert(
            PathBuf::from("/usr/bin/env"),
            FileIdentity {
                dev: 7,
                stat_dev: Some(9),
                ino: 42,
            },
        );
        let c = compile(&p, 0, &r);
        assert_eq!(
            c.agents[0].1.flags & (AGENT_EXEC_RULES | AGENT_FILE_RULES | AGENT_AUDIT),
            AGENT_EXEC_RULES | AGENT_FILE_RULES | AGENT_AUDIT
        );
        assert_eq!(
            c.exec
                .iter()
                .map(|(k, _)| (k.dev, k.ino))
                .collect::<Vec<_>>(),
            vec![(7, 42), (9, 42)]
        );
        let keys: Vec<(u8, &[u8], u32)> = c
            .paths
            .iter()
            // The implicit device files have their own test in policy::tests.
            .filter(|(k, _, _)| !k.path.starts_with(b"/dev/"))
            .map(|(k, bits, _)| (k.access, &k.path[..((bits - 64) / 8) as usize], *bits))
            .collect();
        assert_eq!(
            keys,
            vec![
                (ACCESS_READ, &b"/srv/buyer/"[..], 64 + 88),
                (ACCESS_READ, &b"/proc/self/"[..], 64 + 88),
                (ACCESS_WRITE, &b"/"[..], 64 + 8),
            ]
        );
    }

    #[test]
    fn private_tmp_is_one_prefix_per_top_level_agent() {
        let p = policy(
            "[agents.a]\nread = [\"/srv\"]\n[agents.a.sub.s]\nread = [\"/srv\"]\n[agents.b]\nread = [\"/srv\"]\nprivate_tmp = false\n[agents.c]\nconnect = [\"127.0.0.1:1\"]\n",
        );
        let r = Resolved {
            private_tmp: Some(PathBuf::from("/tmp/ag")),
            ..Resolved::default()
        };
        let c = compile(&p, 0, &r);
        let tmp: Vec<(u32, u8)> = c
            .paths
            .iter()
            .filter(|(k, bits, _)| &k.path[..((bits - 64) / 8) as usize] == b"/tmp/ag/a/")
            .map(|(k, _, _)| (k.agent_id, k.access))
            .collect();
        let (a, s) = (p.agents[0].id, p.agents[1].id);
        assert_eq!(
            tmp,
            vec![
                (a, ACCESS_READ),
                (a, ACCESS_WRITE),
                (s, ACCESS_READ),
                (s, ACCESS_WRITE)
            ]
        );
        // Opted out, or no file rules (nothing to grant): no rule.
        assert!(
            !c.paths
                .iter()
                .any(|(k, _, _)| k.path.starts_with(b"/tmp/ag/b")
                    || k.path.starts_with(b"/tmp/ag/c"))
        );
    }

    #[test]
    fn agents_with_tools_reach_the_gateway_and_no_one_else_does() {
        let p = policy(
            "[tools.t]\nurl = \"http://127.0.0.1:9\"\npaths = [\"/\"]\n[agents.a]\ntools = [\"t\"]\n[agents.b]\nconnect = []\n",
        );
        let r = Resolved {
            gateway: Some("127.0.0.1:4180".parse().unwrap_or_else(|e| panic!("{e}"))),
            ..Resolved::default()
        };
        let c = compile(&p, 0, &r);
        assert_eq!(c.net.len(), 1);
        let (key, _, rule) = &c.net[0];
        assert_eq!(key.agent_id, p.agents[0].id);
        assert_eq!(key.port_be, 4180u16.to_be_bytes());
        let info = c.rule(rule.rule_id).unwrap_or_else(|| panic!("no rule"));
        assert_eq!(info.kind, RuleKind::Gateway);
        // Without a gateway nothing is implied.
        assert!(compile(&p, 0, &Resolved::default()).net.is_empty());
    }

    #[test]
    fn sub_agents_point_to_their_parent_and_budgets_land_in_slots() {
        let p = policy(
            "[agents.a]\nconnect = [\"10.0.0.0/8:443\"]\n[agents.a.throttle]\nconnect = \"10/s\"\nscope = \"agent\"\non_exceed = \"freeze\"\n[agents.a.sub.s]\nconnect = [\"10.1.0.0/16:443\"]\n",
        );
        let c = compile(&p, 0, &Resolved::default());
        let parent = p.agents[0].id;
        assert_eq!(c.agents[1].1.parent_agent_id, parent);
        let t = c.agents[0].1.throttles[throttle_slot(
            agentguard_common::agent::ThrottleKind::Connect,
            agentguard_common::agent::ThrottleScope::Agent,
        )];
        assert_eq!((t.cost_ns, t.on_exceed), (100_000_000, 1));
        assert!(
            !c.has_open_budget(),
            "a connect budget is not an open budget"
        );
        let open = policy(
            "[agents.a]\nconnect = []\n[agents.a.sub.s]\n[agents.a.sub.s.throttle]\nopen = \"5/s\"\n",
        );
        assert!(compile(&open, 0, &Resolved::default()).has_open_budget());
    }

    #[test]
    fn sub_agents_without_rules_of_their_own_inherit_the_restriction() {
        let p = policy(
            "[agents.a]\nexec = [\"/usr/bin/true\"]\n[agents.a.sub.s]\nconnect = []\n[agents.a.sub.s.sub.t]\nconnect = []\n[agents.b]\nconnect = []\n[agents.b.sub.s]\nconnect = []\n",
        );
        let c = compile(&p, 0, &Resolved::default());
        let flags = |name: &str| {
            let id = p.agent(name).map(|a| a.id);
            c.agents
                .iter()
                .find(|(k, _)| Some(k.agent_id) == id)
                .map_or(0, |(_, cfg)| cfg.flags)
        };
        let inherited = AGENT_EXEC_INHERITED | AGENT_FILE_INHERITED;
        let own = AGENT_EXEC_RULES | AGENT_FILE_RULES;
        assert_eq!(flags("a") & (own | inherited), own);
        assert_eq!(flags("a/s") & (own | inherited), inherited);
        // Two levels down, through a sub-agent that has no rules of its own either.
        assert_eq!(flags("a/s/t") & (own | inherited), inherited);
        // A parent without exec or file rules passes nothing on.
        assert_eq!(flags("b/s") & (own | inherited), 0);
    }

    #[test]
    fn syscall_grants_reach_the_kernel_as_flags() {
        let p = policy(
            "[agents.a]\nconnect = []\nallow_syscalls = [\"bpf\", \"ping_sockets\", \"ptrace\"]\n[agents.b]\nconnect = []\n",
        );
        let c = compile(&p, 0, &Resolved::default());
        let grants = AGENT_ALLOW_BPF
            | AGENT_ALLOW_RAW_SOCKETS
            | AGENT_ALLOW_PING_SOCKETS
            | AGENT_ALLOW_OTHER_SOCKETS;
        assert_eq!(
            c.agents[0].1.flags & grants,
            AGENT_ALLOW_BPF | AGENT_ALLOW_PING_SOCKETS
        );
        assert_eq!(c.agents[1].1.flags & grants, 0);
    }
}
