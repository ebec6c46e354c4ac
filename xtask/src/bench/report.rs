//! The results: one JSON file with every sample and summary, and markdown tables on stdout.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    events::Events,
    freeze::Freeze,
    machine::Machine,
    overhead::{CONFIGS, OPS, Overhead, PARTS, RULE_COUNTS},
    stats::{Summary, ratios},
};

/// The syscall-overhead part run in the VM guest (what `--guest` writes).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Guest {
    pub machine: Machine,
    pub overhead: Overhead,
}

/// The layout of `results.json`; raised whenever a field changes meaning or goes away (added
/// fields and configurations keep it). 2: the overhead part's parts-alone configurations and
/// shuffled order, unaccounted events, RssAnon/RssFile and steady-state RSS, freeze timed to
/// the CLI's reply. 3: the pipeline's `send_secs` (and so `offered_per_s`) runs from the
/// release of every instance at once, without the `agentguard run` start-ups (`startup_secs`),
/// and `drain_secs` from that release. 4: the tool gateway part (`parts.gateway`: requests/s
/// and latency through the gateway against direct), and the pipeline's `ingest_cpu_secs` and
/// `ingest_capacity_per_s` (the ingest thread's own CPU time).
pub const VERSION: u32 = 4;

#[derive(Debug, Default, Serialize)]
pub struct Results {
    /// [`VERSION`].
    pub version: u32,
    pub machine: Machine,
    pub reps: usize,
    pub quick: bool,
    pub unix_time: u64,
    pub overhead: Option<Overhead>,
    pub events: Option<Events>,
    pub freeze: Option<Freeze>,
    /// The same overhead measurement in the BPF LSM guest (QEMU TCG: only ratios mean anything).
    pub vm: Option<Guest>,
    /// Extra parts (their own modules, see `extra.rs`): name -> what the part returned.
    pub parts: std::collections::BTreeMap<String, Value>,
}

const LABELS: [&str; 4] = [
    "(a) not loaded",
    "(b) loaded, untagged",
    "(c) agent, log on",
    "(d) agent, log off",
];

impl Results {
    /// Every figure the tables show, as JSON (added to the file next to the raw samples).
    pub fn summary(&self) -> Value {
        json!({
            "overhead": self.overhead.as_ref().map(overhead_summary),
            "events": self.events.as_ref().map(events_summary),
            "freeze": self.freeze.as_ref().map(freeze_summary),
            "vm_overhead": self.vm.as_ref().map(|g| overhead_summary(&g.overhead)),
            "parts": self.parts,
        })
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Machine: {} ({} cores, {:.0} GiB), kernel {}, backends: {}, load average at start \
             {}.  \n{} repetitions{}; \
             each figure is the median, the spread (min–max, or p99) in brackets. Ratios are \
             per repetition against (a) of the same repetition.\n",
            m.cpu_model,
            m.cores,
            m.memory_gib,
            m.kernel,
            m.backend_line(),
            m.load_at_start,
            self.reps,
            if self.quick { " (--quick)" } else { "" }
        );
        if let Some(o) = &self.overhead {
            overhead_tables(&mut s, o, true);
        }
        if let Some(e) = &self.events {
            events_table(&mut s, e);
        }
        if let Some(f) = &self.freeze {
            freeze_table(&mut s, f);
        }
        for part in super::extra::EXTRAS {
            if let Some(v) = self.parts.get(part.name) {
                s.push_str(&(part.markdown)(v));
            }
        }
        if let Some(g) = &self.vm {
            let _ = writeln!(
                s,
                "### In the VM: BPF LSM backend, ratios only\n\nEMULATED: QEMU TCG software \
                 emulation (kernel {}, backends: {}); absolute times there mean nothing, \
                 and even ratios are only indicative.\n",
                g.machine.kernel,
                g.machine.backend_line()
            );
            overhead_tables(&mut s, &g.overhead, false);
        }
        s
    }
}

fn samples<'a>(o: &'a Overhead, config: &str, op: &str) -> &'a [f64] {
    o.ns_per_op
        .get(config)
        .and_then(|m| m.get(op))
        .map_or(&[], Vec::as_slice)
}

