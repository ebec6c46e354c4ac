//! Syscall overhead (open, connect, exec) in several configurations. Every repetition runs
//! each of them once, in a shuffled order (the configurations without the daemon as one group,
//! those with it as another, the groups in a shuffled order too), so that drift of a shared
//! machine does not favour a configuration; the ratios compare like with like within one
//! repetition:
//!
//! - (a) `unloaded`: nothing of agentguard in the kernel (after `teardown --force`);
//! - (b) `untagged`: the daemon running, the generator a process outside every agent;
//! - (c) `agent_log`: the generator an agent instance, every action allowed and logged;
//! - (d) `agent_nolog`: the same with the agent's `log_allowed = false`.
//!
//! and the parts alone ([`PARTS`]): the agent's Landlock domain and agentguard's seccomp filter
//! without any BPF program loaded, the agent of (d) with every seccomp group granted back (no
//! filter), and a non-agent created with audit as the daemon found it, and with audit on but
//! without the daemon's task rules that spare non-agents.
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

/// The configurations of the main table, (a) to (d).
pub const CONFIGS: [&str; 4] = ["unloaded", "untagged", "agent_log", "agent_nolog"];

/// A configuration measured to price one part alone, against a baseline configuration of the
/// same repetition.
pub struct Part {
    pub config: &'static str,
    pub baseline: &'static str,
    /// What the ratio prices.
    pub label: &'static str,
}

/// Configurations measured without the daemon (after `teardown --force`).
const WITHOUT_DAEMON: [&str; 3] = ["unloaded", "landlock_only", "seccomp_only"];
/// Configurations measured with the daemon running.
const WITH_DAEMON: [&str; 6] = [
    "untagged",
    "untagged_audit_found",
    "untagged_audit_no_never",
    "agent_log",
    "agent_nolog",
    "agent_nolog_noseccomp",
];

/// The parts, in the order the report lists them.
pub const PARTS: [Part; 5] = [
    Part {
        config: "landlock_only",
        baseline: "unloaded",
        label: "the agent's Landlock domain alone (no agentguard BPF loaded) vs (a)",
    },
    Part {
        config: "seccomp_only",
        baseline: "unloaded",
        label: "agentguard's seccomp filter alone (no agentguard BPF loaded) vs (a)",
    },
    Part {
        config: "agent_nolog",
        baseline: "agent_nolog_noseccomp",
        label: "(d) under the seccomp filter vs (d) with every syscall group granted back",
    },
    Part {
        config: "untagged",
        baseline: "untagged_audit_found",
        label: "a non-agent created with the daemon's Landlock audit on (and its `never` task \
                rules) vs with audit as the daemon found it",
    },
    Part {
        config: "untagged_audit_no_never",
        baseline: "untagged_audit_found",
        label: "a non-agent created with audit on but without the `never` task rules vs with \
                audit as the daemon found it",
    },
];
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
    /// Per repetition, the order its configurations ran in.
    #[serde(default)]
    pub order: Vec<Vec<String>>,
    /// Per repetition, the host's audit `enabled` flag before the daemon started (`null`: no
    /// audit on this kernel). When it was on, the audit variants equal `untagged`.
    #[serde(default)]
    pub audit_found_enabled: Vec<Option<u64>>,
}

struct Setup<'a> {
    env: &'a Env,
    net: &'a Loopback,
    target: PathBuf,
    iters: Iterations,
    /// Every seccomp group, to grant all back (`agent_nolog_noseccomp`).
    groups: Vec<String>,
}

impl Setup<'_> {
    fn policy(&self, name: &str, connect_rules: usize, log_allowed: bool) -> Result<PathBuf> {
        self.policy_granting(name, connect_rules, log_allowed, &[])
    }

    fn policy_granting(
        &self,
        name: &str,
        connect_rules: usize,
        log_allowed: bool,
        allow_syscalls: &[String],
    ) -> Result<PathBuf> {
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
        let grants: Vec<String> = allow_syscalls.iter().map(|g| format!("{g:?}")).collect();
        let table = if grants.is_empty() {
            table
        } else {
            format!("{table}allow_syscalls = [{}]\n", grants.join(", "))
        };
        self.env.policy(name, &table)
    }

    /// The three loops, run by `who`, each loop wrapped in `wrap` (generator arguments that
    /// confine it first).
    fn suite(&self, who: As<'_>, wrap: &[&str]) -> Result<Value> {
        let target = self.target.to_string_lossy().into_owned();
        let tcp = self.net.tcp.to_string();
        let n = |x: u64| x.to_string();
        let (open, connect, exec) = (
            n(self.iters.open),
            n(self.iters.connect),
            n(self.iters.exec),
        );
        let mut args = wrap.to_vec();
        args.extend_from_slice(&[
            "suite",
            &target,
            &tcp,
            "/usr/bin/true",
            &open,
            &connect,
            &exec,
        ]);
        generator::run(self.env, who, &args)
    }

    /// `agentguard-bench audit ...` (untagged: it changes host-wide audit state).
    fn audit(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        generator::run(self.env, As::Untagged, &all)
    }
}

