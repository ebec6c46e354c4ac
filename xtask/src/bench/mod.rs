//! `cargo xtask bench`: agentguard's overhead and throughput, measured side by side in one run
//! and reported as ratios against a baseline of the same run (never asserted anywhere).
//!
//! Parts: syscall overhead per configuration and by rule count ([`overhead`]), the event
//! pipeline and the daemon's memory under load ([`events`]), kill-switch and policy latency
//! ([`freeze`]), and the extra parts of [`extra`] (the tool gateway against direct requests,
//! [`gateway`]); `--vm` repeats the overhead part in the BPF LSM guest ([`vm`]). Everything runs
//! release builds ([`artifacts`]) against a daemon of our own ([`daemon`]) on loopback
//! ([`loopback`]), driven by the `agentguard-bench` load generator ([`generator`]). Output:
//! markdown tables on stdout and `target/bench/results.json` ([`report`]).
//!
//! The bpffs pins and the agentguard cgroup are global: a run can be disturbed by anyone else
//! loading or tearing down agentguard on this kernel. A failed part is retried once.

mod artifacts;
mod cgroup;
mod daemon;
mod events;
mod extra;
mod freeze;
mod gateway;
mod generator;
mod loopback;
mod machine;
mod overhead;
mod policy;
mod report;
mod settle;
mod stats;
mod vm;

use std::{path::PathBuf, time::SystemTime};

use anyhow::{Context as _, Result, bail};

use self::{
    artifacts::Artifacts, daemon::Env, loopback::Loopback, machine::Machine, overhead::Iterations,
    report::Results,
};
use crate::{cmd, workspace};

/// The core parts' `--only` names; the extra parts' are their [`extra::Extra::name`].
const CORE_PARTS: [&str; 3] = ["overhead", "events", "freeze"];

fn part_name(name: &str) -> Result<String, String> {
    if CORE_PARTS.contains(&name) || extra::EXTRAS.iter().any(|e| e.name == name) {
        Ok(name.to_owned())
    } else {
        let known: Vec<&str> = CORE_PARTS
            .into_iter()
            .chain(extra::EXTRAS.iter().map(|e| e.name))
            .collect();
        Err(format!(
            "unknown part {name:?} (known: {})",
            known.join(", ")
        ))
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fewer iterations and samples: a smoke run, not figures to quote.
    #[arg(long)]
    quick: bool,
    /// Repetitions of every measurement (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    reps: u64,
    /// Run only these parts (comma-separated): overhead, events, freeze, gateway.
    #[arg(long, value_delimiter = ',', value_parser = part_name)]
    only: Vec<String>,
    /// Also run the syscall-overhead part in the Debian 6.12 QEMU guest (BPF LSM backend;
    /// software emulation, so only its ratios are reported).
    #[arg(long)]
    vm: bool,
    /// Skip the host parts (with --vm: only the guest).
    #[arg(long, requires = "vm")]
    vm_only: bool,
    /// Internal: run the overhead part with prebuilt binaries and write its JSON to this file
    /// (what `--vm` runs inside the guest).
    #[arg(long, hide = true, value_name = "FILE")]
    guest: Option<PathBuf>,
}

impl Args {
    fn reps(&self) -> usize {
        usize::try_from(self.reps).unwrap_or(5)
    }

    /// Freezes, applies and breaches per size: more than the overhead repetitions, since each
    /// is quick and their tail matters.
    fn latency_reps(&self) -> usize {
        if self.quick { 5 } else { 4 * self.reps() }
    }

    fn runs(&self, part: &str) -> bool {
        !self.vm_only && (self.only.is_empty() || self.only.iter().any(|p| p == part))
    }
}

pub fn run(args: &Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark loads BPF programs and creates cgroups: run it as root");
    }
    if let Some(out) = &args.guest {
        return vm::guest(args.reps(), out);
    }
    let art = Artifacts::build()?;
    let env = Env::new(art, workspace::target_dir().join("bench").join("work"))?;
    let net = Loopback::start()?;
    let mut results = Results {
        version: report::VERSION,
        machine: Machine::probe(&env)?,
        reps: args.reps(),
        quick: args.quick,
        unix_time: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..Results::default()
    };
    eprintln!("    backends: {}", results.machine.backend_line());
    if args.runs("overhead") {
        let iters = Iterations::new(args.quick);
        results.overhead = Some(retried(&env, "syscall overhead", || {
            overhead::measure(&env, &net, iters, args.reps())
        })?);
    }
    if args.runs("events") {
        results.events = Some(retried(&env, "event pipeline", || {
            events::measure(&env, &net, args.quick, args.reps())
        })?);
    }
    if args.runs("freeze") {
        results.freeze = Some(retried(&env, "freeze and policy latency", || {
            freeze::measure(&env, &net, args.latency_reps())
        })?);
    }
    for part in extra::EXTRAS {
        if args.runs(part.name) {
            let ctx = extra::Ctx {
                env: &env,
                net: &net,
                quick: args.quick,
                reps: args.reps(),
            };
            let v = retried(&env, part.name, || (part.measure)(&ctx))?;
            results.parts.insert(part.name.to_owned(), v);
        }
    }
    if args.vm {
        results.vm = Some(cmd::step("syscall overhead in the VM", || {
            vm::host(args.reps())
        })?);
    }
    let _ = env.teardown();
    write(&results)?;
    println!("{}", results.markdown());
    Ok(())
}

/// Runs a part, once more if it fails (another user of this kernel's agentguard state may have
/// torn ours down), keeping the failed attempt's log and daemon output for a post-mortem.
fn retried<T>(env: &Env, what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    cmd::step(what, || match f() {
        Ok(v) => Ok(v),
        Err(e) => {
            eprintln!("    {what} failed ({e:#}); retrying once");
            keep_evidence(env);
            f()
        }
    })
}

/// Moves the state directory (the log) and the daemon's output to `target/bench/failed-<unix
/// time>/` (best effort: evidence, not a result).
fn keep_evidence(env: &Env) {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = workspace::target_dir()
        .join("bench")
        .join(format!("failed-{stamp}"));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let _ = std::fs::rename(&env.state, dir.join("state"));
    let _ = std::fs::rename(env.work.join("daemon.log"), dir.join("daemon.log"));
    eprintln!(
        "    the failed attempt's log and daemon output: {}",
        dir.display()
    );
}

/// `target/bench/results.json`: every sample, the summaries the tables show, the machine.
fn write(results: &Results) -> Result<()> {
    let path = workspace::target_dir().join("bench").join("results.json");
    let mut value = serde_json::to_value(results)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("summary".into(), results.summary());
    }
    std::fs::write(&path, serde_json::to_string_pretty(&value)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("    results: {}", path.display());
    Ok(())
}