fn overhead_summary(o: &Overhead) -> Value {
    let mut ops = serde_json::Map::new();
    for op in OPS {
        let base = samples(o, CONFIGS[0], op);
        let mut configs = serde_json::Map::new();
        for config in o.ns_per_op.keys() {
            let ns = samples(o, config, op);
            configs.insert(
                config.to_owned(),
                json!({
                    "ns_per_op": Summary::of(ns),
                    "ratio": Summary::of(&ratios(ns, base)),
                }),
            );
        }
        ops.insert(op.to_owned(), Value::Object(configs));
    }
    let base = samples(o, CONFIGS[0], "connect");
    let by_rules = |series: &std::collections::BTreeMap<usize, Vec<f64>>| {
        series
            .iter()
            .map(|(rules, ns)| {
                (
                    rules.to_string(),
                    json!({
                        "ns_per_op": Summary::of(ns),
                        "ratio": Summary::of(&ratios(ns, base)),
                    }),
                )
            })
            .collect::<serde_json::Map<String, Value>>()
    };
    let log_records: serde_json::Map<String, Value> = o
        .log_records
        .iter()
        .map(|(config, n)| {
            let n: Vec<f64> = n.iter().map(|&x| x as f64).collect();
            (config.clone(), json!(Summary::of(&n)))
        })
        .collect();
    let parts: Vec<Value> = PARTS
        .iter()
        .map(|p| {
            let by_op: serde_json::Map<String, Value> = OPS
                .iter()
                .map(|op| {
                    let ns = samples(o, p.config, op);
                    let base = samples(o, p.baseline, op);
                    (
                        (*op).to_owned(),
                        json!({
                            "ns_per_op": Summary::of(ns),
                            "baseline_ns_per_op": Summary::of(base),
                            "ratio": Summary::of(&ratios(ns, base)),
                        }),
                    )
                })
                .collect();
            json!({ "config": p.config, "baseline": p.baseline, "what": p.label, "ops": by_op })
        })
        .collect();
    json!({
        "ops": ops,
        "parts": parts,
        "audit_found_enabled": o.audit_found_enabled,
        "connect_by_rules": by_rules(&o.connect_by_rules),
        "connect_by_rules_nolog": by_rules(&o.connect_by_rules_nolog),
        "log_records_per_run": log_records,
        "apply_10k_ms": Summary::of(&o.apply_10k_ms),
        "failures": o.failures,
    })
}

/// `1,234`.
pub(super) fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn ns_cell(s: Option<Summary>) -> String {
    s.map_or_else(
        || "n/a".into(),
        |s| {
            format!(
                "{} ns ({}–{})",
                thousands(s.median),
                thousands(s.min),
                thousands(s.max)
            )
        },
    )
}

pub(super) fn ratio_cell(s: Option<Summary>) -> String {
    s.map_or_else(
        || "n/a".into(),
        |s| format!("×{:.2} ({:.2}–{:.2})", s.median, s.min, s.max),
    )
}

