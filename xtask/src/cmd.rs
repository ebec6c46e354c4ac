//! Running external commands with errors that name the command, and timing long steps.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// `program arg1 arg2 ...`, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` with its output captured and shown only if it fails (the last 40 lines).
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        let text = [out.stdout, out.stderr].concat();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        bail!("`{}` failed ({}):\n{tail}", describe(cmd), out.status);
    }
    Ok(())
}

/// Runs `cmd` capturing its output; fails (quoting stderr) unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `cmd` capturing its output and returns stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

/// Finds `name` in `PATH`, then in the sbin directories (root's tools when PATH lacks them).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A `cargo` command whose environment carries nothing from the `cargo run` that started xtask.
pub fn cargo() -> Command {
    rust_tool("cargo")
}

/// A rustup-managed tool (`cargo`, `rustc`, `rustup`) through the rustup proxy, so `+toolchain`
/// works, with an environment that carries nothing from the `cargo run` that started xtask: every
/// `CARGO*` but `CARGO_HOME`, `RUSTC*`, `RUSTUP_TOOLCHAIN`, `RUSTFLAGS` and `RUSTDOCFLAGS` are
/// removed.
pub fn rust_tool(name: &str) -> Command {
    let mut cmd = Command::new(rustup_proxy(name));
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        let leaks = (key_text.starts_with("CARGO") && key_text != "CARGO_HOME")
            || key_text.starts_with("RUSTC")
            || matches!(
                &*key_text,
                "RUSTUP_TOOLCHAIN" | "RUSTFLAGS" | "RUSTDOCFLAGS"
            );
        if leaks {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// `$CARGO_HOME/bin/<name>` (the rustup proxy) when it exists, else `<name>` from `PATH`.
fn rustup_proxy(name: &str) -> PathBuf {
    cargo_bin_dir()
        .map(|dir| dir.join(name))
        .filter(|proxy| is_executable(proxy))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`): rustup's proxies and `cargo install`'s default.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
    Some(cargo_home.join("bin"))
}

/// `PATH` with `dir` in front, for a child that must find a tool installed there.
pub fn path_with(dir: &Path) -> Result<std::ffi::OsString> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path));
    std::env::join_paths(dirs).with_context(|| format!("cannot put {} in PATH", dir.display()))
}

/// Runs `f` as a named step: prints what it does, then how long it took.
pub fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("==> {what}");
    let start = Instant::now();
    let result = f();
    let outcome = if result.is_ok() { "done" } else { "FAILED" };
    eprintln!("    {outcome}: {what} ({})", seconds(start.elapsed()));
    result
}

/// `12.3s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
