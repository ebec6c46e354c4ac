//! Kill-switch and policy latencies: `agentguard freeze` of instances of 1, 100 and 1,000
//! processes (request until the kernel reports `frozen 1`), `policy apply` of a 10,000-rule
//! policy, and a budget breach (`on_exceed = "freeze"`) until `frozen 1`.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    cgroup::{Instance, monotonic_ns},
    daemon::{Daemon, Env},
    generator::{As, Running},
    loopback::Loopback,
    policy::{self, BURST, Bench, HOLD},
};
use crate::cmd;

pub const SIZES: [u64; 3] = [1, 100, 1_000];
const FROZEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause after each thaw: longer than the kernel's 10 ms rate limit on `cgroup.events`
/// notifications, so the next freeze's notification is not held back by the thaw's, and the
/// thawed processes have run again (spacing between samples, not synchronisation).
const AFTER_THAW: Duration = Duration::from_millis(50);

/// Freezes of instances of one size.
#[derive(Debug, Default, Serialize)]
pub struct Freezes {
    /// From just before `agentguard freeze` starts until the CLI has replied (exited): what an
    /// operator waits for; the daemon replies once the kernel reports `frozen 1`.
    #[serde(default)]
    pub request_to_reply_ms: Vec<f64>,
    /// From just before `agentguard freeze` starts until this process sees `frozen 1`.
    pub request_to_frozen_ms: Vec<f64>,
    /// What the daemon reports (`frozen in N ms`): its write of cgroup.freeze until `frozen 1`.
    pub daemon_ms: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Freeze {
    /// processes in the instance -> freezes.
    pub by_procs: BTreeMap<u64, Freezes>,
    pub apply_10k_ms: Vec<f64>,
    /// From the first over-budget connect returning EPERM until `frozen 1`.
    pub breach_to_frozen_ms: Vec<f64>,
}

pub fn measure(env: &Env, net: &Loopback, reps: usize) -> Result<Freeze> {
    let files = env.work.join("files");
    std::fs::create_dir_all(&files)?;
    let policy = |log_allowed: bool| {
        let bench = Bench {
            generator: &env.art.generator,
            files: &files,
            tcp: net.tcp,
            udp: net.udp,
            connect_rules: 10_000,
            log_allowed,
        };
        format!(
            "{}\n{}\n{}",
            bench.table(),
            policy::hold(),
            policy::burst(net.tcp)
        )
    };
    // Two policies that differ, so that every apply really changes something.
    let policies = [
        env.policy("freeze-a", &policy(true))?,
        env.policy("freeze-b", &policy(false))?,
    ];
    let mut out = Freeze::default();
    let mut daemon = Daemon::start(env, &policies[0])?;
    for procs in SIZES {
        eprintln!("    freeze: instances of {procs} processes, {reps} freezes");
        out.by_procs.insert(procs, freezes(env, procs, reps)?);
        daemon.check_alive()?;
    }
    eprintln!("    policy apply of 10,000 rules: {reps} times");
    for rep in 0..reps {
        let took = env.apply(&policies[(rep + 1) % 2])?;
        out.apply_10k_ms.push(took.as_secs_f64() * 1e3);
    }
    eprintln!("    budget breach to frozen: {reps} times");
    for _ in 0..reps {
        out.breach_to_frozen_ms.push(breach(env, net)?);
    }
    daemon.check_alive()?;
    Ok(out)
}

/// `agentguard kill NAME` and waits for the generator to end.
fn kill(env: &Env, inst: &Instance, running: Running) -> Result<()> {
    if let Err(e) = cmd::output(&mut env.ag(&["kill", &inst.name])) {
        // `kill` waits for `populated 0` in cgroup.events, but the daemon removes an instance's
        // cgroup as soon as it is empty: when that wins the race, `kill` reports ENOENT for a
        // kill that worked. Only a cgroup still there means the kill failed.
        if inst.dir.exists() {
            return Err(e);
        }
        eprintln!("    note: {e:#} (the instance is gone: the kill worked)");
    }
    running.wait()
}

fn freezes(env: &Env, procs: u64, reps: usize) -> Result<Freezes> {
    // The generator is one of the processes: it forks the others.
    let children = (procs - 1).to_string();
    let mut running = Running::spawn(env, As::Agent(HOLD), &["sleepers", &children])?;
    let ready = running.next_json()?;
    let inst = Instance::from_cgroup(ready["cgroup"].as_str().unwrap_or_default())?;
    let count = usize::try_from(procs)?;
    let mut out = Freezes::default();
    let result = (|| {
        inst.wait_procs(count, Duration::from_secs(60))?;
        for _ in 0..reps {
            let events = inst.events()?;
            let start = monotonic_ns();
            let mut freeze = env.ag(&["freeze", &inst.name]);
            let child = freeze
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("cannot start agentguard freeze")?;
            // The reply is stamped by a thread of its own while this one watches the cgroup.
            let waiter = std::thread::spawn(move || {
                child
                    .wait_with_output()
                    .map(|reply| (reply, monotonic_ns()))
            });
            let frozen = events.wait_frozen(FROZEN_TIMEOUT)?;
            let (reply, replied) = waiter
                .join()
                .map_err(|_| anyhow::anyhow!("the freeze waiter panicked"))??;
            if !reply.status.success() {
                bail!(
                    "agentguard freeze {} failed: {}",
                    inst.name,
                    String::from_utf8_lossy(&reply.stderr)
                );
            }
            out.request_to_frozen_ms.push((frozen - start) as f64 / 1e6);
            out.request_to_reply_ms.push((replied - start) as f64 / 1e6);
            if let Some(ms) = daemon_took_ms(&String::from_utf8_lossy(&reply.stdout)) {
                out.daemon_ms.push(ms);
            }
            cmd::output(&mut env.ag(&["thaw", &inst.name]))?;
            std::thread::sleep(AFTER_THAW);
        }
        Ok(())
    })();
    kill(env, &inst, running)?;
    result.map(|()| out)
}

/// `frozen in 12 ms: hold/1` -> 12.
fn daemon_took_ms(line: &str) -> Option<f64> {
    line.split_whitespace()
        .skip_while(|w| *w != "in")
        .nth(1)?
        .parse()
        .ok()
}

fn breach(env: &Env, net: &Loopback) -> Result<f64> {
    let tcp = net.tcp.to_string();
    let mut running = Running::spawn(env, As::Agent(BURST), &["breach", &tcp, "100000"])?;
    let ready = running.next_json()?;
    let inst = Instance::from_cgroup(ready["cgroup"].as_str().unwrap_or_default())?;
    let result = (|| {
        let events = inst.events()?;
        // Watch before the first connect: the freeze may well complete before the refusal's
        // report reaches us through the pipe.
        let watcher = std::thread::spawn(move || events.wait_frozen(FROZEN_TIMEOUT));
        running.go()?;
        let frozen = watcher
            .join()
            .map_err(|_| anyhow::anyhow!("the cgroup watcher panicked"))??;
        // The freeze may have caught the generator between the refusal and its report: thaw
        // it so the report comes out.
        cmd::output(&mut env.ag(&["thaw", &inst.name]))?;
        let refused = running.next_json()?;
        let at = refused["refused_at_ns"]
            .as_i64()
            .with_context(|| format!("the budget never refused a connect: {refused}"))?;
        if refused["errno"].as_i64() != Some(i64::from(nix::libc::EPERM)) {
            bail!("the over-budget connect failed otherwise than with EPERM: {refused}");
        }
        Ok((frozen - at) as f64 / 1e6)
    })();
    kill(env, &inst, running)?;
    result
}

#[cfg(test)]
mod tests {
    use super::daemon_took_ms;

    #[test]
    fn reads_the_daemons_figure() {
        assert_eq!(daemon_took_ms("frozen in 12 ms: hold/1\n"), Some(12.0));
        assert_eq!(daemon_took_ms("no running instances matched"), None);
    }
}
