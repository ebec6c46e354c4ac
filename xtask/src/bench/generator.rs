//! Running the load generator (`agentguard-bench`) untagged or as an agent, and reading the
//! JSON it prints.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::daemon::Env;
use crate::cmd;

/// Who runs the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum As<'a> {
    /// A plain child of xtask, in no agent cgroup.
    Untagged,
    /// `agentguard run --agent NAME -- agentguard-bench ...`.
    Agent(&'a str),
}

fn command(env: &Env, who: As<'_>, args: &[&str]) -> Command {
    let generator = env.art.generator.to_string_lossy().into_owned();
    match who {
        As::Untagged => {
            let mut c = Command::new(&env.art.generator);
            c.args(args);
            c
        }
        As::Agent(agent) => {
            let mut cmd = vec![generator.as_str()];
            cmd.extend_from_slice(args);
            env.run_as(agent, &cmd)
        }
    }
}

/// Runs the generator to completion; returns the JSON object it printed last.
pub fn run(env: &Env, who: As<'_>, args: &[&str]) -> Result<Value> {
    let mut c = command(env, who, args);
    let out = cmd::stdout(&mut c)?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("`{}` printed no JSON: {out}", cmd::describe(&c)))?;
    serde_json::from_str(line).with_context(|| format!("bad JSON from the generator: {line}"))
}

/// A generator that keeps running (sleepers, breach) with its stdin and stdout piped.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    pub fn spawn(env: &Env, who: As<'_>, args: &[&str]) -> Result<Self> {
        let mut c = command(env, who, args);
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::describe(&c)))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        Ok(Self {
            stdin: child.stdin.take(),
            stdout: BufReader::new(stdout),
            child,
        })
    }

    /// The next JSON line the generator prints.
    pub fn next_json(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("the generator exited ({status}) before printing what was expected");
        }
        serde_json::from_str(line.trim()).with_context(|| format!("bad JSON: {line}"))
    }

    /// Writes a line to its stdin (the `breach` start signal).
    pub fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("no stdin pipe")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for it to end (after its instance was killed).
    pub fn wait(mut self) -> Result<()> {
        self.stdin = None;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Normally killed with its instance; this is for the error paths.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
