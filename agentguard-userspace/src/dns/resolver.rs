//! The system's resolver, as the C library's default `hosts: files dns` sees it: a name in the
//! hosts file is answered from it alone (no TTL), any other name by DNS through hickory with the
//! servers, search list and options of `/etc/resolv.conf`. Both files are read at every lookup,
//! so edits take effect at the next lookup.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use hickory_resolver::{
    Hosts, TokioResolver,
    config::{LookupIpStrategy, ResolveHosts},
    net::NetError,
    proto::{
        op::Query,
        rr::{Name, RecordType},
    },
};

use super::{Answer, LookupError, Resolve};

/// The system hosts file.
pub const HOSTS_FILE: &str = "/etc/hosts";

/// Looks names up in the hosts file, then in DNS.
#[derive(Clone, Debug)]
pub struct SystemResolver {
    hosts: PathBuf,
}

impl Default for SystemResolver {
    fn default() -> Self {
        Self {
            hosts: PathBuf::from(HOSTS_FILE),
        }
    }
}

impl Resolve for SystemResolver {
    async fn lookup(&self, name: &str) -> Result<Answer, LookupError> {
        if let Some(addrs) = hosts_file_addresses(&self.hosts, name) {
            return Ok(Answer { addrs, ttl: None });
        }
        dns_lookup(name).await
    }
}

/// The addresses the hosts file at `path` gives `name`, if it lists the name at all (a
/// missing or unreadable file lists nothing, as for the C library).
fn hosts_file_addresses(path: &Path, name: &str) -> Option<Vec<IpAddr>> {
    let text = std::fs::read(path).ok()?;
    hosts_addresses(&text, name)
}

/// The addresses hosts-file `text` gives `name`, both families; `None` when it does not list
/// the name (then DNS is asked), as the C library's `files` source answers for every family
/// once it knows the name.
pub fn hosts_addresses(text: &[u8], name: &str) -> Option<Vec<IpAddr>> {
    let mut hosts = Hosts::default();
    hosts.read_hosts_conf(text).ok()?;
    let name = Name::from_str(name).ok()?;
    let addrs: Vec<IpAddr> = [RecordType::A, RecordType::AAAA]
        .into_iter()
        .filter_map(|rtype| hosts.lookup_static_host(&Query::query(name.clone(), rtype)))
        .flat_map(|lookup| {
            lookup
                .answers()
                .iter()
                .filter_map(|r| r.data.ip_addr())
                .collect::<Vec<_>>()
        })
        .collect();
    (!addrs.is_empty()).then_some(addrs)
}

/// A and AAAA of `name` from the DNS servers of `/etc/resolv.conf`. A fresh resolver per lookup
/// reads the file anew and has no cache, so the TTLs are the servers' own.
async fn dns_lookup(name: &str) -> Result<Answer, LookupError> {
    let mut builder = TokioResolver::builder_tokio().map_err(resolver_error)?;
    let options = builder.options_mut();
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    let resolver = builder.build().map_err(resolver_error)?;
    let lookup = resolver.lookup_ip(name).await.map_err(resolver_error)?;
    let addrs: Vec<IpAddr> = lookup.iter().collect();
    if addrs.is_empty() {
        return Err(LookupError::NoAddresses);
    }
    // The answer is valid as long as its shortest-lived record (CNAMEs included).
    let ttl = lookup
        .as_lookup()
        .answers()
        .iter()
        .map(|r| r.ttl)
        .min()
        .map(|s| Duration::from_secs(u64::from(s)));
    Ok(Answer { addrs, ttl })
}

fn resolver_error(e: NetError) -> LookupError {
    if e.is_no_records_found() || e.is_nx_domain() {
        LookupError::NoAddresses
    } else {
        LookupError::Resolver(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &[u8] = b"# comment\n127.0.0.1 localhost\n127.0.0.77 agentguard-test.invalid Alias.Invalid # trailing\n::77 agentguard-test.invalid\nnot-an-ip bogus.invalid\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn hosts_file_names_answer_both_families() {
        assert_eq!(
            hosts_addresses(HOSTS, "agentguard-test.invalid"),
            Some(vec![ip("127.0.0.77"), ip("::77")])
        );
        assert_eq!(
            hosts_addresses(HOSTS, "alias.invalid"),
            Some(vec![ip("127.0.0.77")]),
            "aliases and case-insensitive"
        );
        assert_eq!(hosts_addresses(HOSTS, "bogus.invalid"), None);
        assert_eq!(hosts_addresses(HOSTS, "api.example.com"), None);
        assert_eq!(hosts_addresses(b"", "localhost"), None);
    }

    #[tokio::test]
    async fn the_hosts_file_answers_without_a_ttl() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hosts");
        std::fs::write(&path, HOSTS)?;
        let r = SystemResolver { hosts: path };
        assert_eq!(
            r.lookup("agentguard-test.invalid").await,
            Ok(Answer {
                addrs: vec![ip("127.0.0.77"), ip("::77")],
                ttl: None
            })
        );
        Ok(())
    }
}
