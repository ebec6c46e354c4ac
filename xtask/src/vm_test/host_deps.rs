//! The host tools the VM needs: QEMU, kmod (depmod), a static busybox, and virtme-ng (`vng`).
//! Each is installed only when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd;

/// (program that must be present, Debian package providing it).
const APT_TOOLS: [(&str, &str); 3] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("depmod", "kmod"),
    ("busybox", "busybox-static"),
];

/// Installs the Debian packages of the missing tools (`apt-get update` only if that fails).
pub fn ensure_apt_tools() -> Result<()> {
    let mut missing: Vec<String> = APT_TOOLS
        .iter()
        .filter(|(program, _)| cmd::which(program).is_none())
        .map(|&(_, package)| package.to_owned())
        .collect();
    if missing.is_empty() {
        eprintln!("    qemu-system-x86_64, depmod, busybox: present");
        return Ok(());
    }
    if missing.iter().any(|package| package == "qemu-system-x86") {
        // A machine image may ship QEMU packages newer than any apt source offers (e.g. qemu-utils
        // from backports without backports in the sources); Debian's qemu-system-x86 then
        // conflicts with them. Pin each to the newest version a source offers.
        missing.extend(stranded_packages("qemu*")?);
    }
    let label = format!("apt-get install -y {}", missing.join(" "));
    let packages: Vec<&str> = missing.iter().map(String::as_str).collect();
    cmd::step(&label, || apt_get_install(&packages))
}

/// `NAME=VERSION` for each installed package matching `pattern` whose installed version no apt
/// source offers, VERSION being the newest one a source does offer.
fn stranded_packages(pattern: &str) -> Result<Vec<String>> {
    let installed = cmd::stdout(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${db:Status-Abbrev} ${Package} ${Version}\\n",
        pattern,
    ]))
    .unwrap_or_default();
    let mut pins = Vec::new();
    for line in installed.lines() {
        let mut fields = line.split_whitespace();
        let (Some("ii"), Some(name), Some(version)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let policy = cmd::stdout(Command::new("apt-cache").args(["policy", name]))?;
        match newest_offered(&policy) {
            Some(offered) if offered != version => pins.push(format!("{name}={offered}")),
            _ => {}
        }
    }
    Ok(pins)
}

/// The newest version in `apt-cache policy` output that comes from a real source (not only from
/// dpkg's status file). The version table lists versions newest first, each followed by its
/// sources.
fn newest_offered(policy: &str) -> Option<String> {
    let mut lines = policy
        .lines()
        .skip_while(|line| line.trim() != "Version table:")
        .skip(1)
        .peekable();
    while let Some(line) = lines.next() {
        let version = line
            .trim_start_matches([' ', '*'])
            .split_whitespace()
            .next()?;
        let mut downloadable = false;
        while let Some(source) = lines.next_if(|l| l.starts_with("        ")) {
            downloadable |= !source.trim_end().ends_with("/var/lib/dpkg/status");
        }
        if downloadable {
            return Some(version.to_owned());
        }
    }
    None
}

/// `apt-get install -y PACKAGES`, retried once after `apt-get update`.
pub fn apt_get_install(packages: &[&str]) -> Result<()> {
    let install = || {
        cmd::run_quiet(
            Command::new("apt-get")
                // --allow-downgrades: only pinned `NAME=VERSION` packages can be downgraded.
                .args(["install", "-y", "-q", "--allow-downgrades"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let Err(first) = install() else {
        return Ok(());
    };
    eprintln!("    {first:#}\n    install failed; running apt-get update and retrying");
    apt_get_update()?;
    install()
}

/// `apt-get update`.
pub fn apt_get_update() -> Result<()> {
    cmd::step("apt-get update", || {
        cmd::run_quiet(Command::new("apt-get").args(["update", "-q"]))
    })
}

/// Returns the `vng` program, installing virtme-ng with pip when it is missing.
pub fn ensure_vng() -> Result<PathBuf> {
    if let Some(vng) = find_vng() {
        eprintln!("    vng: {}", vng.display());
        return Ok(vng);
    }
    cmd::step("pip install virtme-ng", || {
        cmd::run(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "virtme-ng"])
                // Debian's own python refuses pip installs without this (PEP 668).
                .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
                .env("PIP_ROOT_USER_ACTION", "ignore"),
        )
    })?;
    find_vng().context("pip installed virtme-ng but no `vng` program can be found")
}

/// `vng` in PATH, else in python3's scripts directory (pip's install location).
fn find_vng() -> Option<PathBuf> {
    cmd::which("vng").or_else(|| {
        let scripts = cmd::stdout(Command::new("python3").args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ]))
        .ok()?;
        let vng = Path::new(scripts.trim()).join("vng");
        vng.is_file().then_some(vng)
    })
}

#[cfg(test)]
mod tests {
    use super::newest_offered;

    #[test]
    fn a_backported_install_is_pinned_to_the_newest_offered_version() {
        let policy = "qemu-utils:
  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Version table:
 *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u18+b2 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
     1:7.2+dfsg-7+deb12u15 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
";
        assert_eq!(
            newest_offered(policy).as_deref(),
            Some("1:7.2+dfsg-7+deb12u18+b2")
        );
    }

    #[test]
    fn an_installed_version_offered_by_a_source_is_its_own_newest() {
        let policy = "kmod:
  Installed: 30+20221128-1
  Candidate: 30+20221128-1
  Version table:
 *** 30+20221128-1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
";
        assert_eq!(newest_offered(policy).as_deref(), Some("30+20221128-1"));
    }
}
