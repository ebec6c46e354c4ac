//! Where the figures come from: CPU, cores, memory, kernel, and the backends agentguard chose.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::daemon::Env;
use crate::cmd;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// `agentguard doctor --json`'s `backends`.
    pub backends: Value,
    /// /proc/loadavg's 1, 5 and 15 minute averages at the start: other work on the machine
    /// disturbs every figure, and this says how much there was.
    #[serde(default)]
    pub load_at_start: String,
}

impl Machine {
    pub fn probe(env: &Env) -> Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = field(&meminfo, "MemTotal")
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let doctor = cmd::stdout(&mut env.ag(&["doctor", "--json"]))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .unwrap_or_default();
        Ok(Self {
            cpu_model: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            backends: doctor["backends"].clone(),
            load_at_start: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    /// `network=cgroup-sock-addr exec=tp-btf-kill file=landlock`.
    pub fn backend_line(&self) -> String {
        ["network", "exec", "file"]
            .iter()
            .filter_map(|d| Some(format!("{d}={}", self.backends[d].as_str()?)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