fn overhead_tables(s: &mut String, o: &Overhead, absolute: bool) {
    let what = if absolute {
        "ns/op and ratio to (a)"
    } else {
        "ratio to (a)"
    };
    let _ = writeln!(
        s,
        "### Syscall overhead ({what})\n\nPer run, the median operation (connect, exec) or \
         100-operation batch (open), so that preemptions by other work do not count; the plain \
         means are in the JSON.\n"
    );
    let _ = writeln!(s, "| operation | {} |", LABELS.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(LABELS.len()));
    for op in OPS {
        let base = samples(o, CONFIGS[0], op);
        let cells: Vec<String> = CONFIGS
            .iter()
            .enumerate()
            .map(|(i, config)| {
                let ns = samples(o, config, op);
                let ratio = ratio_cell(Summary::of(&ratios(ns, base)));
                match (absolute, i) {
                    (true, 0) => ns_cell(Summary::of(ns)),
                    (true, _) => format!("{}<br>{ratio}", ns_cell(Summary::of(ns))),
                    (false, 0) => "×1".into(),
                    (false, _) => ratio,
                }
            })
            .collect();
        let name = match op {
            "open" => "open + close",
            "connect" => "TCP connect + close",
            _ => "fork + exec + wait",
        };
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    }
    let records = |config: &str| {
        o.log_records.get(config).map_or_else(
            || "n/a".into(),
            |v| {
                let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                Summary::of(&v).map_or_else(|| "n/a".into(), |s| thousands(s.median))
            },
        )
    };
    let _ = writeln!(
        s,
        "\nLog records written per run: (c) {}, (d) {} (the instance's start and exit only: \
         `log_allowed = false` is honoured).\n",
        records("agent_log"),
        records("agent_nolog")
    );
    parts_table(s, o, absolute);
    if let Some(iters) = &o.iterations {
        let _ = writeln!(
            s,
            "Loop lengths: open {}, connect {}, exec {} per run.\n",
            thousands(iters.open as f64),
            thousands(iters.connect as f64),
            thousands(iters.exec as f64)
        );
    }
    // Under emulation every exec "stalls" past 100 ms: only failures are worth listing there.
    let notes: Vec<&String> = o
        .failures
        .iter()
        .filter(|f| absolute || f.contains("failed"))
        .collect();
    for f in &notes {
        let _ = writeln!(s, "- {f}");
    }
    if !notes.is_empty() {
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "### Connect as an agent by number of connect rules (one matches)\n\n\
         | connect rules | log on | log off |\n|---|---|---|"
    );
    let base = samples(o, CONFIGS[0], "connect");
    let cell = |series: &std::collections::BTreeMap<usize, Vec<f64>>, rules: usize| {
        let ns = series.get(&rules).map_or(&[][..], Vec::as_slice);
        let ratio = ratio_cell(Summary::of(&ratios(ns, base)));
        if absolute {
            format!("{}<br>{ratio}", ns_cell(Summary::of(ns)))
        } else {
            ratio
        }
    };
    for rules in RULE_COUNTS {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            thousands(rules as f64),
            cell(&o.connect_by_rules, rules),
            cell(&o.connect_by_rules_nolog, rules)
        );
    }
    if absolute && let Some(a) = Summary::of(&o.apply_10k_ms) {
        let _ = writeln!(
            s,
            "\n`policy apply` of the 10,000-rule policy: {:.0} ms ({:.0}–{:.0}).",
            a.median, a.min, a.max
        );
    }
    s.push('\n');
}

/// Each part alone: ratio of a configuration to its baseline in the same repetition.
fn parts_table(s: &mut String, o: &Overhead, absolute: bool) {
    let _ = writeln!(
        s,
        "#### Each part alone (ratio to its own baseline, same repetition)\n\n\
         | what | open + close | TCP connect + close | fork + exec + wait |\n|---|---|---|---|"
    );
    for p in PARTS {
        let cells: Vec<String> = OPS
            .iter()
            .map(|op| {
                let ns = samples(o, p.config, op);
                let ratio = ratio_cell(Summary::of(&ratios(ns, samples(o, p.baseline, op))));
                if absolute {
                    format!("{}<br>{ratio}", ns_cell(Summary::of(ns)))
                } else {
                    ratio
                }
            })
            .collect();
        let _ = writeln!(s, "| {} | {} |", p.label, cells.join(" | "));
    }
    let found: Vec<String> = o
        .audit_found_enabled
        .iter()
        .map(|e| e.map_or_else(|| "no audit".to_owned(), |e| e.to_string()))
        .collect();
    let _ = writeln!(
        s,
        "\nAudit `enabled` as found before each repetition's daemon: {} (when it was already \
         on, the daemon changes nothing and the audit rows compare equal runs).\n",
        found.join(", ")
    );
}

fn runs_summary(runs: &[super::events::Run]) -> Value {
    let f = |get: fn(&super::events::Run) -> f64| {
        Summary::of(&runs.iter().map(get).collect::<Vec<_>>())
    };
    json!({
        "instances": runs.first().map(|r| r.instances),
        "offered_per_s": f(|r| r.offered_per_s),
        "budget_ceiling_per_s": f(super::events::Run::budget_ceiling_per_s),
        "logged_per_s": f(|r| r.logged_per_s),
        "ingest_capacity_per_s": f(|r| r.ingest_capacity_per_s),
        "lost_fraction": f(|r| r.lost as f64 / r.sends.max(1) as f64),
        "lost": f(|r| r.lost as f64),
        "over_budget": f(|r| r.over_budget as f64),
        "unaccounted": f(|r| r.unaccounted as f64),
    })
}

