//! Building what the privileged integration tests run: the `agentguard` binary and the test
//! executables of the `agentguard-tests` package.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::{cmd, workspace};

/// The package holding the privileged integration tests (tests/tests/*.rs).
pub const TESTS_PACKAGE: &str = "agentguard-tests";

/// One test executable built by cargo.
#[derive(Clone, Debug)]
pub struct TestExe {
    /// `<target kind>-<target name>`, e.g. `test-net` or `lib-agentguard_tests`.
    pub name: String,
    pub path: PathBuf,
    /// Working directory for a run: the package's directory, as `cargo test` does.
    pub cwd: PathBuf,
}

/// `cargo build --release --package agentguard-userspace --bins`; returns the `agentguard`
/// binary. Release, because the tests start it hundreds of times, many of them in an emulated
/// guest where a debug build's start-up alone takes seconds.
pub fn build_agentguard() -> Result<PathBuf> {
    cmd::step(
        "cargo build --release --package agentguard-userspace --bins",
        || {
            cmd::run(cmd::cargo().current_dir(workspace::root()).args([
                "build",
                "--release",
                "--package",
                "agentguard-userspace",
                "--bins",
            ]))
        },
    )?;
    let bin = workspace::agentguard_bin();
    if !bin.is_file() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// `cargo test --package agentguard-tests --no-run`; returns the test executables it built.
pub fn build_test_executables() -> Result<Vec<TestExe>> {
    let out = cmd::step(
        &format!("cargo test --package {TESTS_PACKAGE} --no-run"),
        || {
            cmd::output(
                cmd::cargo()
                    .current_dir(workspace::root())
                    .args(["test", "--package", TESTS_PACKAGE, "--no-run"])
                    .arg("--message-format=json-render-diagnostics")
                    .stderr(Stdio::inherit()),
            )
        },
    )?;
    let stdout = String::from_utf8(out.stdout).context("cargo printed non-UTF-8 JSON")?;
    let exes = test_executables(&stdout)?;
    if exes.is_empty() {
        bail!("`cargo test --package {TESTS_PACKAGE} --no-run` built no test executable");
    }
    Ok(exes)
}

#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    executable: Option<PathBuf>,
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    target: Option<Target>,
}

#[derive(Deserialize)]
struct Profile {
    test: bool,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

/// The executables of `compiler-artifact` messages whose profile is a test profile.
fn test_executables(json_lines: &str) -> Result<Vec<TestExe>> {
    let mut exes = Vec::new();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let message: Message = serde_json::from_str(line)
            .with_context(|| format!("cannot parse cargo's message: {line}"))?;
        let is_test = message.profile.is_some_and(|p| p.test);
        if message.reason != "compiler-artifact" || !is_test {
            continue;
        }
        let (Some(path), Some(target)) = (message.executable, message.target) else {
            continue;
        };
        let kind = target.kind.first().map_or("test", String::as_str);
        let cwd = message
            .manifest_path
            .as_deref()
            .and_then(Path::parent)
            .map_or_else(|| workspace::root().to_path_buf(), Path::to_path_buf);
        exes.push(TestExe {
            name: format!("{kind}-{}", target.name),
            path,
            cwd,
        });
    }
    Ok(exes)
}

#[cfg(test)]
mod tests {
    use super::test_executables;

    #[test]
    fn picks_test_artifacts_only() {
        let json = concat!(
            r#"{"reason":"compiler-artifact","profile":{"test":false},"target":{"name":"anyhow","kind":["lib"]},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","profile":{"test":true},"target":{"name":"net","kind":["test"]},"executable":"/t/debug/deps/net-0123"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n",
        );
        let exes = test_executables(json).unwrap_or_default();
        assert_eq!(exes.len(), 1);
        assert_eq!(exes[0].name, "test-net");
        assert_eq!(exes[0].path.to_str(), Some("/t/debug/deps/net-0123"));
        assert_eq!(exes[0].cwd.to_str(), Some("/w/tests"));
    }
}
