//! `cargo xtask demo`: builds everything, starts the daemon with the bundled example policy,
//! runs a scripted sample agent that is allowed some actions and refused others, and shows
//! what the log recorded. Leaves no agentguard state behind.

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{build_ebpf, cmd, integration, workspace};

#[derive(clap::Args)]
pub struct Args {}

/// Loopback ports the demo serves; the example policy allows the first only.
const SUPPLIER: u16 = 18080;
const ELSEWHERE: u16 = 18081;
/// Where the example policy lets the sample agent read its code and write its orders.
const AGENT_HOME: &str = "/tmp/agentguard-demo";

pub fn run(_: &Args) -> Result<()> {
    if !nix_is_root() {
        bail!("the demo loads BPF programs: run it as root");
    }
    build_ebpf::build_release()?;
    let bin = integration::build_agentguard()?;
    let dir = workspace::target_dir().join("demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("agentguard.sock");
    let policy = workspace::root().join("examples/demo/policy.toml");
    // The policy grants the agent its code at a fixed path; copy it there.
    let home = Path::new(AGENT_HOME);
    let _ = std::fs::remove_dir_all(home);
    std::fs::create_dir_all(home.join("orders"))?;
    // The agent runs as a dynamic uid that owns nothing: let it write its orders.
    std::fs::set_permissions(
        home.join("orders"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;
    let agent = home.join("agent.py");
    std::fs::copy(workspace::root().join("examples/demo/agent.py"), &agent)?;
    // Writable by every uid: when the agent tries to overwrite its code, what refuses it (and
    // logs the refusal) is the policy, not the file's permissions.
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;

    let ag = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args).env("AGENTGUARD_SOCKET", &socket);
        c
    };
    cmd::run(ag(&["teardown", "--force"]).stdout(Stdio::null()))?;
    serve(SUPPLIER)?;
    serve(ELSEWHERE)?;

    println!("\n== agentguard doctor");
    let _ = cmd::run(&mut ag(&["doctor"]));
    let state = dir.join("state");
    let state_arg = state.to_string_lossy().into_owned();
    println!("\n== agentguard log init --state-dir {}", rel(&state));
    let init = cmd::output(&mut ag(&["log", "init", "--state-dir", &state_arg]))?;
    print!("{}", String::from_utf8_lossy(&init.stdout));
    // The auditor keeps the key offline; the demo keeps it to verify the seals at the end.
    let key = String::from_utf8_lossy(&init.stdout)
        .split_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .context("`agentguard log init` printed no key")?;
    println!("\n== starting the daemon with {}", rel(&policy));
    let daemon = Daemon::start(&bin, &policy, &dir, &socket)?;
    let result = (|| {
        println!(
            "\n== agentguard run --agent buyer -- /usr/bin/python3 {}",
            agent.display()
        );
        cmd::run(&mut ag(&[
            "run",
            "--agent",
            "buyer",
            "--",
            "/usr/bin/python3",
            &agent.to_string_lossy(),
        ]))?;
        thread::sleep(Duration::from_millis(300));
        println!("\n== agentguard status");
        cmd::run(&mut ag(&["status"]))?;
        println!(
            "\n== agentguard log show --verdict denied --state-dir {}",
            rel(&state)
        );
        cmd::run(&mut ag(&[
            "log",
            "show",
            "--verdict",
            "denied",
            "--state-dir",
            &state_arg,
        ]))
    })();
    drop(daemon);
    cmd::run(ag(&["teardown", "--force"]).stdout(Stdio::null()))?;
    result?;
    println!(
        "\n== agentguard log verify --key KEY --state-dir {}",
        rel(&state)
    );
    cmd::run(&mut ag(&[
        "log",
        "verify",
        "--key",
        &key,
        "--state-dir",
        &state_arg,
    ]))?;
    println!("\n== done: daemon stopped, programs and cgroups removed");
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn rel(p: &Path) -> String {
    p.strip_prefix(workspace::root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// A loopback TCP server answering every connection with a short HTTP reply.
fn serve(port: u16) -> Result<()> {
    let l = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("port {port} is in use; the demo needs it"))?;
    let l6 = TcpListener::bind(("::1", port)).ok();
    for l in std::iter::once(l).chain(l6) {
        thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nquote: 42 units at 3.50\n");
            }
        });
    }
    Ok(())
}

/// The daemon, stopped with SIGTERM on drop.
struct Daemon(Child);

impl Daemon {
    fn start(bin: &Path, policy: &Path, dir: &Path, socket: &Path) -> Result<Self> {
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let child = Command::new(bin)
            .args(["daemon", "--policy"])
            .arg(policy)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(socket)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the daemon")?;
        let mut d = Self(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(status) = d.0.try_wait()? {
                bail!(
                    "the daemon exited ({status}): {}",
                    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the daemon did not come up; see {}",
                    dir.join("daemon.log").display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        println!("   daemon running (log: {})", rel(&dir.join("daemon.log")));
        Ok(d)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}