fn events_summary(e: &Events) -> Value {
    let w = |sealed: bool| {
        Summary::of(
            &e.writer
                .iter()
                .filter(|w| w.sealed == sealed)
                .map(|w| w.records_per_s)
                .collect::<Vec<_>>(),
        )
    };
    let mut v = runs_summary(&e.runs);
    if let Some(obj) = v.as_object_mut() {
        obj.extend(
            json!({
                "one_instance": runs_summary(&e.one_instance),
                "connects": runs_summary(&e.connect_runs),
                "probes": runs_summary(&e.probe_runs),
                "daemon_hwm_kib": e.daemon_hwm_kib,
                "daemon_rss_idle_kib": e.daemon_rss_idle_kib,
                "daemon_idle": e.idle,
                "daemon_after_load": e.after_load,
                "writer_records_per_s": w(false),
                "writer_sealed_records_per_s": w(true),
                "hook_ns_per_run": Summary::of(
                    &e.hook_runs.iter().map(|c| c.ns_per_run).collect::<Vec<_>>()
                ),
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
    }
    v
}

fn rate_cell(s: Option<Summary>) -> String {
    s.map_or_else(
        || "n/a".into(),
        |s| {
            format!(
                "{} ({}–{})",
                thousands(s.median),
                thousands(s.min),
                thousands(s.max)
            )
        },
    )
}

/// Like [`rate_cell`], for figures that may be negative.
fn percent_cell(s: Option<Summary>) -> String {
    s.map_or_else(
        || "n/a".into(),
        |s| {
            format!(
                "{:.1} % ({:.1}–{:.1})",
                s.median * 100.0,
                s.min * 100.0,
                s.max * 100.0
            )
        },
    )
}

fn signed_cell(s: Option<Summary>) -> String {
    s.map_or_else(
        || "n/a".into(),
        |s| {
            format!(
                "{} ({} to {})",
                thousands(s.median),
                thousands(s.min),
                thousands(s.max)
            )
        },
    )
}

/// A row of the events table: its label, the figure of a run, how a summary of it is shown.
type Row = (
    &'static str,
    fn(&super::events::Run) -> f64,
    fn(Option<Summary>) -> String,
);

fn events_table(s: &mut String, e: &Events) {
    let both = |get: fn(&super::events::Run) -> f64, cell: fn(Option<Summary>) -> String| {
        let of = |runs: &[super::events::Run]| {
            cell(Summary::of(&runs.iter().map(get).collect::<Vec<_>>()))
        };
        format!(
            "{} | {} | {} | {}",
            of(&e.runs),
            of(&e.connect_runs),
            of(&e.probe_runs),
            of(&e.one_instance)
        )
    };
    let sends = e.runs.first().map_or(0, |r| r.sends);
    let instances = e.runs.first().map_or(0, |r| r.instances);
    let _ = writeln!(
        s,
        "### Event pipeline\n\n{} UDP sends per run, every send allowed and logged: from {} \
         agent instances of one process each (each under its instance event budget of 20,000 \
         events/s in bursts of as many: the pipeline's capacity, up to what the budgets let \
         through); the same with UDP connects instead of sends (an event each, judged by the \
         connect hook, but no packet: the senders' cost drops so that two cores offer more); \
         the same with probes: {} empty datagrams flagged `MSG_PROBE` to one `sendmmsg` (each \
         judged by the sendmsg hook and logged like any send, but routed without building a \
         packet, one syscall per batch: the most two cores can offer); \
         and from one instance of {} processes (over its budget: the budget at work). Every \
         instance is started first and all are released at once: the rates count from the \
         release.\n",
        thousands(sends as f64),
        instances,
        super::events::PROBE_BATCH,
        e.procs
    );
    let _ = writeln!(
        s,
        "| measure | {instances} instances, sends | {instances} instances, connects | {instances} instances, probes | 1 instance |\n|---|---|---|---|---|"
    );
    let rows: [Row; 9] = [
        (
            "sends/s offered (from releasing every instance at once to the last sender's end)",
            |r| r.offered_per_s,
            rate_cell,
        ),
        (
            "events/s the instance event budgets let through over that window (bursts included)",
            super::events::Run::budget_ceiling_per_s,
            rate_cell,
        ),
        (
            "events/s into the log (until the log stopped growing)",
            |r| r.logged_per_s,
            rate_cell,
        ),
        (
            "records/s the ingest thread carries per second of its own CPU time (its capacity on one CPU)",
            |r| r.ingest_capacity_per_s,
            rate_cell,
        ),
        ("events logged per run", |r| r.logged as f64, rate_cell),
        (
            "events lost per run (`lost_events`)",
            |r| r.lost as f64,
            rate_cell,
        ),
        (
            "share of the sends lost",
            |r| r.lost as f64 / r.sends.max(1) as f64,
            percent_cell,
        ),
        (
            "events over the instance's event budget per run (logged as `lost-events` gaps)",
            |r| r.over_budget as f64,
            rate_cell,
        ),
        (
            "events unaccounted per run (sends − logged − lost − over budget)",
            |r| r.unaccounted as f64,
            signed_cell,
        ),
    ];
    for (what, get, cell) in rows {
        let _ = writeln!(s, "| {what} | {} |", both(get, cell));
    }
    let _ = writeln!(s, "\n| daemon memory | value |\n|---|---|");
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (what, r) in [
        ("idle, start-up settled", &e.idle),
        ("after the load, settled", &e.after_load),
    ] {
        let _ = writeln!(
            s,
            "| daemon RSS {what}: anonymous / file-backed | {:.1} MiB / {:.1} MiB |",
            mib(r.anon_kib),
            mib(r.file_kib)
        );
    }
    let _ = writeln!(
        s,
        "| daemon peak RSS (VmHWM, start-up included) | {:.1} MiB |",
        mib(e.daemon_hwm_kib)
    );
    let w = |sealed: bool| {
        rate_cell(Summary::of(
            &e.writer
                .iter()
                .filter(|w| w.sealed == sealed)
                .map(|w| w.records_per_s)
                .collect::<Vec<_>>(),
        ))
    };
    let n = e.writer.first().map_or(0, |w| w.records);
    let _ = writeln!(
        s,
        "| log writer alone, records/s ({} synthetic records) | {} |",
        thousands(n as f64),
        w(false)
    );
    let _ = writeln!(
        s,
        "| log writer alone, sealed log, records/s | {} |",
        w(true)
    );
    let per_run = |c: &super::events::HookCost| c.ns_per_run;
    let _ = writeln!(
        s,
        "| network hook run, the probe load with `kernel.bpf_stats_enabled` (judging, budget, event), ns | {} |\n",
        rate_cell(Summary::of(
            &e.hook_runs.iter().map(per_run).collect::<Vec<_>>()
        ))
    );
}

fn freeze_summary(f: &Freeze) -> Value {
    let by: serde_json::Map<String, Value> = f
        .by_procs
        .iter()
        .map(|(n, fz)| {
            (
                n.to_string(),
                json!({
                    "request_to_reply_ms": Summary::of(&fz.request_to_reply_ms),
                    "request_to_frozen_ms": Summary::of(&fz.request_to_frozen_ms),
                    "daemon_ms": Summary::of(&fz.daemon_ms),
                }),
            )
        })
        .collect();
    json!({
        "freeze_by_procs": by,
        "apply_10k_ms": Summary::of(&f.apply_10k_ms),
        "breach_to_frozen_ms": Summary::of(&f.breach_to_frozen_ms),
    })
}

fn ms_cells(v: &[f64]) -> String {
    Summary::of(v).map_or_else(
        || "n/a | n/a".into(),
        |s| format!("{:.2} ms | {:.2} ms", s.median, s.p99),
    )
}

fn freeze_table(s: &mut String, f: &Freeze) {
    let reps = f.apply_10k_ms.len();
    let _ = writeln!(
        s,
        "### Kill switch and policy latency ({reps} repetitions each; p99 of so few samples is \
         their maximum)\n"
    );
    let _ = writeln!(
        s,
        "| what | median | p99 | the daemon's own figure (median) |\n|---|---|---|---|"
    );
    for (n, fz) in &f.by_procs {
        let daemon = Summary::of(&fz.daemon_ms)
            .map_or_else(|| "n/a".into(), |d| format!("{:.0} ms", d.median));
        let procs = format!(
            "instance of {} process{}",
            thousands(*n as f64),
            if *n == 1 { "" } else { "es" }
        );
        let _ = writeln!(
            s,
            "| `freeze` request → the CLI's reply, {procs} | {} | {daemon} |",
            ms_cells(&fz.request_to_reply_ms)
        );
        let _ = writeln!(
            s,
            "| `freeze` request → `frozen 1` seen in `cgroup.events`, {procs} | {} | |",
            ms_cells(&fz.request_to_frozen_ms)
        );
    }
    let _ = writeln!(
        s,
        "| `policy apply` of 10,000 rules (request → reply) | {} | |",
        ms_cells(&f.apply_10k_ms)
    );
    let _ = writeln!(
        s,
        "| budget breach (`on_exceed = \"freeze\"`) → `frozen 1` | {} | |\n",
        ms_cells(&f.breach_to_frozen_ms)
    );
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_digits() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(0.0), "0");
    }
}
