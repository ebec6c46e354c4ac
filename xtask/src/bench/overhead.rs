//! Syscall overhead (open, connect, exec) in four configurations, each repetition running them
//! back to back so the ratios compare like with like:
//!
//! - (a) `unloaded`: nothing of agentguard in the kernel (after `teardown --force`);
//! - (b) `untagged`: the daemon running, the generator a process outside every agent;
//! - (c) `agent_log`: the generator an agent instance, every action allowed and logged;
//! - (d) `agent_nolog`: the same with the agent's `log_allowed = false`.
//!
//! Then connect as an agent with 10, 1,000 and 10,000 connect rules (one matches), with
//! logging on and off.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    daemon::{Daemon, Env},
    generator::{self, As},
    loopback::Loopback,
    policy::{BENCH, Bench},
    settle,
};

/// The configurations, in the order each repetition runs them.
pub const CONFIGS: [&str; 4] = ["unloaded", "untagged", "agent_log", "agent_nolog"];
pub const OPS: [&str; 3] = ["open", "connect", "exec"];
pub const RULE_COUNTS: [usize; 3] = [10, 1_000, 10_000];

/// Loop lengths of one generator run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Iterations {
    pub open: u64,
    pub connect: u64,
    pub exec: u64,
}

impl Iterations {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                open: 20_000,
                connect: 2_000,
                exec: 100,
            }
        } else {
            Self {
                open: 200_000,
                connect: 20_000,
                exec: 1_000,
            }
        }
    }
}

/// Every sample, one per repetition.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Overhead {
    pub iterations: Option<Iterations>,
    /// config -> op -> ns/op: the generator's median batch (single operations for connect and
    /// exec, 100 for open), robust to the preemptions a shared two-core machine brings.
    pub ns_per_op: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// config -> op -> the plain mean over the whole loop, interruptions included.
    #[serde(default)]
    pub mean_ns_per_op: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// connect rules -> connect ns/op as an agent with logging on.
    pub connect_by_rules: BTreeMap<usize, Vec<f64>>,
    /// The same with logging off.
    #[serde(default)]
    pub connect_by_rules_nolog: BTreeMap<usize, Vec<f64>>,
    /// config -> log records written while the suite ran (`agent_nolog` must write only the
    /// instance's start and exit: that is the check that `log_allowed = false` works).
    pub log_records: BTreeMap<String, Vec<u64>>,
    /// `policy apply` of the 10,000-rule policy, ms.
    pub apply_10k_ms: Vec<f64>,
    /// Loops that had failing or stalled iterations.
    pub failures: Vec<String>,
}

struct Setup<'a> {
    env: &'a Env,
    net: &'a Loopback,
    target: PathBuf,
    iters: Iterations,
}

impl Setup<'_> {
    fn policy(&self, name: &str, connect_rules: usize, log_allowed: bool) -> Result<PathBuf> {
        let files = self.env.work.join("files");
        let table = Bench {
            generator: &self.env.art.generator,
            files: &files,
            tcp: self.net.tcp,
            udp: self.net.udp,
            connect_rules,
            log_allowed,
        }
        .table();
        self.env.policy(name, &table)
    }

    fn suite(&self, who: As<'_>) -> Result<Value> {
        let target = self.target.to_string_lossy().into_owned();
        let tcp = self.net.tcp.to_string();
        let n = |x: u64| x.to_string();
        generator::run(
            self.env,
            who,
            &[
                "suite",
                &target,
                &tcp,
                "/usr/bin/true",
                &n(self.iters.open),
                &n(self.iters.connect),
                &n(self.iters.exec),
            ],
        )
    }
}

