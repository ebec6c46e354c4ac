//! `agentguard log`: create, anchor, verify and read the event log.
//!
//! Exit codes: `verify` exits 0 only for an intact log and 1 for a log that is not; errors
//! (no log, unreadable files, bad arguments) are returned for the caller to report.

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

use agentguard_common::verdict::Verdict;
use anyhow::{Context, Result, bail};
use clap::{
    Args, Subcommand,
    builder::{PossibleValuesParser, TypedValueParser},
};
use inotify::{Inotify, WatchMask};
use serde_json::json;

use agentguard::audit::{
    self, Anchor, AuditError, SealSeed, clock,
    follow::Tail,
    show::{self, Filter},
    verify::{Report, Seals},
};

/// Where agentguard keeps its state when not told otherwise; the log is in its `log` subdir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/agentguard";

/// `agentguard log ...`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: LogCommand,
}

/// The `log` subcommands.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Create a sealed log and print its sealing key, once, for the auditor to keep offline.
    Init(InitArgs),
    /// Print the log's head as SEQ:HASH, to record somewhere the host cannot change.
    Head(HeadArgs),
    /// Check every hash, sequence number, header and (with --key) seal; exit 0 only if intact.
    Verify(VerifyArgs),
    /// Print records, as lines or JSON lines (for a SIEM).
    Show(ShowArgs),
    /// Remove whole old segments (retention); what is kept stays verifiable.
    Prune(super::log_prune::PruneArgs),
}

/// Where the log is.
#[derive(Debug, Args)]
pub struct StateDirArg {
    /// agentguard's state directory; the log is its `log` subdirectory.
    #[arg(
        long,
        value_name = "DIR",
        env = "AGENTGUARD_STATE_DIR",
        default_value = DEFAULT_STATE_DIR
    )]
    pub state_dir: PathBuf,
}

impl StateDirArg {
    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("log")
    }
}

/// `log init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where the log is.
    #[command(flatten)]
    pub state: StateDirArg,
    /// Start a new log even if one exists (the old one is moved to `log/archive-<ns>/`).
    #[arg(long)]
    pub force: bool,
}

/// `log head`.
#[derive(Debug, Args)]
pub struct HeadArgs {
    /// Where the log is.
    #[command(flatten)]
    pub state: StateDirArg,
    /// Print `{"seq": N, "hash": "..."}`.
    #[arg(long)]
    pub json: bool,
}

