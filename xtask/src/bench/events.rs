//! The event pipeline: how many kernel events per second reach the log, and how many are lost,
//! under UDP sends from several agent processes (every send judged and, with `log_allowed`,
//! sent through the ring buffer); the daemon's peak RSS under that load; and the capacity of
//! the userspace log writer alone on synthetic records.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    cgroup::monotonic_ns,
    daemon::{BpfStats, Daemon, Env},
    generator::{As, Running},
    loopback::Loopback,
    policy::{BENCH, Bench},
    settle,
};
use crate::cmd;

/// Sending processes of the one-instance load: more than the cores, so the daemon competes for
/// CPU as it would with a busy agent.
pub const PROCS: u64 = 4;
/// Instances (one sending process each) of the pipeline load: every instance has an event
/// budget of 20,000 allowed-action events a second, so the pipeline's capacity shows only when
/// the load comes from many instances, each under its budget.
pub const INSTANCES: u64 = 64;

/// Allowed-action events an instance may send a second, in bursts of as many
/// (`agentguard_common::agent::EVENT_BUDGET_ALLOWED`, which xtask does not link).
pub const EVENT_BUDGET_PER_S: f64 = 20_000.0;

/// Datagrams per `sendmmsg` of the `udp-probe` load (the generator's `PROBE_BATCH`).
pub const PROBE_BATCH: u64 = 64;

impl Run {
    /// The most events a second the instances' event budgets let into the ring buffer over
    /// the send window: each a full burst plus the refill. Sends above it are over budget by
    /// design, so a pipeline rate near it is the budgets' ceiling, not the pipeline's.
    pub fn budget_ceiling_per_s(&self) -> f64 {
        if self.send_secs > 0.0 {
            self.instances as f64 * EVENT_BUDGET_PER_S * (1.0 + 1.0 / self.send_secs)
        } else {
            f64::INFINITY
        }
    }
}

/// One load run.
#[derive(Debug, Serialize)]
pub struct Run {
    /// Agent instances sending at once.
    pub instances: u64,
    pub sends: u64,
    /// From the first `agentguard run` until every instance's generator was ready to send
    /// (held until all are released together).
    pub startup_secs: f64,
    /// From the release of every instance at once until the last sender had finished (by
    /// CLOCK_MONOTONIC, as the generators report their end). Layout 2 counted the start-ups
    /// in.
    pub send_secs: f64,
    /// Sends per second over `send_secs` (events offered to the pipeline).
    pub offered_per_s: f64,
    /// Log records the run added, less the instance's start and exit and the generator's own
    /// (allowed, logged) exec.
    pub logged: u64,
    /// Kernel drops during the run (`status` `lost_events`).
    pub lost: u64,
    /// Events the instance's event budget kept out of the ring buffer (by design: no instance
    /// may flood the log), as the daemon logged them in `lost-events` gap records.
    #[serde(default)]
    pub over_budget: u64,
    /// Sends neither logged, nor lost, nor logged as over budget:
    /// `sends - logged - lost - over_budget` (negative would mean records the sends do not
    /// explain).
    pub unaccounted: i64,
    /// From the release (the first possible send) until the log stopped growing.
    pub drain_secs: f64,
    pub logged_per_s: f64,
    /// CPU time of the daemon's ingest thread over the run (draining, naming, chaining and
    /// appending every record), from its `schedstat`.
    #[serde(default)]
    pub ingest_cpu_secs: f64,
    /// Records the run added to the log per second of the ingest thread's CPU time: what one
    /// CPU given to it would carry, whatever the senders on this machine could offer.
    #[serde(default)]
    pub ingest_capacity_per_s: f64,
}

/// The network hooks' own cost over one load, by the kernel's count.
#[derive(Debug, Serialize)]
pub struct HookCost {
    /// Runs of the cgroup sock_addr programs during the load.
    pub runs: u64,
    /// Their summed run time divided by `runs`.
    pub ns_per_run: f64,
    /// The load's sends (every one should be a run).
    pub sends: u64,
}

