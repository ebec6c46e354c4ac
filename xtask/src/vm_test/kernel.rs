//! The guest kernels: the newest Debian 12 package of each tested series (the generic flavour,
//! which has 9p): `linux-image-6.12.*+deb12-amd64-unsigned` and the stock
//! `linux-image-6.1.0-*-amd64-unsigned`, unpacked with their modules into
//! `target/vm/kernel/<release>/` and kept there (the newest of each series).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::host_deps;
use crate::{cmd, workspace};

const MARKER: &str = ".complete";

/// A kernel series the tests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Series {
    /// Debian 12's stock kernel, the oldest agentguard supports.
    #[value(name = "6.1")]
    V6_1,
    /// Debian 12's newer kernel (bookworm point releases and security updates).
    #[value(name = "6.12")]
    V6_12,
}

/// Targets whose outcome depends on the kernel (BPF LSM and cgroup hooks, confinement): every
/// series runs them.
const KERNEL_DEPENDENT: &[&str] = &[
    "confinement",
    "exec_files",
    "lsm_confinement",
    "map_batch",
    "network",
    "policy_suggest",
    "preemption",
    "self_defence",
    "sub_agents",
    "unix_escape",
    "unix_sockets",
    "upgrade",
];

/// Targets whose outcome depends on the backend (what the BPF LSM programs enforce and report)
/// but not on the kernel series: one guest runs each, split so that the two guests side by
/// side take about as long.
const BACKEND_ON_6_12: &[&str] = &["kill_switch", "launcher", "real_agents"];
const BACKEND_ON_6_1: &[&str] = &["full_maps", "policy_apply", "refusals_visible"];

/// Targets that test the daemon's own logic (the control protocol, the log, DNS, the tool
/// gateway and its credentials, packaging, the event budgets of the network hooks, which are
/// the cgroup ones under either backend), the same under either backend: the host stage runs
/// them; no guest does (under emulation each guest has the time for its own share only, and
/// the budget tests' floods, which refill by the second, log tens of thousands of records
/// there).
const BACKEND_INDEPENDENT: &[&str] = &[
    "audit_log",
    "credentials",
    "dns",
    "event_budget",
    "gateway",
    "hostile_clients",
    "maintainer_scripts",
    "service",
];

/// Which guests run a test target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Every series' guest.
    EverySeries,
    /// This series' guest only.
    Only(Series),
    /// No guest (the host stage runs it).
    HostOnly,
}

/// Where `cargo xtask test` runs the target named `name` (`test-network`, `lib-...`,
/// `bin-...`), or `None` for an integration test no list names: a new test file must be placed
/// before the VM stage runs, so that it cannot silently run in no guest.
pub fn placement(name: &str) -> Option<Placement> {
    if name.starts_with("bin-") {
        // The package's binaries (the probe, the bench) have no tests of their own.
        return Some(Placement::HostOnly);
    }
    if name.starts_with("lib-") {
        return Some(Placement::Only(Series::V6_12));
    }
    let target = name.strip_prefix("test-")?;
    let listed = |list: &[&str]| list.contains(&target);
    if listed(KERNEL_DEPENDENT) {
        Some(Placement::EverySeries)
    } else if listed(BACKEND_ON_6_12) {
        Some(Placement::Only(Series::V6_12))
    } else if listed(BACKEND_ON_6_1) {
        Some(Placement::Only(Series::V6_1))
    } else if listed(BACKEND_INDEPENDENT) {
        Some(Placement::HostOnly)
    } else {
        None
    }
}

impl Series {
    /// Every series, in the order `cargo xtask test` runs them.
    pub const ALL: [Series; 2] = [Series::V6_12, Series::V6_1];

    pub fn name(self) -> &'static str {
        match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        }
    }

    /// Whether this series' guest runs a target placed so.
    pub fn runs(self, placement: Placement) -> bool {
        match placement {
            Placement::EverySeries => true,
            Placement::Only(series) => series == self,
            Placement::HostOnly => false,
        }
    }

    /// The apt-cache search pattern for this series' generic image packages.
    fn pattern(self) -> &'static str {
        match self {
            Self::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
            Self::V6_12 => r"^linux-image-6\.12\..*-amd64-unsigned$",
        }
    }

    /// `uname -r` for a package of this series, or `None` for other flavours and names:
    /// `linux-image-6.12.107+deb12-amd64-unsigned` -> `6.12.107+deb12-amd64`,
    /// `linux-image-6.1.0-56-amd64-unsigned` -> `6.1.0-56-amd64`.
    fn release_of(self, package: &str) -> Option<String> {
        let base = package
            .strip_prefix("linux-image-")?
            .strip_suffix("-amd64-unsigned")?;
        let ok = match self {
            Self::V6_12 => base.starts_with("6.12.") && !base.contains('-'),
            Self::V6_1 => base
                .strip_prefix("6.1.0-")
                .is_some_and(|abi| !abi.is_empty() && abi.bytes().all(|b| b.is_ascii_digit())),
        };
        ok.then(|| format!("{base}-amd64"))
    }

    /// Whether a cached kernel release belongs to this series.
    fn owns(self, release: &str) -> bool {
        self.release_of(&format!("linux-image-{release}-unsigned"))
            .is_some()
    }
}

