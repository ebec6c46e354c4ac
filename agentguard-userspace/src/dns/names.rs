//! The DNS names a policy uses, and the warnings about those without an address.

use std::collections::BTreeSet;

use super::{NameCache, Timing};
use crate::policy::{Diagnostic, Policy, net::NetTarget};

/// Every DNS name in the policy's `connect` entries.
pub fn policy_names(policy: &Policy) -> BTreeSet<String> {
    policy
        .agents
        .iter()
        .flat_map(|a| &a.connect)
        .filter_map(|e| match &e.value.target {
            NetTarget::Name(name) => Some(name.clone()),
            NetTarget::Net(_) => None,
        })
        .collect()
}

/// One warning per `connect` entry whose name has no valid address at `now`, or whose latest
/// lookup failed while earlier addresses are still in their grace period. Located like policy
/// diagnostics (`file:line:column: field: message`).
pub fn warnings(policy: &Policy, cache: &NameCache, now: std::time::Instant) -> Vec<String> {
    let timing = cache.timing();
    let mut out = Vec::new();
    for agent in &policy.agents {
        for entry in &agent.connect {
            let NetTarget::Name(name) = &entry.value.target else {
                continue;
            };
            let Some(message) = warning(name, cache, timing, now) else {
                continue;
            };
            let diag = Diagnostic {
                file: policy.origin.clone(),
                line: entry.at.line,
                column: entry.at.column,
                field: entry.at.field.clone(),
                message,
            };
            out.push(diag.to_string());
        }
    }
    out
}

fn warning(
    name: &str,
    cache: &NameCache,
    timing: &Timing,
    now: std::time::Instant,
) -> Option<String> {
    let valid = cache.valid(name, now).len();
    let failure = cache.failure(name);
    match (valid, failure) {
        (0, failure) => Some(format!(
            "{name} does not resolve ({}): this rule allows nothing until it does; the daemon retries it in the background",
            failure.map_or_else(|| "not looked up".to_owned(), ToString::to_string)
        )),
        (n, Some(failure)) => Some(format!(
            "{name} did not resolve ({failure}): {n} {} from earlier answers allowed for up to {}s more; the daemon retries it in the background",
            if n == 1 {
                "address stays"
            } else {
                "addresses stay"
            },
            timing.grace().as_secs()
        )),
        (_, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::IpAddr,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::dns::{Answer, LookupError};

    fn policy() -> Policy {
        crate::policy::parse(
            "p.toml",
            "[agents.a]\nconnect = [\"10.0.0.1:1\", \"good.example:443\", \"bad.example:443\"]\n[agents.b]\nconnect = [\"bad.example:80\", \"flaky.example:80\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_are_collected_once() {
        let names: Vec<String> = policy_names(&policy()).into_iter().collect();
        assert_eq!(names, ["bad.example", "flaky.example", "good.example"]);
    }

    #[test]
    fn every_entry_of_an_unresolved_name_is_warned_about_where_it_is_written() {
        let p = policy();
        let t0 = Instant::now();
        let mut c = NameCache::new(Timing::default());
        let ok = |a: [u8; 4]| {
            Ok(Answer {
                addrs: vec![IpAddr::from(a)],
                ttl: Some(Duration::from_secs(60)),
            })
        };
        for n in policy_names(&p) {
            c.track(&n, t0);
        }
        c.record("good.example", ok([192, 0, 2, 1]), t0);
        c.record("flaky.example", ok([192, 0, 2, 2]), t0);
        c.record("bad.example", Err(LookupError::NoAddresses), t0);
        c.record(
            "flaky.example",
            Err(LookupError::TimedOut(Duration::from_secs(10))),
            t0,
        );
        let w = warnings(&p, &c, t0);
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(
            w[0].starts_with("p.toml:2:46: agents.a.connect[2]: bad.example does not resolve (no A or AAAA records): this rule allows nothing"),
            "{}",
            w[0]
        );
        assert!(
            w[1].starts_with("p.toml:4:12: agents.b.connect[0]: bad.example does not resolve"),
            "{}",
            w[1]
        );
        assert!(
            w[2].contains("flaky.example did not resolve (no answer within 10s): 1 address stays from earlier answers allowed for up to 300s more"),
            "{}",
            w[2]
        );
    }
}
