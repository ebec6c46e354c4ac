//! `agentguard doctor [--json]`: what this host can enforce, why not, and which backend does.

use std::{path::Path, process::ExitCode};

use agentguard::{
    cgroup::Hierarchy,
    daemon::landlock_audit,
    ebpf::{
        backends::{self, Backends},
        offsets, pins, probe,
    },
    sys::{kernel, mounts},
};
use clap::Args;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    checks: Vec<Check>,
    backends: Option<Backends>,
    can_enforce: bool,
}

fn check(name: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
        },
    }
}

/// A throwaway cgroup shows whether freeze and kill files exist in non-root cgroups.
fn cgroup_freeze(mount: &Path) -> Result<String, String> {
    let dir = mount.join(format!("agentguard-doctor-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create a test cgroup: {e}"))?;
    let freeze = dir.join("cgroup.freeze").exists();
    let kill = dir.join("cgroup.kill").exists();
    let _ = std::fs::remove_dir(&dir);
    match (freeze, kill) {
        (true, true) => Ok("cgroup.freeze and cgroup.kill available".into()),
        (false, _) => Err("cgroup.freeze missing (needs Linux 5.2+)".into()),
        (_, false) => Err("cgroup.kill missing (needs Linux 5.14+)".into()),
    }
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let release = kernel::release();
    checks.push(check(
        "kernel",
        kernel::check_minimum(&release)
            .map(|_| release.clone())
            .map_err(|e| e.to_string()),
    ));
    let root = nix::unistd::geteuid().is_root();
    checks.push(check(
        "root",
        if root {
            Ok("running as root".into())
        } else {
            Err("doctor needs root to load probe programs".into())
        },
    ));
    let cg2 = mounts::cgroup2().map_err(|e| e.to_string());
    checks.push(check(
        "cgroup2",
        cg2.as_ref()
            .map(|p| format!("mounted at {}", p.display()))
            .map_err(Clone::clone),
    ));
    if let Ok(m) = &cg2 {
        checks.push(check(
            "cgroup-freeze",
            if root {
                cgroup_freeze(m)
            } else {
                Err("needs root".into())
            },
        ));
        let h = Hierarchy::at(m);
        checks.push(check(
            "agentguard-cgroup",
            Ok(if h.exists() {
                format!("{} exists", h.root().display())
            } else {
                format!(
                    "{} not created yet (the daemon creates it)",
                    h.root().display()
                )
            }),
        ));
    }
    let bpffs = mounts::is_mounted(Path::new(pins::BPFFS), "bpf")
        .map_err(|e| e.to_string())
        .and_then(|m| {
            if m {
                Ok(format!("mounted at {}", pins::BPFFS))
            } else if root {
                pins::ensure_bpffs()
                    .map(|_| format!("mounted at {} by doctor", pins::BPFFS))
                    .map_err(|e| e.to_string())
            } else {
                Err("not mounted".into())
            }
        });
    checks.push(check("bpffs", bpffs));
    checks.push(check(
        "btf",
        offsets::from_btf(Path::new(offsets::VMLINUX_BTF))
            .map(|_| format!("{} has every field agentguard reads", offsets::VMLINUX_BTF))
            .map_err(|e| e.to_string()),
    ));
    checks.push(check(
        "bpf-lsm-active",
        backends::bpf_lsm_active().map(|()| "bpf is an active LSM".into()),
    ));
    let landlock = backends::landlock_abi();
    checks.push(check(
        "landlock",
        landlock
            .map(|v| format!("ABI {v}"))
            .ok_or_else(|| "not available".to_owned()),
    ));

    let mut backends = None;
    if root {
        let probes = probe::programs();
        let find = |g: &str| {
            probes
                .iter()
                .find(|p| p.group == g)
                .map(|p| p.result.clone())
                .unwrap_or(Err("not probed".into()))
        };
        checks.push(check(
            "cgroup-sock-addr",
            find("network").map(|()| "connect4/6 and sendmsg4/6 programs load".into()),
        ));
        checks.push(check(
            "tp-btf",
            find("exec-fallback").map(|()| "sched_process_exec program loads".into()),
        ));
        checks.push(check(
            "syscall-tracepoints",
            find("open-budget")
                .map(|()| "sys_enter_open* programs load (open budgets on the fallback)".into()),
        ));
        let lsm = find("lsm");
        checks.push(check(
            "bpf-lsm",
            lsm.clone().map(|()| "LSM programs load".into()),
        ));
        if find("network").is_ok() {
            backends = Some(Backends::decide(lsm, landlock));
        }
        // Only the Landlock backend needs audit records to log file refusals; the BPF LSM
        // logs its own.
        if backends
            .as_ref()
            .is_some_and(|b: &Backends| b.file == backends::FileBackend::Landlock)
        {
            checks.push(check(
                "landlock-audit",
                landlock_audit::supported()
                    .map(|()| "file refusals are logged (Landlock audit records)".into()),
            ));
        }
    }
    let can_enforce = backends.is_some()
        && checks
            .iter()
            .filter(|c| matches!(c.name, "kernel" | "cgroup2" | "cgroup-freeze" | "btf"))
            .all(|c| c.ok);
    let report = Report {
        checks,
        backends,
        can_enforce,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for c in &report.checks {
            println!(
                "{:<4} {:<20} {}",
                if c.ok { "ok" } else { "NO" },
                c.name,
                c.detail
            );
        }
        match &report.backends {
            Some(b) => {
                println!("\nenforcement on this host: {b}");
                if let Some(why) = &b.lsm_unavailable {
                    println!("  (BPF LSM not used: {why})");
                }
                if b.file == backends::FileBackend::Landlock {
                    println!(
                        "  file rules apply to processes started with `agentguard run`; `tag`ged processes get none"
                    );
                }
                if !b.lsm() {
                    println!(
                        "  open budgets are counted by syscall tracepoints: they can freeze or kill an instance, not refuse an open"
                    );
                }
            }
            None => println!("\nagentguard cannot enforce on this host"),
        }
    }
    Ok(if report.can_enforce {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
