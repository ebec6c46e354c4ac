//! What a policy names outside itself: binaries (to their kernel identity) and the system
//! resolvers (for `dns = true`). DNS names are resolved by [`crate::dns`], which feeds the same
//! [`Resolved`] record.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use super::{Diagnostic, Policy};
use crate::sys::identity::{self, FileIdentity};

/// Everything compile needs from outside the policy file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Identity of every exec path.
    pub binaries: HashMap<PathBuf, FileIdentity>,
    /// Addresses of every DNS name in `connect` entries (missing or empty when unresolved).
    pub names: BTreeMap<String, Vec<IpAddr>>,
    /// Resolvers from /etc/resolv.conf, for agents with `dns = true`.
    pub resolvers: Vec<IpAddr>,
    /// Where the daemon makes private temp directories (`<root>/<agent>/<n>`): agents with file
    /// rules and `private_tmp` may read and write `<root>/<agent>`.
    pub private_tmp: Option<PathBuf>,
    /// The daemon's agent socket, which every agent may reach (to start sub-agents) without
    /// listing it; `None` for a policy checked offline.
    pub agent_socket: Option<PathBuf>,
    /// The gateway's listening address, for agents with `tools` (an implicit `connect` rule).
    pub gateway: Option<std::net::SocketAddr>,
}

/// Resolves every exec path to its identity; a missing or non-regular binary is an error
/// naming the rule (fail closed: a policy that cannot be enforced as written is not applied).
pub fn binaries(policy: &Policy) -> Result<HashMap<PathBuf, FileIdentity>, Vec<Diagnostic>> {
    let mut out = HashMap::new();
    let mut diags = Vec::new();
    for agent in &policy.agents {
        for e in &agent.exec {
            if out.contains_key(&e.value) {
                continue;
            }
            match identity::of_path(&e.value) {
                Ok(id) => {
                    out.insert(e.value.clone(), id);
                }
                Err(err) => diags.push(Diagnostic {
                    file: policy.origin.clone(),
                    line: e.at.line,
                    column: e.at.column,
                    field: e.at.field.clone(),
                    message: format!("cannot use {}: {err}", e.value.display()),
                }),
            }
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

/// The `nameserver` addresses of a resolv.conf text.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("nameserver"))
                .then(|| it.next())
                .flatten()
                .and_then(|a| a.split('%').next())
                .and_then(|a| a.parse().ok())
        })
        .collect()
}

/// The system resolvers (empty when /etc/resolv.conf is missing).
pub fn system_resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers() {
        let text =
            "# comment\nnameserver 10.0.0.2\nsearch x\nnameserver fe80::1%eth0\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                "fe80::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
            ]
        );
    }

    #[test]
    fn missing_binary_names_the_rule() {
        let p = match crate::policy::parse(
            "p.toml",
            "[agents.a]\nexec = [\"/nonexistent/agentguard-test\"]\n",
        ) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let diags = binaries(&p).err().unwrap_or_default();
        assert_eq!(diags.len(), 1);
        assert_eq!(
            (diags[0].line, diags[0].field.as_str()),
            (2, "agents.a.exec[0]")
        );
        assert!(diags[0].message.contains("/nonexistent/agentguard-test"));
    }
}