/// The log writer on synthetic records, one run.
#[derive(Debug, Serialize)]
pub struct Writer {
    pub sealed: bool,
    pub records: u64,
    pub records_per_s: f64,
    pub bytes_per_record: f64,
}

/// The daemon's resident set at one moment, from `/proc/PID/status`.
#[derive(Debug, Default, Serialize)]
pub struct Rss {
    /// `VmRSS`: the sum of the two below (and RssShmem).
    pub rss_kib: u64,
    /// `RssAnon`: heap, stacks and anonymous mappings (the daemon's own memory).
    pub anon_kib: u64,
    /// `RssFile`: file-backed pages (the binary, libraries, mapped BPF objects such as the ring
    /// buffer), shared with the page cache.
    pub file_kib: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Events {
    /// Sending processes of the one-instance load.
    pub procs: u64,
    /// The pipeline load: [`INSTANCES`] instances of one sending process each.
    pub runs: Vec<Run>,
    /// The same with UDP connects instead of sends: one event each, no packet, so the senders
    /// offer more than sends allow.
    #[serde(default)]
    pub connect_runs: Vec<Run>,
    /// The same with batched probes: [`PROBE_BATCH`] empty datagrams flagged `MSG_PROBE` to a
    /// `sendmmsg`, each judged by the `sendmsg` hook and logged like a send but without a
    /// packet, one syscall per batch: what two cores can offer the pipeline at most.
    #[serde(default)]
    pub probe_runs: Vec<Run>,
    /// One instance of `procs` processes: its event budget keeps what is over it out of the
    /// ring buffer (logged as gaps), the rest must be logged.
    pub one_instance: Vec<Run>,
    /// The probe load once more with the kernel timing every BPF program run
    /// (`kernel.bpf_stats_enabled`, which slows every run a little, so the loads above run
    /// without it): what one run of the network hooks costs, judging, budgeting and sending
    /// the event included.
    #[serde(default)]
    pub hook_runs: Vec<HookCost>,
    /// VmRSS once start-up has settled (kept for layout version 1; `idle` has the split).
    pub daemon_rss_idle_kib: u64,
    /// VmHWM after every run: the daemon's peak resident set under the load (start-up's BTF
    /// parsing included).
    pub daemon_hwm_kib: u64,
    /// Steady state after start-up, before any load.
    pub idle: Rss,
    /// Steady state after the last run, once the log has stopped growing.
    pub after_load: Rss,
    pub writer: Vec<Writer>,
}

pub fn measure(env: &Env, net: &Loopback, quick: bool, reps: usize) -> Result<Events> {
    let files = env.work.join("files");
    std::fs::create_dir_all(&files)?;
    let policy = env.policy(
        "events",
        &Bench {
            generator: &env.art.generator,
            files: &files,
            tcp: net.tcp,
            udp: net.udp,
            connect_rules: 10,
            log_allowed: true,
        }
        .table(),
    )?;
    let total_sends: u64 = if quick { 200_000 } else { 2_000_000 };
    let mut out = Events {
        procs: PROCS,
        ..Events::default()
    };
    {
        // Every instance's `agentguard run` connects as root at about the same time: more than
        // the daemon's default cap on one uid's open connections.
        let cap = (INSTANCES + 16).to_string();
        let mut daemon =
            Daemon::start_with(env, &policy, &["--max-connections-per-uid", cap.as_str()])?;
        out.idle = steady_rss(&daemon)?;
        out.daemon_rss_idle_kib = out.idle.rss_kib;
        for rep in 1..=reps {
            eprintln!("    events: repetition {rep}/{reps}");
            out.runs.push(load(
                &daemon,
                net,
                "udp",
                INSTANCES,
                1,
                total_sends / INSTANCES,
            )?);
            daemon.check_alive()?;
            out.connect_runs.push(load(
                &daemon,
                net,
                "udp-connect",
                INSTANCES,
                1,
                total_sends / INSTANCES,
            )?);
            daemon.check_alive()?;
            out.probe_runs.push(load(
                &daemon,
                net,
                "udp-probe",
                INSTANCES,
                1,
                total_sends / INSTANCES,
            )?);
            daemon.check_alive()?;
            out.one_instance
                .push(load(&daemon, net, "udp", 1, PROCS, total_sends / PROCS)?);
            daemon.check_alive()?;
            out.hook_runs
                .push(hook_cost(&daemon, net, total_sends / 4)?);
            daemon.check_alive()?;
        }
        out.daemon_hwm_kib = daemon.status_kib("VmHWM")?;
        out.after_load = steady_rss(&daemon)?;
    }
    let records: u64 = if quick { 200_000 } else { 2_000_000 };
    for rep in 1..=reps {
        for sealed in [false, true] {
            eprintln!("    log writer: repetition {rep}/{reps}, sealed {sealed}");
            out.writer.push(writer(env, records, sealed)?);
        }
    }
    Ok(out)
}

fn rss(daemon: &Daemon<'_>) -> Result<Rss> {
    Ok(Rss {
        rss_kib: daemon.status_kib("VmRSS")?,
        anon_kib: daemon.status_kib("RssAnon")?,
        file_kib: daemon.status_kib("RssFile")?,
    })
}

/// The resident set once it has stopped moving: two readings a second apart within 1 %
/// (start-up's allocations freed, the allocator's caches settled), at most 20 s.
fn steady_rss(daemon: &Daemon<'_>) -> Result<Rss> {
    let start = Instant::now();
    let mut last = rss(daemon)?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = rss(daemon)?;
        if now.anon_kib.abs_diff(last.anon_kib) * 100 <= last.anon_kib
            || start.elapsed() > Duration::from_secs(20)
        {
            return Ok(now);
        }
        last = now;
    }
}

