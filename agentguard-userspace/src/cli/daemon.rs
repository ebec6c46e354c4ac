//! `agentguard daemon`.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use agentguard::{
    audit::{LogOptions, prune::Retention},
    control::{AGENT_SOCKET_ENV, DEFAULT_AGENT_SOCKET},
    daemon::{self, ClientLimits, DEFAULT_STATE_DIR, Options},
    dns,
    secrets::vault::{Dynamic, VaultConfig},
};
use clap::Args;
use tracing_subscriber::EnvFilter;

use super::SocketArg;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// Where the log and daemon state live.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(flatten)]
    socket: SocketArg,
    /// Agent-facing socket: processes inside an agent instance start their sub-agents here.
    #[arg(long, env = AGENT_SOCKET_ENV, default_value = DEFAULT_AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// On a clean exit, also remove the programs: agents are no longer enforced. Without it,
    /// enforcement stays in place after the daemon exits.
    #[arg(long)]
    unload_on_exit: bool,
    /// Longest time in seconds between two lookups of a DNS name (and the interval for names
    /// from the hosts file, which have no TTL). Hidden: tests shorten it; see docs/dns.md.
    #[arg(long, hide = true, value_name = "SECS", default_value_t = dns::timing::DEFAULT_CEILING.as_secs())]
    dns_ttl_ceiling: u64,
    /// Seconds an address stays allowed after it disappeared from its name's answers. Hidden:
    /// tests shorten it; see docs/dns.md.
    #[arg(long, hide = true, value_name = "SECS", default_value_t = dns::timing::DEFAULT_GRACE.as_secs())]
    dns_grace: u64,
    /// How often buffered log records are written and fsynced: the most a crash or power loss
    /// can take from the log.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    fsync_interval_ms: u64,
    /// Size at which a log segment is closed and the next begun. Hidden: tests shrink it to
    /// exercise rotation and retention.
    #[arg(long, hide = true, value_name = "BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(4096..))]
    log_segment_bytes: u64,
    /// Seal the log at least this often (when `agentguard log init` created a key).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    seal_interval: u64,
    /// ... and at least every this many records.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    seal_every: u64,
    /// Size of the kernel's event ring buffer (a power of two, at least 4096), used when the
    /// programs are first loaded. Events beyond it while the daemon lags are counted as lost.
    #[arg(long, value_name = "BYTES", default_value_t = agentguard_common::maps::EVENTS_BYTES, value_parser = parse_ring_size)]
    ring_buffer_bytes: u32,
    /// Load this eBPF object instead of the one built into the binary (root only: the file and
    /// every directory above it must be owned by root and writable by no one else). For
    /// testing an upgrade between two builds of the programs; see docs/operations.md.
    #[arg(long, value_name = "FILE", hide_short_help = true)]
    ebpf_object: Option<PathBuf>,
    /// Where the daemon makes each instance's private temp directory
    /// (`<tmp-dir>/<agent>/<n>`, see `private_tmp` in docs/policy.md).
    #[arg(long, value_name = "DIR", default_value = daemon::private_tmp::DEFAULT_ROOT)]
    tmp_dir: PathBuf,
    /// Seconds a client of either socket may take to send one whole request (or to take one
    /// reply); idle and trickling clients are disconnected after it.
    #[arg(long, value_name = "SECS", default_value_t = ClientLimits::default().request_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    client_timeout: u64,
    /// Connections one uid may hold open at once, on each socket; more are refused.
    #[arg(long, value_name = "N", default_value_t = ClientLimits::default().per_uid, value_parser = parse_positive)]
    max_connections_per_uid: usize,
    /// Log retention: every 10 minutes, remove whole log segments last written more than this
    /// many days ago (a `pruned` record keeps the rest verifiable; see docs/operations.md).
    #[arg(long, value_name = "DAYS", conflicts_with = "log_keep_bytes")]
    log_keep_days: Option<u64>,
    /// Log retention: every 10 minutes, remove the oldest whole segments while the log is
    /// larger than this many bytes (the segment being written is always kept).
    #[arg(long, value_name = "BYTES")]
    log_keep_bytes: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477). Labels are agent
    /// names, action kinds and verdicts, never instances or pids.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Connections all clients together may hold open at once, on each socket.
    #[arg(long, value_name = "N", default_value_t = ClientLimits::default().total, value_parser = parse_positive)]
    max_connections: usize,
    /// Where the tool gateway listens (a loopback address; port 0 picks a free port). Agents
    /// find it in AGENTGUARD_GATEWAY.
    #[arg(long, value_name = "ADDR:PORT", default_value = daemon::DEFAULT_GATEWAY, value_parser = parse_loopback)]
    gateway_listen: std::net::SocketAddr,
    /// Serve no tool gateway (policies with `tools` are still accepted; their calls fail).
    #[arg(long)]
    no_gateway: bool,
    /// Read secrets the embedded store does not hold from this Vault / OpenBao (KV v2):
    /// `https://HOST:PORT` (plain http only on loopback).
    #[arg(long, value_name = "URL", value_parser = agentguard::secrets::vault::parse_addr, requires = "vault_token_file")]
    vault_addr: Option<String>,
    /// File holding the Vault token (read on every fetch; root-only).
    #[arg(long, value_name = "PATH")]
    vault_token_file: Option<PathBuf>,
    /// KV v2 mount.
    #[arg(long, value_name = "MOUNT", default_value = "secret")]
    vault_mount: String,
    /// Path prefix below the mount: secret NAME is read at MOUNT/data/PREFIX + NAME.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    vault_prefix: String,
    /// Field of the secret's data that holds the value.
    #[arg(long, value_name = "FIELD", default_value = "value")]
    vault_field: String,
    /// Seconds a value read from Vault is used before it is read again.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    vault_cache_secs: u64,
    /// Secret NAME is a Vault dynamic secret (repeatable): every agentguard lease on it gets a
    /// credential of its own from `GET /v1/MOUNT/creds/ROLE`, the string at `data.FIELD`
    /// (default `password`), revoked at Vault when the lease ends (TTL, return, freeze, kill,
    /// instance end). The token needs `read` on the path and `update` on `sys/leases/revoke`.
    #[arg(long, value_name = "NAME=MOUNT/creds/ROLE[#FIELD]", value_parser = agentguard::secrets::vault::parse_dynamic, requires = "vault_addr")]
    vault_dynamic: Vec<(String, Dynamic)>,
}