/// Runs `reps` repetitions; `env.work` gets the policies and the file the generator opens.
pub fn measure(env: &Env, net: &Loopback, iters: Iterations, reps: usize) -> Result<Overhead> {
    let files = env.work.join("files");
    std::fs::create_dir_all(&files)?;
    let target = files.join("target.txt");
    std::fs::write(&target, "agentguard bench\n")?;
    let groups = generator::run(env, As::Untagged, &["seccomp-groups"])?;
    let setup = Setup {
        env,
        net,
        target,
        iters,
        groups: groups["groups"]
            .as_array()
            .context("seccomp-groups printed no list")?
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
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

/// This repetition's order: each group shuffled, and the two groups in a random order.
fn shuffled_order() -> Vec<Vec<&'static str>> {
    let mut without = WITHOUT_DAEMON.to_vec();
    let mut with = WITH_DAEMON.to_vec();
    fastrand::shuffle(&mut without);
    fastrand::shuffle(&mut with);
    if fastrand::bool() {
        vec![without, with]
    } else {
        vec![with, without]
    }
}

fn repetition(s: &Setup<'_>, out: &mut Overhead) -> Result<()> {
    let order = shuffled_order();
    out.order
        .push(order.concat().iter().map(|c| (*c).to_owned()).collect());
    for group in order {
        if group.contains(&"unloaded") {
            s.env.teardown()?;
            for config in group {
                let who = match config {
                    "landlock_only" => {
                        let policy = s.policy("bench-log", RULE_COUNTS[0], true)?;
                        let policy = policy.to_string_lossy().into_owned();
                        s.suite(As::Untagged, &["landlock", &policy, BENCH])?
                    }
                    "seccomp_only" => s.suite(As::Untagged, &["seccomp"])?,
                    _ => s.suite(As::Untagged, &[])?,
                };
                out.record(config, &who);
            }
        } else {
            with_daemon(s, out, &group)?;
        }
    }
    Ok(())
}

/// The configurations of `group` (all with the daemon), then connect by rule count.
fn with_daemon(s: &Setup<'_>, out: &mut Overhead, group: &[&str]) -> Result<()> {
    let env = s.env;
    let log_on = s.policy("bench-log", RULE_COUNTS[0], true)?;
    let log_off = s.policy("bench-nolog", RULE_COUNTS[0], false)?;
    let no_seccomp =
        s.policy_granting("bench-nolog-noseccomp", RULE_COUNTS[0], false, &s.groups)?;
    // Audit as it is before the daemon switches it on (after the teardown `start` does first,
    // which ends any daemon that was running and restores what it found).
    env.teardown()?;
    let found = s
        .audit(&["status"])
        .ok()
        .and_then(|v| v["enabled"].as_u64());
    out.audit_found_enabled.push(found);
    let mut daemon = Daemon::start(env, &log_on)?;
    let daemon_audit = s
        .audit(&["status"])
        .ok()
        .and_then(|v| v["enabled"].as_u64());
    for &config in group {
        let v = match config {
            "agent_log" | "agent_nolog" | "agent_nolog_noseccomp" => {
                let policy = match config {
                    "agent_log" => &log_on,
                    "agent_nolog" => &log_off,
                    _ => &no_seccomp,
                };
                env.apply(policy)?;
                let before = settle::log_records(env)?;
                let v = s.suite(As::Agent(BENCH), &[])?;
                let after = settle::log_records(env)?;
                out.log_records
                    .entry(config.to_owned())
                    .or_default()
                    .push(after.saturating_sub(before));
                v
            }
            "untagged_audit_found" | "untagged_audit_no_never" => {
                match audit_variant(config, found, daemon_audit) {
                    // The daemon left audit as it found it (audit on already, or no audit on
                    // this kernel): the variant is the plain untagged run.
                    None => s.suite(As::Untagged, &[])?,
                    Some(state) => {
                        s.audit(&["set", state.0, state.1])?;
                        let v = s.suite(As::Untagged, &[]);
                        // Back to the daemon's state before anything else runs.
                        s.audit(&["set", "1", "never-rules"])?;
                        v?
                    }
                }
            }
            _ => s.suite(As::Untagged, &[])?,
        };
        out.record(config, &v);
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
    // Let the daemon finish writing before the next group tears it down.
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

/// The audit state (`enabled`, task rules) an audit variant runs in, or `None` when the daemon
/// did not switch audit on (it was on already, or this kernel has no audit): nothing to vary.
fn audit_variant(
    config: &str,
    found: Option<u64>,
    daemon: Option<u64>,
) -> Option<(&'static str, &'static str)> {
    match (found, daemon) {
        (Some(0), Some(1)) => Some(if config == "untagged_audit_found" {
            ("0", "no-never-rules")
        } else {
            ("1", "no-never-rules")
        }),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::{CONFIGS, PARTS, WITH_DAEMON, WITHOUT_DAEMON, audit_variant, shuffled_order};

    #[test]
    fn every_configuration_runs_once_per_repetition() {
        for _ in 0..20 {
            let mut order = shuffled_order().concat();
            assert_eq!(order.len(), WITHOUT_DAEMON.len() + WITH_DAEMON.len());
            order.sort_unstable();
            order.dedup();
            assert_eq!(order.len(), WITHOUT_DAEMON.len() + WITH_DAEMON.len());
            for c in CONFIGS
                .iter()
                .chain(PARTS.iter().flat_map(|p| [&p.config, &p.baseline]))
            {
                assert!(order.contains(c), "{c} is never measured");
            }
        }
    }

    #[test]
    fn audit_is_varied_only_when_the_daemon_switched_it_on() {
        assert_eq!(
            audit_variant("untagged_audit_found", Some(0), Some(1)),
            Some(("0", "no-never-rules"))
        );
        assert_eq!(
            audit_variant("untagged_audit_no_never", Some(0), Some(1)),
            Some(("1", "no-never-rules"))
        );
        assert_eq!(
            audit_variant("untagged_audit_found", Some(1), Some(1)),
            None
        );
        assert_eq!(audit_variant("untagged_audit_found", None, None), None);
    }
}