fn lost_events(env: &Env) -> Result<u64> {
    env.status()?["lost_events"]
        .as_u64()
        .context("status has no lost_events")
}

/// The records of the log from sequence number `from` on that are not actions (instance
/// start and exit, gaps, ring-drop counts), and the allowed-action events the `lost-events`
/// gaps among them count.
#[derive(Debug, Default)]
struct Gaps {
    records: u64,
    /// Events about allowed actions the gap records count.
    allowed: u64,
}

/// Reads only what the run added (`--from-seq`: the segments before it are not opened) and
/// only the records that are not actions (`--not-kind action`, filtered in the release
/// binary): a handful of lines, where the whole log as JSON was millions of lines by the
/// later repetitions.
fn gaps_from(env: &Env, from: u64) -> Result<Gaps> {
    let state = env.state.to_string_lossy().into_owned();
    let from_seq = from.to_string();
    let out = cmd::stdout(&mut env.ag(&[
        "log",
        "show",
        "--json",
        "--state-dir",
        &state,
        "--from-seq",
        &from_seq,
        "--not-kind",
        "action",
    ]))?;
    let mut gaps = Gaps::default();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("bad JSON from log show: {line}"))?;
        if v["seq"].as_u64().is_none_or(|seq| seq < from) || v["kind"] == "action" {
            bail!("log show --from-seq {from} --not-kind action printed {line}");
        }
        gaps.records += 1;
        if v["kind"] == "lost-events" {
            gaps.allowed += v["allowed"].as_u64().unwrap_or(0);
        }
    }
    Ok(gaps)
}