fn parse_loopback(s: &str) -> Result<std::net::SocketAddr, String> {
    let a: std::net::SocketAddr = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !a.ip().is_loopback() {
        return Err(format!(
            "{a} is not a loopback address: the gateway serves local agents only"
        ));
    }
    Ok(a)
}

/// Whether stderr is the journal's stream, as `JOURNAL_STREAM` (set by systemd to the stream's
/// `device:inode`) says; a child that inherited the variable but not the stream is told apart.
fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    var.to_string_lossy() == format!("{}:{}", st.st_dev, st.st_ino)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two of at least 4096"));
    }
    Ok(n)
}

/// The `--vault-dynamic` entries by name; a name given twice is an error.
fn dynamic_secrets(
    entries: Vec<(String, Dynamic)>,
) -> anyhow::Result<std::collections::BTreeMap<String, Dynamic>> {
    let mut map = std::collections::BTreeMap::new();
    for (name, d) in entries {
        if map.insert(name.clone(), d).is_some() {
            anyhow::bail!("--vault-dynamic: secret {name:?} is given more than once");
        }
    }
    Ok(map)
}

pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let dynamic = dynamic_secrets(args.vault_dynamic)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in files and the journal.
        .with_ansi(std::io::stderr().is_terminal());
    if stderr_is_journal() {
        // journald stamps every line itself; a second timestamp only costs width.
        logs.without_time().init();
    } else {
        logs.init();
    }
    let object = match &args.ebpf_object {
        Some(path) => agentguard::ebpf::object::EbpfObject::from_trusted_file(path)?,
        None => agentguard::ebpf::object::EbpfObject::embedded(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The directory is filled in by the daemon: `<state-dir>/log`.
    let log = LogOptions {
        fsync_interval: Duration::from_millis(args.fsync_interval_ms),
        seal_interval: Duration::from_secs(args.seal_interval),
        seal_every: args.seal_every.max(1),
        segment_bytes: args.log_segment_bytes,
        ..LogOptions::new(&args.state_dir)
    };
    runtime.block_on(daemon::run(Options {
        policy: args.policy,
        state_dir: args.state_dir,
        socket: args.socket.socket,
        agent_socket: args.agent_socket,
        unload_on_exit: args.unload_on_exit,
        log,
        ring_buffer_bytes: args.ring_buffer_bytes,
        object,
        tmp_dir: args.tmp_dir,
        clients: ClientLimits {
            request_timeout: Duration::from_secs(args.client_timeout),
            per_uid: args.max_connections_per_uid,
            total: args.max_connections,
        },
        gateway_listen: (!args.no_gateway).then_some(args.gateway_listen),
        metrics_listen: args.metrics_listen,
        vault: args.vault_addr.map(|addr| VaultConfig {
            addr,
            token_file: args.vault_token_file.unwrap_or_default(),
            mount: args.vault_mount.trim_matches('/').to_owned(),
            prefix: args.vault_prefix.trim_start_matches('/').to_owned(),
            field: args.vault_field,
            cache_ttl: Duration::from_secs(args.vault_cache_secs),
            dynamic,
        }),
        log_retention: match (args.log_keep_days, args.log_keep_bytes) {
            (Some(d), _) => Some(Retention::Days(d)),
            (None, Some(b)) => Some(Retention::Bytes(b)),
            (None, None) => None,
        },
        dns: dns::Timing::new(
            Duration::from_secs(args.dns_ttl_ceiling),
            Duration::from_secs(args.dns_grace),
        ),
    }))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_secret_named_twice_is_refused_naming_the_flag() {
        let one = |s: &str| {
            agentguard::secrets::vault::parse_dynamic(s).unwrap_or_else(|e| panic!("{e}"))
        };
        let ok = dynamic_secrets(vec![
            one("a=database/creds/x"),
            one("b=database/creds/y#username"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.len(), 2);
        let twice = dynamic_secrets(vec![one("a=database/creds/x"), one("a=database/creds/y")]);
        assert!(twice.is_err_and(|e| e.to_string().contains("--vault-dynamic")));
    }
}