/// Runs `reps` repetitions; `env.work` gets the policies and the file the generator opens.
pub fn measure(env: &Env, net: &Loopback, iters: Iterations, reps: usize) -> Result<Overhead> {
    let files = env.work.join("files");
    std::fs::create_dir_all(&files)?;
    let target = files.join("target.txt");
    std::fs::write(&target, "agentguard bench\n")?;
    let setup = Setup {
        env,
        net,
        target,
        iters,
    };
    let mut out = Overhead {
        iterations: Some(iters),
        ..Overhead::default()
    };
    for rep in 1..=reps {
        eprintln!("    overhead: repetition {rep}/{reps}");
        repetition(&setup, &mut out).with_context(|| format!("overhead repetition {rep}"))?;
    }
    Ok(out)
}

fn repetition(s: &Setup<'_>, out: &mut Overhead) -> Result<()> {
    let env = s.env;
    let log_on = s.policy("bench-log", RULE_COUNTS[0], true)?;
    let log_off = s.policy("bench-nolog", RULE_COUNTS[0], false)?;

    env.teardown()?;
    out.record("unloaded", &s.suite(As::Untagged)?);

    let mut daemon = Daemon::start(env, &log_on)?;
    out.record("untagged", &s.suite(As::Untagged)?);

    for (config, policy) in [("agent_log", &log_on), ("agent_nolog", &log_off)] {
        env.apply(policy)?;
        let before = settle::log_records(env)?;
        out.record(config, &s.suite(As::Agent(BENCH))?);
        let after = settle::log_records(env)?;
        out.log_records
            .entry(config.to_owned())
            .or_default()
            .push(after.saturating_sub(before));
    }

    for rules in RULE_COUNTS {
        // With logging off too: the lookup's cost alone, without the event's.
        for log_allowed in [true, false] {
            let name = format!(
                "bench-{rules}-rules-{}",
                if log_allowed { "log" } else { "nolog" }
            );
            let took = env.apply(&s.policy(&name, rules, log_allowed)?)?;
            if rules == 10_000 {
                out.apply_10k_ms.push(took.as_secs_f64() * 1e3);
            }
            let tcp = s.net.tcp.to_string();
            let n = s.iters.connect.to_string();
            let v = generator::run(env, As::Agent(BENCH), &["connect", &tcp, &n])?;
            out.check(&name, "connect", &v);
            let series = if log_allowed {
                &mut out.connect_by_rules
            } else {
                &mut out.connect_by_rules_nolog
            };
            if let Some(ns) = v["ns_per_op"].as_f64() {
                series.entry(rules).or_default().push(ns);
            }
        }
    }
    daemon.check_alive()?;
    // Let the daemon finish writing before the next repetition tears it down.
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

impl Overhead {
    fn record(&mut self, config: &str, suite: &Value) {
        for op in OPS {
            self.check(config, op, &suite[op]);
            for (key, map) in [
                ("ns_per_op", &mut self.ns_per_op),
                ("mean_ns_per_op", &mut self.mean_ns_per_op),
            ] {
                if let Some(ns) = suite[op][key].as_f64() {
                    map.entry(config.to_owned())
                        .or_default()
                        .entry(op.to_owned())
                        .or_default()
                        .push(ns);
                }
            }
        }
    }

    /// Notes a loop whose iterations failed (every action here should be allowed) or stalled.
    fn check(&mut self, config: &str, op: &str, v: &Value) {
        let stalls = v["stalls"].as_u64().unwrap_or(0);
        if stalls > 0 {
            let note = format!(
                "{config}/{op}: {stalls} iteration{} took over 100 ms (slowest {:.0} ms)",
                if stalls == 1 { "" } else { "s" },
                v["max_ns"].as_f64().unwrap_or(0.0) / 1e6
            );
            eprintln!("    warning: {note}");
            self.failures.push(note);
        }
        let errors = v["errors"].as_u64().unwrap_or(0);
        if errors > 0 {
            let note = format!(
                "{config}/{op}: {errors} of {} iterations failed (first errno {})",
                v["n"], v["first_errno"]
            );
            eprintln!("    warning: {note}");
            self.failures.push(note);
        }
    }
}
