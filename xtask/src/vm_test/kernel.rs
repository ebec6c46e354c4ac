//! The guest kernel: the newest Debian `linux-image-6.12.*-amd64-unsigned` (the generic flavour,
//! which has 9p), unpacked with its modules into `target/vm/kernel/<release>/` and kept there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::host_deps;
use crate::{cmd, workspace};

const MARKER: &str = ".complete";

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

/// Returns the cached kernel, downloading and unpacking the newest package first if needed.
pub fn ensure() -> Result<Kernel> {
    let Some((package, release)) = resolve()? else {
        let kernel = newest_cached().context(
            "apt-cache finds no linux-image-6.12.*-amd64-unsigned package and none is cached",
        )?;
        eprintln!(
            "    apt offers no 6.12 kernel; using the cached {}",
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
    prune_cache(&kernel.release);
    Ok(kernel)
}

/// The newest package apt knows, after an `apt-get update` if it knows none.
fn resolve() -> Result<Option<(String, String)>> {
    if let Some(found) = newest_package()? {
        return Ok(Some(found));
    }
    eprintln!("    apt knows no linux-image-6.12.*-amd64-unsigned; updating its lists");
    if let Err(e) = host_deps::apt_get_update() {
        eprintln!("    {e:#}");
    }
    newest_package()
}

/// The newest completely unpacked kernel in the cache.
fn newest_cached() -> Option<Kernel> {
    std::fs::read_dir(cache_dir())
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| dir.join(MARKER).exists())
        .filter_map(|dir| {
            let release = dir.file_name()?.to_string_lossy().into_owned();
            Some(Kernel { release, dir })
        })
        .max_by_key(|kernel| version_key(&kernel.release))
}

/// Removes every cached kernel (and leftover of an interrupted unpack) but `keep` (best effort).
fn prune_cache(keep: &str) {
    let Ok(entries) = std::fs::read_dir(cache_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name() != keep {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `target/vm/kernel`.
fn cache_dir() -> PathBuf {
    workspace::vm_dir().join("kernel")
}

/// The newest generic 6.12 unsigned image package apt knows, if any, with its kernel release.
fn newest_package() -> Result<Option<(String, String)>> {
    let listing = cmd::stdout(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.12\..*-amd64-unsigned$",
    ]))?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| Some((name.to_owned(), release_of(name)?)))
        .max_by_key(|(name, _)| version_key(name)))
}

/// `linux-image-6.12.107+deb12-amd64-unsigned` -> `6.12.107+deb12-amd64`; `None` for other
/// flavours (`-cloud-amd64`, `-rt-amd64`) and other names.
fn release_of(package: &str) -> Option<String> {
    let base = package
        .strip_prefix("linux-image-")?
        .strip_suffix("-amd64-unsigned")?;
    (base.starts_with("6.12.") && !base.contains('-')).then(|| format!("{base}-amd64"))
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
    use super::{release_of, version_key};

    #[test]
    fn generic_flavour_only() {
        assert_eq!(
            release_of("linux-image-6.12.107+deb12-amd64-unsigned").as_deref(),
            Some("6.12.107+deb12-amd64")
        );
        assert_eq!(
            release_of("linux-image-6.12.107+deb12-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(release_of("linux-image-6.1.0-40-amd64-unsigned"), None);
    }

    #[test]
    fn newer_point_release_sorts_higher() {
        assert!(
            version_key("linux-image-6.12.107+deb12-amd64-unsigned")
                > version_key("linux-image-6.12.99+deb12-amd64-unsigned")
        );
    }
}
