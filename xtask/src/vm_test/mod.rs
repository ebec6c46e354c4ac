//! `cargo xtask vm-test`: run the privileged integration tests in Debian guests with BPF LSM
//! active (6.12 and the stock 6.1 side by side, or the one `--kernel` names), under QEMU (TCG)
//! via virtme-ng, sharing the host root read-only over 9p.
//!
//! Layout under `target/vm/`: `kernel/<release>/` (the unpacked kernel packages, cached) and
//! `run-<UTC timestamp>/` per guest run: `guest.sh`, `vng.log` (console), `kernel`, `lsm`,
//! `<test>.log`, `<test>.rc` and the `done` marker.

mod host_deps;
mod kernel;
mod launch;
mod results;
mod script;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

pub use kernel::Series;

use crate::integration::{self, TestExe};
use crate::{build_ebpf, cmd, workspace};

const DEFAULT_TIMEOUT_SECS: u64 = 60 * 60;
/// One virtual CPU per guest: the tests run one at a time and took as long on one as on two
/// (kill_switch 174 s against 165 s), so two guests side by side on a 2-core host finish in
/// about the time of the longer one. One vCPU also closes the window of the guest panics seen
/// under multi-threaded TCG (an `int3` in a BPF LSM hook's entry while it was being patched
/// from the other vCPU), and with `preempt=full` it puts every task on the same CPU, where
/// preemption inside a BPF program shows.
const DEFAULT_CPUS: u32 = 1;

#[derive(clap::Args)]
pub struct Args {
    /// The guest kernel series; every tested series, side by side, when not given.
    #[arg(long, value_enum)]
    pub kernel: Option<Series>,
    /// Kill the VM if it runs longer than this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout_secs: u64,
    /// Run these executables in the guest instead of building agentguard-tests (skips all
    /// builds; each gets the same environment and arguments as a test executable).
    #[arg(long, value_name = "PATH")]
    test_exe: Vec<PathBuf>,
    /// Run every test on every kernel (by default each guest runs its share; see
    /// `kernel::placement`).
    #[arg(long)]
    full: bool,
    /// Virtual CPUs of the guest.
    #[arg(long, default_value_t = DEFAULT_CPUS)]
    cpus: u32,
    /// Extra arguments for every test executable, after `--test-threads=1`.
    #[arg(last = true)]
    extra: Vec<String>,
}

impl Args {
    /// What `cargo xtask test` runs: the agentguard-tests executables in every series' guest
    /// (each its share), no extra arguments.
    pub fn every_series() -> Self {
        Self {
            kernel: None,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            test_exe: Vec::new(),
            full: false,
            cpus: DEFAULT_CPUS,
            extra: Vec::new(),
        }
    }
}

