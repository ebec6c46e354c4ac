//! Network rule entries: `ADDR[/PREFIX]:PORT` (IPv6 in brackets) or `NAME:PORT`.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;

/// What a network rule allows to be reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NetTarget {
    /// An address or CIDR block.
    Net(IpNet),
    /// A DNS name, resolved by the daemon.
    Name(String),
}

/// One parsed `connect` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetEntry {
    /// Destination address, block or name.
    pub target: NetTarget,
    /// Destination port.
    pub port: u16,
}

/// Why a `connect` entry is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetEntryError {
    /// No `:PORT` at the end.
    #[error("missing port: write ADDR:PORT, [IPV6]:PORT or NAME:PORT")]
    MissingPort,
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    BadPort(String),
    /// An IPv6 address without brackets.
    #[error("IPv6 addresses must be in brackets, e.g. [::1]:8080")]
    UnbracketedIpv6,
    /// The address part is not an address.
    #[error("invalid address {0:?}")]
    BadAddress(String),
    /// The prefix length is not a number or too long for the family.
    #[error("invalid prefix length {0:?}")]
    BadPrefix(String),
    /// The address has bits set beyond the prefix (a typo for the network address?).
    #[error("{given} has host bits set beyond the prefix; the network is {network}")]
    HostBits {
        /// As written.
        given: String,
        /// The network it belongs to.
        network: String,
    },
    /// Not a valid DNS name.
    #[error("invalid DNS name {0:?}")]
    BadName(String),
}

impl FromStr for NetEntry {
    type Err = NetEntryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or(NetEntryError::MissingPort)?;
            let port = after.strip_prefix(':').ok_or(NetEntryError::MissingPort)?;
            (inside, port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or(NetEntryError::MissingPort)?;
            if host.contains(':') {
                return Err(NetEntryError::UnbracketedIpv6);
            }
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(NetEntryError::BadPort(port.to_owned())),
        };
        Ok(Self {
            target: parse_target(host)?,
            port,
        })
    }
}

fn parse_target(host: &str) -> Result<NetTarget, NetEntryError> {
    if let Some((addr, prefix)) = host.split_once('/') {
        let ip = IpAddr::from_str(addr).map_err(|_| NetEntryError::BadAddress(addr.to_owned()))?;
        let len = prefix
            .parse::<u8>()
            .map_err(|_| NetEntryError::BadPrefix(prefix.to_owned()))?;
        let net = IpNet::new(ip, len).map_err(|_| NetEntryError::BadPrefix(prefix.to_owned()))?;
        if net.trunc() != net {
            return Err(NetEntryError::HostBits {
                given: host.to_owned(),
                network: net.trunc().to_string(),
            });
        }
        return Ok(NetTarget::Net(net));
    }
    if let Ok(ip) = IpAddr::from_str(host) {
        return Ok(NetTarget::Net(IpNet::from(ip)));
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(NetEntryError::BadAddress(host.to_owned()));
    }
    if is_dns_name(host) {
        Ok(NetTarget::Name(
            host.trim_end_matches('.').to_ascii_lowercase(),
        ))
    } else {
        Err(NetEntryError::BadName(host.to_owned()))
    }
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl fmt::Display for NetEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            NetTarget::Net(IpNet::V4(n)) if n.prefix_len() == 32 => {
                write!(f, "{}:{}", n.addr(), self.port)
            }
            NetTarget::Net(IpNet::V6(n)) if n.prefix_len() == 128 => {
                write!(f, "[{}]:{}", n.addr(), self.port)
            }
            NetTarget::Net(IpNet::V4(n)) => write!(f, "{n}:{}", self.port),
            NetTarget::Net(IpNet::V6(n)) => write!(f, "[{n}]:{}", self.port),
            NetTarget::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// An address block in the kernel's single IPv6 key space: IPv4 becomes IPv4-mapped.
pub fn to_key_space(net: &IpNet) -> (Ipv6Addr, u8) {
    match net {
        IpNet::V4(n) => (n.network().to_ipv6_mapped(), 96 + n.prefix_len()),
        IpNet::V6(n) => (n.network(), n.prefix_len()),
    }
}

/// An address as it arrived in an event: IPv4-mapped addresses are shown as the IPv4 address
/// they stand for.
pub fn from_key_space(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Whether `inner` lies entirely within `outer` (both as address blocks).
pub fn net_within(inner: &IpNet, outer: &IpNet) -> bool {
    let (ia, il) = to_key_space(inner);
    let (oa, ol) = to_key_space(outer);
    il >= ol && ipnet::Ipv6Net::new(oa, ol).is_ok_and(|o| o.contains(&ia))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ok(s: &str) -> NetEntry {
        match s.parse::<NetEntry>() {
            Ok(e) => e,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(ok("127.0.0.1:8080").to_string(), "127.0.0.1:8080");
        assert_eq!(ok("10.0.0.0/8:443").to_string(), "10.0.0.0/8:443");
        assert_eq!(ok("[::1]:8080").to_string(), "[::1]:8080");
        assert_eq!(ok("[2001:db8::/32]:443").to_string(), "[2001:db8::/32]:443");
        assert_eq!(
            ok("API.Example.com:443").target,
            NetTarget::Name("api.example.com".into())
        );
        assert_eq!(ok("10.0.0.0/8:443").port, 443);
    }

    #[test]
    fn rejects_bad_entries_with_reasons() {
        let err = |s: &str| s.parse::<NetEntry>().err();
        assert_eq!(err("127.0.0.1"), Some(NetEntryError::MissingPort));
        assert_eq!(err("127.0.0.1:0"), Some(NetEntryError::BadPort("0".into())));
        assert_eq!(
            err("127.0.0.1:99999"),
            Some(NetEntryError::BadPort("99999".into()))
        );
        assert_eq!(err("::1:80"), Some(NetEntryError::UnbracketedIpv6));
        assert_eq!(err("[::1]"), Some(NetEntryError::MissingPort));
        assert_eq!(
            err("10.0.0.0/33:1"),
            Some(NetEntryError::BadPrefix("33".into()))
        );
        assert_eq!(
            err("300.1.2.3:1"),
            Some(NetEntryError::BadAddress("300.1.2.3".into()))
        );
        assert!(matches!(
            err("10.0.0.1/8:1"),
            Some(NetEntryError::HostBits { .. })
        ));
        assert_eq!(
            err("bad host!:1"),
            Some(NetEntryError::BadName("bad host!".into()))
        );
        assert_eq!(
            err("[1.2.3.4/40]:1"),
            Some(NetEntryError::BadPrefix("40".into()))
        );
    }

    #[test]
    fn ipv4_lives_in_the_mapped_key_space() {
        let (a, l) = to_key_space(&"10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(
            a,
            "::ffff:10.0.0.0"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::UNSPECIFIED)
        );
        assert_eq!(l, 104);
        assert_eq!(
            from_key_space(a.octets()),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0))
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        assert_eq!(from_key_space(v6.octets()), IpAddr::V6(v6));
    }

    #[test]
    fn containment() {
        let n = |s: &str| s.parse::<IpNet>().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(net_within(&n("10.1.0.0/16"), &n("10.0.0.0/8")));
        assert!(!net_within(&n("10.0.0.0/8"), &n("10.1.0.0/16")));
        assert!(!net_within(&n("11.0.0.0/8"), &n("10.0.0.0/8")));
        assert!(net_within(&n("::ffff:10.1.2.3/128"), &n("10.0.0.0/8")));
    }
}
