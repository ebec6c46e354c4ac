//! bpf-linker: use the one in place, or build 0.13.0 against nightly rustc's own libLLVM.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::toolchain;
use crate::{cmd, workspace};

const VERSION: &str = "0.13.0";

/// Makes sure a runnable bpf-linker exists and returns its path. With `root`, it is
/// `<root>/bin/bpf-linker`; otherwise the one in `PATH`, else cargo's default install location.
pub fn ensure(root: Option<&Path>) -> Result<PathBuf> {
    let installed_at = match root {
        Some(root) => root.join("bin"),
        None => cmd::cargo_bin_dir()
            .context("cannot tell where cargo installs binaries: set CARGO_HOME or HOME")?,
    }
    .join("bpf-linker");
    let found = match root {
        Some(_) => installed_at.clone(),
        None => cmd::which("bpf-linker").unwrap_or_else(|| installed_at.clone()),
    };
    if let Ok(version) = version_of(&found) {
        eprintln!("    bpf-linker: {version} ({}), kept", found.display());
        return Ok(found);
    }
    cmd::step(
        &format!("cargo install bpf-linker {VERSION} against nightly's libLLVM"),
        || install(root),
    )?;
    let version =
        version_of(&installed_at).context("the freshly installed bpf-linker does not run")?;
    eprintln!("    bpf-linker: {version} ({})", installed_at.display());
    Ok(installed_at)
}

fn version_of(program: &Path) -> Result<String> {
    Ok(cmd::stdout(Command::new(program).arg("--version"))?
        .trim()
        .to_owned())
}

fn install(root: Option<&Path>) -> Result<()> {
    let major = toolchain::llvm_major()?;
    let sysroot = toolchain::sysroot()?;
    let prefix = llvm_prefix(&sysroot.join("lib"), major)?;
    let mut install = cmd::cargo();
    install
        .args([
            "install",
            "bpf-linker",
            "--version",
            VERSION,
            "--no-default-features",
        ])
        .arg("--features")
        .arg(format!("llvm-{major}"))
        .arg("--target-dir")
        .arg(workspace::target_dir().join("bpf-linker-build"))
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", sysroot.join("lib").display()),
        );
    if let Some(root) = root {
        install.arg("--root").arg(root);
    }
    cmd::run(&mut install)
}

/// `<root>/target/llvm-prefix` with `lib/libLLVM.so` linked to the toolchain's
/// `libLLVM.so.<major>*`, the layout bpf-linker's build script expects in `LLVM_PREFIX`.
fn llvm_prefix(toolchain_lib: &Path, major: u32) -> Result<PathBuf> {
    let wanted = format!("libLLVM.so.{major}");
    let library = std::fs::read_dir(toolchain_lib)
        .with_context(|| format!("cannot list {}", toolchain_lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(&wanted))
        });
    let Some(library) = library else {
        bail!(
            "no {wanted}* in {}: cannot build bpf-linker against nightly's LLVM",
            toolchain_lib.display()
        );
    };
    let prefix = workspace::target_dir().join("llvm-prefix");
    let lib_dir = prefix.join("lib");
    std::fs::create_dir_all(&lib_dir)
        .with_context(|| format!("cannot create {}", lib_dir.display()))?;
    let link = lib_dir.join("libLLVM.so");
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link)
            .with_context(|| format!("cannot replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&library, &link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), library.display()))?;
    eprintln!(
        "    LLVM_PREFIX={} ({} -> {})",
        prefix.display(),
        link.display(),
        library.display()
    );
    Ok(prefix)
}