/// `log verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Where the log is.
    #[command(flatten)]
    pub state: StateDirArg,
    /// The sealing key `log init` printed (64 hex digits); without it seals are not checked.
    #[arg(
        long,
        value_name = "KEY_HEX",
        env = "AGENTGUARD_LOG_KEY",
        hide_env_values = true
    )]
    pub key: Option<SealSeed>,
    /// A head recorded earlier with `log head` (SEQ:HASH, or just HASH): the log must reach it.
    #[arg(long, value_name = "[SEQ:]HASH")]
    pub head: Option<Anchor>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `log show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Where the log is.
    #[command(flatten)]
    pub state: StateDirArg,
    /// Keep printing records as they are written (across segment rotation).
    #[arg(short, long)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Only records about this agent (and its sub-agents).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Only actions with this verdict.
    #[arg(long, value_parser = verdict_name())]
    pub verdict: Option<Verdict>,
    /// Only records from this time on: a duration ago (`10m`, `2h`) or an RFC 3339 time
    /// (`2026-11-25T10:00:00Z`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<u64>,
    /// Only records up to this time (same forms as --since); with --follow, stop after it.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<u64>,
    /// Only records of this kind (`action`, `lost-events`, ...; repeat for several).
    #[arg(long, value_name = "KIND", value_parser = record_kind_name())]
    pub kind: Vec<u16>,
    /// No records of this kind (repeat for several).
    #[arg(long, value_name = "KIND", value_parser = record_kind_name())]
    pub not_kind: Vec<u16>,
    /// Only records from this sequence number on. Reading starts at the segment that holds
    /// it (segment files are named by their first sequence number), so the start of a long
    /// log is not read at all.
    #[arg(long, value_name = "SEQ")]
    pub from_seq: Option<u64>,
}

/// A wall-clock time in ns since the epoch: `DURATION` ago, or an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let (now, _) = audit::now();
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
        format!("{s:?} is neither a duration (10m, 2h) nor an RFC 3339 time (2026-11-25T10:00:00Z)")
    })?;
    let since_epoch = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?;
    Ok(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
}

/// Verdicts by their stable names (the ones `show` prints).
fn verdict_name() -> impl TypedValueParser<Value = Verdict> {
    PossibleValuesParser::new(Verdict::ALL.map(Verdict::name))
        .try_map(|name| Verdict::from_name(&name).ok_or("not a verdict name"))
}

/// Record kinds by their names (the ones `show` prints), as their numbers.
fn record_kind_name() -> impl TypedValueParser<Value = u16> {
    PossibleValuesParser::new(audit::names::RECORD_KINDS).try_map(|name| {
        audit::names::RECORD_KINDS
            .iter()
            .position(|k| *k == name)
            .and_then(|i| u16::try_from(i).ok())
            .ok_or("not a record kind")
    })
}

/// Runs `agentguard log ...`, printing to stdout (and warnings to stderr).
pub fn run(args: LogArgs) -> Result<ExitCode> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match run_to(args, &mut out) {
        // A closed pipe (`log show | head`) is the reader saying it has enough.
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn run_to(args: LogArgs, out: &mut dyn Write) -> Result<ExitCode> {
    match args.command {
        LogCommand::Init(a) => init(&a, out),
        LogCommand::Head(a) => head(&a, out),
        LogCommand::Verify(a) => verify(&a, out),
        LogCommand::Show(a) => show(&a, out),
        LogCommand::Prune(a) => super::log_prune::run(&a, out),
    }
}

fn init(args: &InitArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let dir = args.state.log_dir();
    let seed = match audit::init(&dir, args.force) {
        Err(AuditError::Locked(_)) => {
            bail!(
                "{}: the daemon has the log open; stop it before `log init`",
                dir.display()
            )
        }
        other => other?,
    };
    eprintln!(
        "Created a sealed log in {}.\n\
         Its sealing key follows. It is shown only this once and is not stored on this host:\n\
         keep it offline (the auditor's safe, a password manager, paper). `agentguard log \
         verify --key KEY` needs it to check seals; anyone holding it could also forge them.",
        dir.display()
    );
    writeln!(out, "{}", seed.to_hex())?;
    Ok(ExitCode::SUCCESS)
}

fn head(args: &HeadArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let dir = args.state.log_dir();
    let head = audit::head(&dir)?;
    if args.json {
        let line =
            json!({ "seq": head.seq, "hash": hex::encode(head.hash), "anchor": head.to_string() });
        writeln!(out, "{line}")?;
    } else {
        writeln!(out, "{head}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(args: &VerifyArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let dir = args.state.log_dir();
    let report = audit::verify(&dir, args.key.as_ref(), args.head)
        .with_context(|| format!("verifying the log in {}", dir.display()))?;
    if args.json {
        writeln!(out, "{}", report_json(&report))?;
    } else {
        write!(out, "{report}")?;
    }
    Ok(if report.intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report_json(r: &Report) -> serde_json::Value {
    let (seals, count) = match r.seals {
        Seals::Unsealed => ("unsealed", 0),
        Seals::NotChecked { count } => ("not-checked", count),
        Seals::Verified { count } => ("verified", count),
    };
    json!({
        "intact": r.intact(),
        "records": r.records,
        "segments": r.segments,
        "head": { "seq": r.head.seq, "hash": hex::encode(r.head.hash) },
        "seals": seals,
        "seal_count": count,
        "last_seal": r.last_seal.map(|s| json!({
            "epoch": s.epoch, "seq": s.seq, "time": clock::rfc3339(s.wall_ns, 9),
        })),
        "unsealed_tail": r.unsealed_tail,
        "anchor_found": r.anchor_found,
        "pruned": r.pruned.as_ref().map(|p| json!({
            "first_kept_seq": p.first_kept_seq, "record_seq": p.record_seq,
            "time": clock::rfc3339(p.wall_ns, 9), "rule": p.rule,
        })),
        "problem": r.problem.as_ref().map(|p| json!({
            "class": p.class.name(),
            "seq": p.seq,
            "segment": p.location.as_ref().map(|l| l.segment.clone()),
            "offset": p.location.as_ref().map(|l| l.offset),
            "detail": p.detail,
        })),
        "notes": r.notes,
    })
}

fn show(args: &ShowArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let dir = args.state.log_dir();
    if audit::files::read_log_header(&dir)?.is_none() {
        return Err(AuditError::NoLog(dir).into());
    }
    let filter = Filter {
        agent: args.agent.clone(),
        verdict: args.verdict,
        since_ns: args.since,
        until_ns: args.until,
        kinds: args.kind.clone(),
        not_kinds: args.not_kind.clone(),
    };
    // Watching starts before the first read, so no write between the two is missed.
    let mut changes = if args.follow {
        Some(LogChanges::watch(&dir)?)
    } else {
        None
    };
    let mut tail = Tail::from_seq(&dir, args.from_seq.unwrap_or(0));
    loop {
        let batch = tail.poll()?;
        for warning in &batch.warnings {
            eprintln!("warning: {warning}");
        }
        for record in &batch.records {
            if args.until.is_some_and(|u| record.wall_ns > u) && args.follow {
                // Records are in time order (give or take the writer's batching): the window
                // is over.
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            if !filter.matches(record) {
                continue;
            }
            if args.json {
                writeln!(out, "{}", show::to_json(record))?;
            } else {
                writeln!(out, "{}", show::to_line(record))?;
            }
        }
        if !batch.more {
            let Some(changes) = changes.as_mut() else {
                return Ok(ExitCode::SUCCESS);
            };
            out.flush()?;
            changes.wait()?;
        }
    }
}

/// Wake-ups for `show --follow`: inotify on the log directory (appends, new segments,
/// rotation, re-initialisation), instead of polling on a timer.
struct LogChanges {
    inotify: Inotify,
    buf: Vec<u8>,
}

impl LogChanges {
    fn watch(dir: &std::path::Path) -> Result<Self> {
        let inotify = Inotify::init().context("inotify")?;
        inotify
            .watches()
            .add(
                dir,
                WatchMask::MODIFY
                    | WatchMask::CLOSE_WRITE
                    | WatchMask::CREATE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE,
            )
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        Ok(Self {
            inotify,
            buf: vec![0u8; 4096],
        })
    }

    /// Blocks until something in the log directory changed.
    fn wait(&mut self) -> Result<()> {
        self.inotify
            .read_events_blocking(&mut self.buf)
            .context("waiting for log changes")?;
        // One read takes every event queued so far; the next poll reads all they announced.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use agentguard::audit::{AuditLog, LogOptions, testutil::action};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    fn run_args(args: &[&str]) -> (Result<ExitCode>, String) {
        let cli = Cli::try_parse_from(std::iter::once("log").chain(args.iter().copied()))
            .expect("parses");
        let mut out = Vec::new();
        let code = run_to(cli.log, &mut out);
        (code, String::from_utf8(out).expect("utf-8"))
    }

    fn ok(args: &[&str]) -> String {
        let (code, out) = run_args(args);
        assert_eq!(code.expect("runs"), ExitCode::SUCCESS, "{args:?}: {out}");
        out
    }

    #[test]
    fn init_head_verify_show() {
        let state = tempfile::tempdir().expect("tempdir");
        let sd = state.path().to_str().expect("utf-8");
        let key = ok(&["init", "--state-dir", sd]);
        let key = key.trim();
        assert_eq!(key.len(), 64);
        assert!(
            run_args(&["init", "--state-dir", sd]).0.is_err(),
            "no re-init without --force"
        );

        let mut log = AuditLog::open(LogOptions {
            seal_every: 4,
            ..LogOptions::new(state.path().join("log"))
        })
        .expect("open");
        for i in 0..9 {
            log.append(i, i, action(i)).expect("append");
        }
        drop(log);

        let head = ok(&["head", "--state-dir", sd]);
        let head = head.trim();
        assert!(head.starts_with("10:"), "{head}");
        let json: serde_json::Value =
            serde_json::from_str(&ok(&["head", "--state-dir", sd, "--json"])).expect("json");
        assert_eq!(json["seq"], 10);
        assert_eq!(json["anchor"], head);

        let report = ok(&["verify", "--state-dir", sd, "--key", key, "--head", head]);
        assert!(report.starts_with("log intact"), "{report}");
        assert!(report.contains("seals: 2 verified"), "{report}");
        let report = ok(&["verify", "--state-dir", sd]);
        assert!(report.contains("NOT checked"), "{report}");
        let wrong = "00".repeat(32);
        let (code, report) = run_args(&["verify", "--state-dir", sd, "--key", &wrong, "--json"]);
        assert_eq!(code.expect("runs"), ExitCode::FAILURE);
        let json: serde_json::Value = serde_json::from_str(&report).expect("json");
        assert_eq!(json["problem"]["class"], "bad seal");
        assert_eq!(json["intact"], false);

        let all = ok(&["show", "--state-dir", sd]);
        assert_eq!(all.lines().count(), 11);
        let denied = ok(&["show", "--state-dir", sd, "--verdict", "denied", "--json"]);
        let lines: Vec<serde_json::Value> = denied
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 3, "actions 0, 3 and 6");
        assert!(
            lines
                .iter()
                .all(|l| l["verdict"] == "denied" && l["kind"] == "action")
        );
        let search = ok(&["show", "--state-dir", sd, "--agent", "buyer/search"]);
        assert_eq!(search.lines().count(), 4, "actions 1, 3, 5 and 7");
        let not_actions = ok(&["show", "--state-dir", sd, "--not-kind", "action", "--json"]);
        let kinds: Vec<serde_json::Value> = not_actions
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json line")["kind"].clone()
            })
            .collect();
        assert_eq!(kinds, ["seal", "seal"], "{not_actions}");
        let seals = ok(&[
            "show",
            "--state-dir",
            sd,
            "--kind",
            "seal",
            "--kind",
            "lost",
        ]);
        assert_eq!(seals.lines().count(), 2, "{seals}");
        let from = ok(&["show", "--state-dir", sd, "--from-seq", "5", "--json"]);
        let seqs: Vec<u64> = from
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json line")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .collect();
        assert_eq!(seqs, (5..=10).collect::<Vec<_>>());
        assert!(Cli::try_parse_from(["log", "show", "--kind", "nonsense"]).is_err());
    }

    #[test]
    fn run_prints_to_stdout_and_a_closed_pipe_is_success() {
        let state = tempfile::tempdir().expect("tempdir");
        drop(AuditLog::open(LogOptions::new(state.path().join("log"))).expect("open"));
        let cli = Cli::try_parse_from([
            "log",
            "head",
            "--state-dir",
            &state.path().to_string_lossy(),
        ])
        .expect("parses");
        assert_eq!(run(cli.log).expect("runs"), ExitCode::SUCCESS);
        let pipe = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("show");
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }

    #[test]
    fn since_until_and_a_follow_woken_by_inotify() {
        let state = tempfile::tempdir().expect("tempdir");
        let sd = state.path().to_str().expect("utf-8").to_owned();
        let sec = 1_000_000_000u64;
        let mut log = AuditLog::open(LogOptions::new(state.path().join("log"))).expect("open");
        for i in 1..=5 {
            log.append(i * sec, i, action(i)).expect("append");
        }
        log.flush().expect("flush");
        let window = ok(&[
            "show",
            "--state-dir",
            &sd,
            "--json",
            "--since",
            "1970-01-01T00:00:02Z",
            "--until",
            "1970-01-01T00:00:04Z",
        ]);
        let walls: Vec<u64> = window
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["wall_ns"]
                    .as_u64()
                    .expect("wall_ns")
            })
            .collect();
        assert_eq!(walls, [2 * sec, 3 * sec, 4 * sec]);
        assert!(ok(&["show", "--state-dir", &sd, "--since", "1m"]).is_empty());

        // Following up to second 7: it waits (inotify, no timer) for records 6 and 7 and ends
        // at the first record past the window.
        let follower = std::thread::spawn(move || {
            ok(&[
                "show",
                "--state-dir",
                &sd,
                "-f",
                "--since",
                "1970-01-01T00:00:05Z",
                "--until",
                "1970-01-01T00:00:07Z",
            ])
        });
        for i in 6..=8 {
            log.append(i * sec, i, action(i)).expect("append");
            log.flush().expect("flush");
        }
        let out = follower.join().expect("follower");
        assert_eq!(out.lines().count(), 3, "records 5, 6 and 7: {out}");
    }

    #[test]
    fn missing_log_is_an_error() {
        let state = tempfile::tempdir().expect("tempdir");
        let sd = state.path().to_str().expect("utf-8");
        for cmd in ["head", "verify", "show"] {
            assert!(run_args(&[cmd, "--state-dir", sd]).0.is_err(), "{cmd}");
        }
        assert!(Cli::try_parse_from(["log", "verify", "--key", "xyz"]).is_err());
        assert!(Cli::try_parse_from(["log", "verify", "--head", "1:zz"]).is_err());
        assert!(Cli::try_parse_from(["log", "show", "--verdict", "audit-denied", "-f"]).is_ok());
    }
}
