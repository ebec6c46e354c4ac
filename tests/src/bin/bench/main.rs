//! `agentguard-bench`: the load generator of `cargo xtask bench`. Runs one tight loop of a
//! syscall N times (usually as an agent, under `agentguard run`) and prints one JSON object on
//! stdout: the time per operation and how many operations failed. For the gateway part it is
//! also the upstream HTTP server and the timed keep-alive HTTP client ([`http`]).
//!
//! It is deliberately free of timing policy: what to compare and how often is xtask's business;
//! this binary only measures one loop in the process and cgroup it was started in.

mod confine;
mod hold;
mod http;
mod ops;

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

const USAGE: &str = "usage: agentguard-bench \
    open PATH N | connect ADDR:PORT N | exec PATH N | udp ADDR:PORT N [PROCS] | udp-connect ADDR:PORT N PROCS | udp-probe ADDR:PORT N PROCS | \
    suite OPEN_PATH CONNECT_ADDR EXEC_PATH N_OPEN N_CONNECT N_EXEC | \
    sleepers N | breach ADDR:PORT MAX | gated LOOP... | \
    http-serve CREDENTIAL | http URL N BYTES CONNECTIONS present|absent | \
    landlock POLICY AGENT COMMAND... | seccomp COMMAND... | seccomp-groups | \
    audit status | audit set ENABLED never-rules|no-never-rules";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agentguard-bench: {e:#}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[&str]) -> Result<Value> {
    match args {
        ["open", path, n] => Ok(ops::open(path, count(n)?)?.json()),
        ["connect", addr, n] => Ok(ops::connect(&ops::addr(addr)?, count(n)?).json()),
        ["exec", path, n] => Ok(ops::exec(path, count(n)?).json()),
        ["udp", addr, n] => ops::udp(&ops::addr(addr)?, count(n)?, 1, ops::Udp::Send),
        ["udp", addr, n, procs] => {
            ops::udp(&ops::addr(addr)?, count(n)?, count(procs)?, ops::Udp::Send)
        }
        ["udp-connect", addr, n, procs] => ops::udp(
            &ops::addr(addr)?,
            count(n)?,
            count(procs)?,
            ops::Udp::Connect,
        ),
        ["udp-probe", addr, n, procs] => {
            ops::udp(&ops::addr(addr)?, count(n)?, count(procs)?, ops::Udp::Probe)
        }
        [
            "suite",
            open_path,
            connect_addr,
            exec_path,
            n_open,
            n_connect,
            n_exec,
        ] => {
            // One process for the three loops: a third of the `agentguard run` start-ups, and
            // the three figures of one configuration come from the same instance.
            let connect_addr = ops::addr(connect_addr)?;
            Ok(json!({
                "cgroup": hold::own_cgroup(),
                "open": ops::open(open_path, count(n_open)?)?.json(),
                "connect": ops::connect(&connect_addr, count(n_connect)?).json(),
                "exec": ops::exec(exec_path, count(n_exec)?).json(),
            }))
        }
        ["sleepers", n] => hold::sleepers(count(n)?),
        ["breach", addr, max] => hold::breach(&ops::addr(addr)?, count(max)?),
        ["http-serve", credential] => http::serve(credential),
        ["http", url, n, bytes, connections, credential] => http::client(&http::Load {
            url: (*url).to_owned(),
            requests: count(n)?,
            body: usize::try_from(count(bytes)?)?,
            connections: count(connections)?.max(1),
            credential: http::Credential::parse(credential)?,
        }),
        // Confinement applied in this process, then any of the loops above under it.
        ["landlock", policy, agent, rest @ ..] => {
            confine::landlock(std::path::Path::new(policy), agent)?;
            run(rest)
        }
        // Started, then held until xtask releases every instance at once.
        ["gated", rest @ ..] => {
            hold::wait_for_go()?;
            run(rest)
        }
        ["seccomp", rest @ ..] => {
            confine::seccomp()?;
            run(rest)
        }
        ["seccomp-groups"] => Ok(json!({ "groups": agentguard::sandbox::seccomp::group_names() })),
        ["audit", "status"] => confine::audit_status(),
        [
            "audit",
            "set",
            enabled,
            rules @ ("never-rules" | "no-never-rules"),
        ] => confine::audit_set(enabled.parse()?, *rules == "never-rules"),
        _ => bail!("unknown arguments {args:?}"),
    }
}

fn count(text: &str) -> Result<u64> {
    text.parse()
        .with_context(|| format!("{text:?} is not a count"))
}
