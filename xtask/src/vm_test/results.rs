//! Reading what the guest left in the results dir, and judging the run by it (never by vng's
//! exit status).

use std::path::Path;

use anyhow::{Result, bail};

use super::launch;
use crate::integration::TestExe;

/// What a guest that booted reported.
pub struct Report {
    pub kernel: String,
    pub lsm: String,
    /// (test name, exit code); `None` when the test did not finish.
    pub outcomes: Vec<(String, Option<i32>)>,
}

/// Reads the results dir; fails if the guest did not boot, did not finish, or has no BPF LSM.
pub fn read(results: &Path, tests: &[TestExe]) -> Result<Report> {
    let read = |name: &str| std::fs::read_to_string(results.join(name)).ok();
    let lsm = read("lsm").map(|s| s.trim().to_owned()).unwrap_or_default();
    if lsm.is_empty() {
        bail!(
            "the VM did not boot or did not run the guest script (no {}); last console lines:\n{}",
            results.join("lsm").display(),
            launch::console_tail(results, 40)
        );
    }
    if !lsm.split(',').any(|m| m == "bpf") {
        bail!("the guest booted but BPF LSM is not active (lsm: {lsm})");
    }
    let kernel = read("kernel")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let outcomes = read_outcomes(results, tests);
    let report = Report {
        kernel,
        lsm,
        outcomes,
    };
    if read("done").is_none() {
        report.print(results);
        bail!(
            "the VM stopped before the guest script finished (no done marker); last console lines:\n{}",
            launch::console_tail(results, 40)
        );
    }
    Ok(report)
}

/// (test name, exit code) per test; `None` when the test did not finish.
pub fn read_outcomes(results: &Path, tests: &[TestExe]) -> Vec<(String, Option<i32>)> {
    tests
        .iter()
        .map(|t| {
            let rc = std::fs::read_to_string(results.join(format!("{}.rc", t.name)))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            (t.name.clone(), rc)
        })
        .collect()
}

impl Report {
    /// Prints one line per test with its exit code and log file, in one piece (guests finish
    /// side by side).
    pub fn print(&self, results: &Path) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "VM (BPF LSM backend, kernel {}), active LSMs: {}",
            self.kernel, self.lsm
        );
        for (name, rc) in &self.outcomes {
            let verdict = match rc {
                Some(0) => "ok".to_owned(),
                Some(rc) => format!("FAILED (exit {rc})"),
                None => "DID NOT FINISH".to_owned(),
            };
            let log = results.join(format!("{name}.log"));
            let _ = writeln!(out, "  {name:<40} {verdict:<16} {}", log.display());
        }
    }

    /// Fails unless at least one test ran and every test exited 0.
    pub fn check(&self) -> Result<()> {
        if self.outcomes.is_empty() {
            bail!("no test executable ran in the VM");
        }
        let failed: Vec<&str> = self
            .outcomes
            .iter()
            .filter(|(_, rc)| *rc != Some(0))
            .map(|(name, _)| name.as_str())
            .collect();
        if !failed.is_empty() {
            bail!(
                "in the VM (kernel {}), these test executables failed: {}",
                self.kernel,
                failed.join(", ")
            );
        }
        Ok(())
    }
}
