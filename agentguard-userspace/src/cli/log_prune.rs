//! `agentguard log prune --keep-days N | --keep-bytes N`: log retention.
//!
//! The log has one writer. With a daemon running, it is asked to prune (it holds the log);
//! otherwise the log is opened here, pruned and closed.

use std::{io::Write, process::ExitCode};

use agentguard::{
    audit::{AuditError, AuditLog, LogOptions, files, prune::Retention, record::Actor},
    control::proto::{Reply, Request},
};
use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{SocketArg, log::StateDirArg};

/// `log prune`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("keep").required(true).args(["keep_days", "keep_bytes"])))]
pub struct PruneArgs {
    /// Where the log is (used when no daemon is running).
    #[command(flatten)]
    pub state: StateDirArg,
    /// The running daemon, which owns the log.
    #[command(flatten)]
    pub socket: SocketArg,
    /// Remove whole segments last written more than this many days ago.
    #[arg(long, value_name = "DAYS")]
    pub keep_days: Option<u64>,
    /// Remove the oldest whole segments while the log is larger than this many bytes (the
    /// segment being written is always kept).
    #[arg(long, value_name = "BYTES")]
    pub keep_bytes: Option<u64>,
}

pub fn run(args: &PruneArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let keep = match (args.keep_days, args.keep_bytes) {
        (Some(d), None) => Retention::Days(d),
        (None, Some(b)) => Retention::Bytes(b),
        _ => bail!("give exactly one of --keep-days and --keep-bytes"),
    };
    let dir = args.state.log_dir();
    // Opening creates a log where there is none: not what pruning should do.
    if files::read_log_header(&dir)?.is_none() {
        bail!("{}: no log here (no log.header)", dir.display());
    }
    let result = match AuditLog::open(LogOptions::new(&dir)) {
        Ok(mut log) => {
            let by = Actor::Peer {
                uid: nix::unistd::getuid().as_raw(),
                pid: std::process::id(),
                exe: std::env::current_exe()
                    .ok()
                    .map(|p| p.display().to_string()),
            };
            log.prune(keep, by)
                .context("cannot prune the log")?
                .map(|p| (p.segments, p.bytes, Some(p.first_kept_seq)))
        }
        Err(AuditError::Locked(_)) => via_daemon(args)?,
        Err(e) => return Err(e.into()),
    };
    match result {
        Some((segments, bytes, Some(first))) if segments > 0 => writeln!(
            out,
            "removed {segments} segment(s), {bytes} bytes; the log now starts at seq {first}"
        )?,
        _ => writeln!(out, "nothing to remove ({keep})")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon holds the log: it prunes.
fn via_daemon(args: &PruneArgs) -> Result<Option<(u64, u64, Option<u64>)>> {
    let mut client = args
        .socket
        .connect()
        .context("the log is held by another writer, and no daemon answers on its socket")?;
    let reply = client.call(&Request::LogPrune {
        keep_days: args.keep_days,
        keep_bytes: args.keep_bytes,
    })?;
    let Reply::Pruned {
        segments,
        bytes,
        first_kept_seq,
    } = reply
    else {
        bail!("unexpected reply from the daemon: {reply:?}");
    };
    Ok(Some((segments, bytes, first_kept_seq)))
}