/// An unpacked kernel package.
pub struct Kernel {
    /// `uname -r` of the guest, e.g. `6.12.107+deb12-amd64`.
    pub release: String,
    /// The directory the package was unpacked into (holds `boot/` and `lib/modules/`).
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
}

/// Returns the cached kernel of `series`, downloading and unpacking the newest package first if
/// needed.
pub fn ensure(series: Series) -> Result<Kernel> {
    let Some((package, release)) = resolve(series)? else {
        let kernel = newest_cached(series).with_context(|| {
            format!(
                "apt-cache finds no {} package and none is cached",
                series.pattern()
            )
        })?;
        eprintln!(
            "    apt offers no {} kernel; using the cached {}",
            series.name(),
            kernel.release
        );
        return Ok(kernel);
    };
    let kernel = Kernel {
        dir: cache_dir().join(&release),
        release,
    };
    if kernel.dir.join(MARKER).exists() {
        eprintln!(
            "    kernel {}: cached in {}",
            kernel.release,
            kernel.dir.display()
        );
        return Ok(kernel);
    }
    cmd::step(&format!("download and unpack {package}"), || {
        let Err(first) = download_and_unpack(&package, &kernel) else {
            return Ok(());
        };
        eprintln!("    {first:#}\n    download failed; updating apt's lists and retrying");
        host_deps::apt_get_update()?;
        download_and_unpack(&package, &kernel)
    })?;
    prune_cache(series, &kernel.release);
    Ok(kernel)
}

/// The newest package of `series` apt knows, after an `apt-get update` if it knows none.
fn resolve(series: Series) -> Result<Option<(String, String)>> {
    if let Some(found) = newest_package(series)? {
        return Ok(Some(found));
    }
    eprintln!("    apt knows no {}; updating its lists", series.pattern());
    if let Err(e) = host_deps::apt_get_update() {
        eprintln!("    {e:#}");
    }
    newest_package(series)
}

/// The newest completely unpacked kernel of `series` in the cache.
fn newest_cached(series: Series) -> Option<Kernel> {
    std::fs::read_dir(cache_dir())
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| dir.join(MARKER).exists())
        .filter_map(|dir| {
            let release = dir.file_name()?.to_string_lossy().into_owned();
            Some(Kernel { release, dir })
        })
        .filter(|kernel| series.owns(&kernel.release))
        .max_by_key(|kernel| version_key(&kernel.release))
}

/// Removes every cached kernel of `series` (and leftover of an interrupted unpack of one) but
/// `keep` (best effort); other series' kernels stay.
fn prune_cache(series: Series, keep: &str) {
    let Ok(entries) = std::fs::read_dir(cache_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let release = name
            .strip_suffix(".download")
            .or_else(|| name.strip_suffix(".partial"))
            .unwrap_or(&name);
        if name != keep && series.owns(release) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `target/vm/kernel`.
fn cache_dir() -> PathBuf {
    workspace::vm_dir().join("kernel")
}

/// The newest generic unsigned image package of `series` apt knows, if any, with its kernel
/// release.
fn newest_package(series: Series) -> Result<Option<(String, String)>> {
    let listing =
        cmd::stdout(Command::new("apt-cache").args(["search", "--names-only", series.pattern()]))?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| Some((name.to_owned(), series.release_of(name)?)))
        .max_by_key(|(name, _)| version_key(name)))
}

