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
    let mut missing: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(program, _)| cmd::which(program).is_none())
        .map(|&(_, package)| package)
        .collect();
    if missing.contains(&"qemu-system-x86") {
        // A qemu-utils newer than Debian's qemu-system-x86 (this kind of machine ships one from
        // backports) would be removed as conflicting: install the matching one to keep qemu-img.
        missing.push("qemu-utils");
    }
    if missing.is_empty() {
        eprintln!("    qemu-system-x86_64, depmod, busybox: present");
        return Ok(());
    }
    cmd::step(&format!("apt-get install -y {}", missing.join(" ")), || {
        apt_get_install(&missing)
    })
}

/// `apt-get install -y PACKAGES`, retried once after `apt-get update`.
pub fn apt_get_install(packages: &[&str]) -> Result<()> {
    let install = || {
        cmd::run_quiet(
            Command::new("apt-get")
                .args(["install", "-y", "-q"])
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
