//! The policies a benchmark applies, generated: agent `bench` (the measured agent), `hold`
//! (instances of sleeping processes to freeze) and `burst` (a connect budget that freezes).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// The measured agent's name.
pub const BENCH: &str = "bench";
/// The agent whose instances are frozen and thawed.
pub const HOLD: &str = "hold";
/// The agent with a connect budget that freezes on breach.
pub const BURST: &str = "burst";

/// What the `bench` agent may do.
pub struct Bench<'a> {
    /// The load generator (it is the command `agentguard run` execs).
    pub generator: &'a Path,
    /// The directory holding the file the generator opens.
    pub files: &'a Path,
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    /// Total `connect` entries, the two real destinations included (at least 2).
    pub connect_rules: usize,
    pub log_allowed: bool,
}

/// `ADDR/32:PORT` (or `[ADDR/128]:PORT`): one host, written as a CIDR like the fillers.
fn host_rule(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(a) => format!("{}/32:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}/128]:{}", a.ip(), a.port()),
    }
}

/// The `i`-th filler rule: a /24 in 10.0.0.0/8 that no benchmark traffic goes to.
fn filler(i: usize) -> String {
    format!("10.{}.{}.0/24:443", (i >> 8) & 0xff, i & 0xff)
}

impl Bench<'_> {
    /// The `[agents.bench]` table.
    pub fn table(&self) -> String {
        let mut connect = vec![host_rule(self.tcp), host_rule(self.udp)];
        connect.extend((0..self.connect_rules.saturating_sub(2)).map(filler));
        let mut s = format!(
            "[agents.{BENCH}]\nlog_allowed = {}\nconnect = [\n",
            self.log_allowed
        );
        for rule in connect {
            let _ = writeln!(s, "    \"{rule}\",");
        }
        let _ = writeln!(
            s,
            "]\nexec = [\"{}\", \"/usr/bin/true\"]\nread = [\"@system-runtime\", \"{}\"]",
            self.generator.display(),
            self.files.display()
        );
        s
    }
}

/// `[agents.hold]`: nothing allowed; its processes only sleep.
pub fn hold() -> String {
    format!("[agents.{HOLD}]\nconnect = []\n")
}

/// `[agents.burst]`: may connect to `tcp` ten times a second; the first connect over budget
/// freezes the instance.
pub fn burst(tcp: SocketAddr) -> String {
    format!(
        "[agents.{BURST}]\nconnect = [\"{}\"]\n[agents.{BURST}.throttle]\nconnect = \"10/s\"\non_exceed = \"freeze\"\n",
        host_rule(tcp)
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Bench, burst, filler};

    #[test]
    fn fillers_are_distinct_and_never_loopback() {
        assert_eq!(filler(0), "10.0.0.0/24:443");
        assert_eq!(filler(9_999), "10.39.15.0/24:443");
    }

    #[test]
    fn bench_table_has_the_asked_rule_count() {
        let b = Bench {
            generator: Path::new("/g"),
            files: Path::new("/f"),
            tcp: ([127, 0, 0, 1], 1000).into(),
            udp: ([127, 0, 0, 1], 1001).into(),
            connect_rules: 10,
            log_allowed: false,
        };
        let t = b.table();
        assert_eq!(t.matches(":443\"").count(), 8);
        assert!(t.contains("\"127.0.0.1/32:1000\""));
        assert!(t.contains("log_allowed = false"));
        assert!(burst(([127, 0, 0, 1], 9).into()).contains("on_exceed = \"freeze\""));
    }
}