/// The numbers in a package name, in order, for comparing versions.
fn version_key(package: &str) -> Vec<u64> {
    package
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn download_and_unpack(package: &str, kernel: &Kernel) -> Result<()> {
    let download = cache_dir().join(format!("{}.download", kernel.release));
    let partial = cache_dir().join(format!("{}.partial", kernel.release));
    for dir in [&download, &partial, &kernel.dir] {
        remove_dir_if_present(dir)?;
    }
    std::fs::create_dir_all(&download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    cmd::run_quiet(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&download),
    )?;
    let deb = find_deb(&download)?;
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
    let depmod = cmd::which("depmod").context("depmod (package kmod) is missing")?;
    cmd::run(
        Command::new(depmod)
            .arg("-b")
            .arg(&partial)
            .arg(&kernel.release),
    )?;
    let modules_dep = partial
        .join("lib/modules")
        .join(&kernel.release)
        .join("modules.dep");
    if !modules_dep.is_file() {
        bail!("depmod wrote no {}", modules_dep.display());
    }
    std::fs::rename(&partial, &kernel.dir).with_context(|| {
        format!(
            "cannot move {} to {}",
            partial.display(),
            kernel.dir.display()
        )
    })?;
    if !kernel.vmlinuz().is_file() {
        bail!("{package} has no {}", kernel.vmlinuz().display());
    }
    std::fs::write(kernel.dir.join(MARKER), package)
        .with_context(|| format!("cannot write the marker in {}", kernel.dir.display()))?;
    remove_dir_if_present(&download)
}

fn find_deb(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{
        BACKEND_INDEPENDENT, BACKEND_ON_6_1, BACKEND_ON_6_12, KERNEL_DEPENDENT, Series, placement,
        version_key,
    };

    #[test]
    fn generic_flavour_only() {
        let v612 = |p| Series::V6_12.release_of(p);
        let v61 = |p| Series::V6_1.release_of(p);
        assert_eq!(
            v612("linux-image-6.12.107+deb12-amd64-unsigned").as_deref(),
            Some("6.12.107+deb12-amd64")
        );
        assert_eq!(
            v612("linux-image-6.12.107+deb12-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(v612("linux-image-6.1.0-40-amd64-unsigned"), None);
        assert_eq!(
            v61("linux-image-6.1.0-56-amd64-unsigned").as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(v61("linux-image-6.1.0-56-cloud-amd64-unsigned"), None);
        assert_eq!(v61("linux-image-6.1.0-56-rt-amd64-unsigned"), None);
        assert_eq!(v61("linux-image-6.12.107+deb12-amd64-unsigned"), None);
    }

    #[test]
    fn cached_releases_belong_to_their_series() {
        assert!(Series::V6_1.owns("6.1.0-56-amd64"));
        assert!(!Series::V6_1.owns("6.12.117+deb12-amd64"));
        assert!(Series::V6_12.owns("6.12.117+deb12-amd64"));
        assert!(!Series::V6_12.owns("6.1.0-56-amd64"));
    }

    #[test]
    fn newest_61_abi_wins() {
        assert!(
            version_key("linux-image-6.1.0-56-amd64-unsigned")
                > version_key("linux-image-6.1.0-9-amd64-unsigned")
        );
    }

    #[test]
    fn newer_point_release_sorts_higher() {
        assert!(
            version_key("linux-image-6.12.107+deb12-amd64-unsigned")
                > version_key("linux-image-6.12.99+deb12-amd64-unsigned")
        );
    }

    #[test]
    fn every_integration_test_file_is_placed_once() {
        let lists = [
            KERNEL_DEPENDENT,
            BACKEND_ON_6_12,
            BACKEND_ON_6_1,
            BACKEND_INDEPENDENT,
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tests");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut files = 0;
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(target) = name.strip_suffix(".rs") else {
                continue;
            };
            files += 1;
            let lists_naming = lists.iter().filter(|l| l.contains(&target)).count();
            assert_eq!(
                lists_naming, 1,
                "tests/tests/{name} is in {lists_naming} lists"
            );
            assert!(placement(&format!("test-{target}")).is_some());
        }
        let listed: usize = lists.iter().map(|l| l.len()).sum();
        assert_eq!(
            listed, files,
            "a list names a test file that does not exist"
        );
        assert_eq!(placement("test-no-such-file"), None);
    }

    #[test]
    fn placements_pick_the_guests() {
        let on = |name: &str| Series::ALL.map(|s| placement(name).is_some_and(|p| s.runs(p)));
        // [6.12, 6.1]
        assert_eq!(on("test-network"), [true, true]);
        assert_eq!(on("test-policy_suggest"), [true, true]);
        assert_eq!(on("test-launcher"), [true, false]);
        assert_eq!(on("test-policy_apply"), [false, true]);
        assert_eq!(on("test-gateway"), [false, false]);
        assert_eq!(on("bin-probe"), [false, false]);
        assert_eq!(on("lib-agentguard_tests"), [true, false]);
    }
}