/// Runs the tests in each selected guest, the guests side by side; fails if any guest failed
/// (after running them all).
pub fn run(args: &Args) -> Result<()> {
    let series: Vec<Series> = args.kernel.map_or(Series::ALL.to_vec(), |s| vec![s]);
    // Everything that builds, installs or downloads runs first, one thing at a time (cargo and
    // apt hold locks of their own); then only the guests run concurrently.
    let built = if args.test_exe.is_empty() {
        build_ebpf::build_release()?;
        // The upgrade test loads it as the next build.
        build_ebpf::build_variant()?;
        integration::build_agentguard()?;
        Some(integration::build_test_executables()?)
    } else {
        None
    };
    cmd::step("host tools for the VM", host_deps::ensure_apt_tools)?;
    let vng = cmd::step("virtme-ng", host_deps::ensure_vng)?;
    let mut plans = Vec::new();
    for s in series {
        let kernel = cmd::step(&format!("guest kernel {}", s.name()), || kernel::ensure(s))?;
        let tests = match &built {
            Some(all) if args.full => all.clone(),
            Some(all) => placed_in(s, all)?,
            None => args
                .test_exe
                .iter()
                .map(|p| given_exe(p))
                .collect::<Result<_>>()?,
        };
        plans.push((s, kernel, tests));
    }
    let outcomes: Vec<(Series, Result<()>, Duration)> = std::thread::scope(|scope| {
        let guests: Vec<_> = plans
            .iter()
            .map(|(s, kernel, tests)| {
                let guest = Guest {
                    args,
                    vng: &vng,
                    kernel,
                    label: s.name(),
                };
                scope.spawn(move || {
                    let start = std::time::Instant::now();
                    let result = run_series(&guest, tests);
                    (*s, result, start.elapsed())
                })
            })
            .collect();
        guests
            .into_iter()
            .map(|g| {
                g.join().unwrap_or_else(|_| {
                    std::panic::resume_unwind(Box::new("a guest thread panicked"))
                })
            })
            .collect()
    });
    let mut failed = Vec::new();
    for (s, result, took) in outcomes {
        eprintln!(
            "    kernel {} guest: {} in {}",
            s.name(),
            if result.is_ok() { "passed" } else { "FAILED" },
            cmd::seconds(took)
        );
        if let Err(e) = result {
            eprintln!("error: kernel {}: {e:#}", s.name());
            failed.push(s.name());
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("the VM tests failed on kernel {}", failed.join(", "));
    }
    Ok(())
}

/// Runs `tests` in a guest, and those a guest kernel panic interrupted once more in a fresh one.
fn run_series(guest: &Guest<'_>, tests: &[TestExe]) -> Result<()> {
    let (results, report) = guest.run(tests)?;
    let Err(stopped) = report else {
        let report = report?;
        report.print(&results);
        return report.check();
    };
    // A guest kernel that panics under TCG is the emulator's or the guest kernel's failure,
    // not a test's: seen twice as an `int3` Oops in a BPF LSM hook's patched entry, while BPF
    // trampolines were attached or detached during a syscall on the other vCPU (cross-modifying
    // code under multi-threaded TCG). The executables that did not finish get one fresh
    // guest; any that finished must have passed, and a second panic fails the run.
    let Some(panic) = launch::guest_panic(&results) else {
        return Err(stopped);
    };
    let finished = results::read_outcomes(&results, tests);
    if let Some((name, rc)) = finished.iter().find(|(_, rc)| rc.is_some_and(|rc| rc != 0)) {
        bail!("{name} failed (exit {rc:?}) before the guest kernel panicked ({panic})");
    }
    let rest: Vec<TestExe> = tests
        .iter()
        .filter(|t| finished.iter().any(|(n, rc)| n == &t.name && rc.is_none()))
        .cloned()
        .collect();
    eprintln!(
        "warning: the guest kernel panicked ({panic}); its console is in {}. The {} test \
         executable(s) that did not finish run once more in a fresh guest: {}",
        results.join("vng.log").display(),
        rest.len(),
        rest.iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (again, report) = guest.run(&rest)?;
    let report = report.with_context(|| {
        format!("the fresh guest after a kernel panic ({panic}) did not finish either")
    })?;
    report.print(&again);
    report.check()
}

/// What booting the guest needs besides the tests.
struct Guest<'a> {
    args: &'a Args,
    vng: &'a Path,
    kernel: &'a kernel::Kernel,
    /// Names the guest in the lines it echoes (guests run side by side).
    label: &'a str,
}

impl Guest<'_> {
    /// Boots a guest for `tests` in a new results dir: the dir, and the guest's report (`Err`
    /// when it did not boot, stopped before the end, or has no BPF LSM).
    fn run(&self, tests: &[TestExe]) -> Result<(PathBuf, Result<results::Report>)> {
        let results = new_results_dir()?;
        let guest_script = results.join("guest.sh");
        let plan = script::Plan {
            results: &results,
            tests,
            agentguard_bin: &workspace::agentguard_bin(),
            ci: std::env::var("CI").ok(),
            extra_args: &self.args.extra,
        };
        std::fs::write(&guest_script, script::render(&plan))
            .with_context(|| format!("cannot write {}", guest_script.display()))?;
        let what = format!(
            "VM (kernel {}): {} test executable(s), results in {}",
            self.kernel.release,
            tests.len(),
            results.display()
        );
        let scratch = workspace::target_dir().join("tmp");
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        let booted = cmd::step(&what, || {
            launch::boot(&launch::Boot {
                vng: self.vng,
                kernel: self.kernel,
                results: &results,
                script: &guest_script,
                scratch: &scratch,
                timeout: Duration::from_secs(self.args.timeout_secs),
                cpus: self.args.cpus,
                label: self.label,
            })
        });
        let report = match booted {
            Ok(()) => results::read(&results, tests),
            Err(e) => {
                // Show what the guest got through before it was stopped.
                let _ = results::read(&results, tests);
                Err(e)
            }
        };
        Ok((results, report))
    }
}

/// The targets `series`' guest runs ([`kernel::placement`]); a target no list places is an
/// error, so a new or renamed test file cannot silently run in no guest.
fn placed_in(series: Series, all: &[TestExe]) -> Result<Vec<TestExe>> {
    let mut picked = Vec::new();
    let mut elsewhere = Vec::new();
    for exe in all {
        let Some(placement) = kernel::placement(&exe.name) else {
            bail!(
                "{} is not placed in a guest: add it to one of the lists in xtask/src/vm_test/kernel.rs",
                exe.name
            );
        };
        if series.runs(placement) {
            picked.push(exe.clone());
        } else {
            elsewhere.push(exe.name.as_str());
        }
    }
    eprintln!(
        "    kernel {} runs {} of {} targets; the others run on the host or in the other guest: {} (`--full` runs everything)",
        series.name(),
        picked.len(),
        all.len(),
        elsewhere.join(", ")
    );
    Ok(picked)
}

fn given_exe(path: &Path) -> Result<TestExe> {
    let path = std::path::absolute(path)
        .with_context(|| format!("cannot make {} absolute", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} names no file", path.display()))?;
    Ok(TestExe {
        name,
        path,
        cwd: workspace::root().to_path_buf(),
    })
}

/// A new, empty `target/vm/run-<YYYYMMDD-HHMMSS>[-N]`.
fn new_results_dir() -> Result<PathBuf> {
    let stamp = utc_stamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    );
    std::fs::create_dir_all(workspace::vm_dir())
        .with_context(|| format!("cannot create {}", workspace::vm_dir().display()))?;
    let mut n = 0;
    loop {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        let dir = workspace::vm_dir().join(format!("run-{stamp}{suffix}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
}

/// `YYYYMMDD-HHMMSS` (UTC) for a time since the epoch.
fn utc_stamp(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}{month:02}{day:02}-{h:02}{m:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use super::utc_stamp;
    use std::time::Duration;

    #[test]
    fn stamps_utc() {
        assert_eq!(utc_stamp(Duration::ZERO), "19700101-000000");
        assert_eq!(
            utc_stamp(Duration::from_secs(1_795_640_400)),
            "20261125-210000"
        );
        assert_eq!(
            utc_stamp(Duration::from_secs(951_782_400)),
            "20000229-000000"
        );
    }
}