/// `instances` agent instances of `procs` sending processes each, every process sending
/// `sends_per_proc` datagrams (`op` `udp`) or connecting its UDP socket as often
/// (`udp-connect`). Every instance is started first and waits (`gated`); once all
/// have said they are ready they are released together, so the send window is the load alone,
/// not 64 `agentguard run` start-ups.
fn load(
    daemon: &Daemon<'_>,
    net: &Loopback,
    op: &str,
    instances: u64,
    procs: u64,
    sends_per_proc: u64,
) -> Result<Run> {
    let env = daemon.env();
    let before = settle::log_records(env)?;
    let cpu_before = daemon.ingest_cpu()?;
    let lost_before = lost_events(env)?;
    let args = [
        "gated".to_owned(),
        op.to_owned(),
        net.udp.to_string(),
        sends_per_proc.to_string(),
        procs.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let spawned = Instant::now();
    let mut running = (0..instances)
        .map(|_| Running::spawn(env, As::Agent(BENCH), &args))
        .collect::<Result<Vec<_>>>()?;
    for r in &mut running {
        let ready = r.next_json()?;
        if ready["ready"] != true {
            bail!("the generator said {ready} instead of being ready");
        }
    }
    let startup_secs = spawned.elapsed().as_secs_f64();
    let released = Instant::now();
    let released_ns = monotonic_ns();
    for r in &mut running {
        r.go()?;
    }
    let mut sends = 0;
    let mut end_ns = released_ns;
    for mut r in running {
        let v = r.next_json()?;
        sends += v["sends"].as_u64().unwrap_or(0);
        end_ns = end_ns.max(
            v["end_ns"]
                .as_i64()
                .with_context(|| format!("the generator reported no end_ns: {v}"))?,
        );
        r.wait()?;
    }
    let send_secs = Duration::from_nanos(u64::try_from(end_ns - released_ns)?).as_secs_f64();
    let (after, last_change) = settle::log_settled(env)?;
    let lost = lost_events(env)?.saturating_sub(lost_before);
    let drain_secs = last_change.duration_since(released).as_secs_f64();
    let ingest_cpu_secs = daemon
        .ingest_cpu()?
        .saturating_sub(cpu_before)
        .as_secs_f64();
    let gaps = gaps_from(env, before)?;
    // The actions, less each instance's exec of its generator.
    let logged = after
        .saturating_sub(before)
        .saturating_sub(gaps.records)
        .saturating_sub(instances);
    Ok(Run {
        instances,
        sends,
        over_budget: gaps.allowed,
        unaccounted: i64::try_from(sends)?
            - i64::try_from(logged)?
            - i64::try_from(lost)?
            - i64::try_from(gaps.allowed)?,
        startup_secs,
        send_secs,
        offered_per_s: if send_secs > 0.0 {
            sends as f64 / send_secs
        } else {
            0.0
        },
        logged,
        lost,
        drain_secs,
        logged_per_s: if drain_secs > 0.0 {
            logged as f64 / drain_secs
        } else {
            0.0
        },
        ingest_cpu_secs,
        ingest_capacity_per_s: if ingest_cpu_secs > 0.0 {
            after.saturating_sub(before) as f64 / ingest_cpu_secs
        } else {
            0.0
        },
    })
}

/// The probe load of [`INSTANCES`] instances, `sends` datagrams in all, with the kernel timing
/// every program run.
fn hook_cost(daemon: &Daemon<'_>, net: &Loopback, sends: u64) -> Result<HookCost> {
    let _stats = BpfStats::enable()?;
    let before = daemon.sock_addr_runs()?;
    let run = load(daemon, net, "udp-probe", INSTANCES, 1, sends / INSTANCES)?;
    let after = daemon.sock_addr_runs()?;
    let runs = after.runs.saturating_sub(before.runs);
    Ok(HookCost {
        runs,
        ns_per_run: after.run_ns.saturating_sub(before.run_ns) as f64 / runs.max(1) as f64,
        sends: run.sends,
    })
}

fn writer(env: &Env, records: u64, sealed: bool) -> Result<Writer> {
    let dir = env.work.join("audit-writer");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let mut c = std::process::Command::new(&env.art.audit_throughput);
    c.arg(records.to_string()).arg(&dir);
    if sealed {
        c.arg("--sealed");
    }
    let out = cmd::stdout(&mut c)?;
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("bad JSON: {out}"))?;
    Ok(Writer {
        sealed,
        records: v["records"].as_u64().unwrap_or(0),
        records_per_s: v["records_per_s"].as_f64().unwrap_or(0.0),
        bytes_per_record: v["bytes_per_record"].as_f64().unwrap_or(0.0),
    })
}
