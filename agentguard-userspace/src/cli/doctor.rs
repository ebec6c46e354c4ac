//! `agentguard doctor [--json]`: what this host can enforce, why not, and which backend does.

use std::{path::Path, process::ExitCode};

use agentguard::{
    cgroup::Hierarchy,
    daemon::landlock_audit,
    ebpf::{
        backends::{self, Backends},
        loader, offsets, pins, probe, programs,
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
    /// What a user can do about a failed check: a kernel parameter, a kernel version, a kernel
    /// build option, a command.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
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
            fix: None,
        },
        Err(detail) => Check {
            name,
            ok: false,
            fix: fix(name, &detail),
            detail,
        },
    }
}

/// The running kernel's build configuration (`/boot/config-<release>`, where distributions
/// install it), for saying whether a missing feature is a boot parameter away or not built in.
struct KernelConfig(Option<String>);

impl KernelConfig {
    fn read() -> Self {
        let path = format!("/boot/config-{}", kernel::release());
        Self(std::fs::read_to_string(path).ok())
    }

    /// `Some(true)` when `option` is built in or a module, `Some(false)` when it is not set,
    /// `None` when the configuration is not readable.
    fn has(&self, option: &str) -> Option<bool> {
        let text = self.0.as_ref()?;
        let set = text.lines().any(|l| {
            l.strip_prefix(option)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|v| v == "y" || v == "m")
        });
        Some(set)
    }

    /// `advice` when `option` is (or may be) set, otherwise that the kernel lacks it.
    fn unless_missing(&self, option: &str, advice: String) -> String {
        match self.has(option) {
            Some(false) => format!(
                "this kernel is built without {option}: use a kernel built with {option}=y \
                 (Debian's, Ubuntu's and Fedora's are)"
            ),
            Some(true) => advice,
            None => format!("{advice} (the kernel needs {option}=y)"),
        }
    }
}

/// The active LSMs as the `lsm=` kernel parameter would list them, with `bpf` added.
fn lsm_parameter_with_bpf() -> String {
    let mut lsms: Vec<String> = backends::active_lsms()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l != "capability" && l != "bpf")
        .collect();
    if lsms.is_empty() {
        lsms = ["landlock", "lockdown", "yama"].map(String::from).to_vec();
    }
    lsms.push("bpf".into());
    format!("lsm={}", lsms.join(","))
}

/// What to do about a failed check, given what it said.
fn fix(name: &str, detail: &str) -> Option<String> {
    let config = KernelConfig::read();
    let lsm_param = || {
        config.unless_missing(
            "CONFIG_BPF_LSM",
            format!(
                "add bpf to the kernel command line: {} (e.g. in GRUB_CMDLINE_LINUX of \
                 /etc/default/grub, then update-grub and reboot)",
                lsm_parameter_with_bpf()
            ),
        )
    };
    let fix = match name {
        "kernel" => format!(
            "use Linux {}.{} or newer (Debian 12's stock kernel is 6.1)",
            kernel::MINIMUM.0,
            kernel::MINIMUM.1
        ),
        "root" => "run doctor as root (sudo agentguard doctor)".into(),
        "cgroup2" => "mount the unified hierarchy: mount -t cgroup2 none /sys/fs/cgroup/unified \
                      (or boot with systemd.unified_cgroup_hierarchy=1)"
            .into(),
        "cgroup-freeze" => format!(
            "use Linux {}.{} or newer (cgroup.kill is 5.14)",
            kernel::MINIMUM.0,
            kernel::MINIMUM.1
        ),
        "bpffs" => config.unless_missing(
            "CONFIG_BPF_SYSCALL",
            format!("mount -t bpf bpf {}", pins::BPFFS),
        ),
        "btf" => config.unless_missing(
            "CONFIG_DEBUG_INFO_BTF",
            format!("{} must exist", offsets::VMLINUX_BTF),
        ),
        "bpf-lsm-active" => lsm_param(),
        "landlock" => config.unless_missing(
            "CONFIG_SECURITY_LANDLOCK",
            "add landlock to the kernel command line's lsm= list".into(),
        ),
        "cgroup-sock-addr" => config.unless_missing(
            "CONFIG_CGROUP_BPF",
            "the kernel refused the cgroup programs: see the detail".into(),
        ),
        "af-unix-cgroup" => "the AF_UNIX cgroup hooks need Linux 6.7; with BPF LSM the \
                             unix_stream_connect and unix_may_send hooks judge AF_UNIX instead"
            .into(),
        "syscall-tracepoints" => config.unless_missing(
            "CONFIG_FTRACE_SYSCALLS",
            "mount tracefs at /sys/kernel/tracing".into(),
        ),
        "tp-btf" | "bpf-lsm" if detail.contains("bpf LSM is not active") => lsm_param(),
        "tp-btf" | "bpf-lsm" if detail.contains("Operation not permitted") => {
            "the kernel refused a BPF trampoline (EPERM): kernel lockdown in confidentiality \
             mode or a hypervisor that forbids patching kernel text does this; the fallback \
             backend is in use"
                .into()
        }
        "bpf-lsm" => "this kernel's verifier refused an essential LSM program (named above), so \
                      the fallback backend is in use; please report it with `agentguard doctor \
                      --json` and `uname -r`"
            .into(),
        _ => return None,
    };
    Some(fix)
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
    let mut own_refusal = false;
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
        let lsm_probe = probes.iter().find(|p| p.group == "lsm");
        let missing = lsm_probe.map(|p| p.missing.clone()).unwrap_or_default();
        let notes = lsm_probe.map(|p| p.notes.clone()).unwrap_or_default();
        checks.push(check(
            "bpf-lsm",
            lsm.clone().map(|()| {
                if missing.is_empty() {
                    "LSM programs load".into()
                } else {
                    let names: Vec<&str> = missing.iter().map(|m| m.program).collect();
                    format!("LSM programs load except {}", names.join(", "))
                }
            }),
        ));
        let unix_probe = probes.iter().find(|p| p.group == "unix-sock-addr");
        let unix_missing = match unix_probe {
            Some(p) if p.result.is_ok() => p.missing.clone(),
            _ => programs::SPECS
                .iter()
                .filter(|s| s.group == programs::Group::UnixSockAddr)
                .map(|s| backends::MissingProgram {
                    program: s.name,
                    hook: s.hook_name(),
                    reason: "not probed".into(),
                    loses: programs::UNIX_UNJUDGED,
                })
                .collect(),
        };
        // A kernel that has the hooks but refused the programs: the daemon refuses to start
        // where they are what would judge AF_UNIX.
        let unix_refused = unix_probe
            .is_some_and(|p| p.result.is_ok())
            .then(|| loader::refused_with_hook(&unix_missing).err())
            .flatten()
            .map(|e| e.to_string());
        checks.push(check(
            "af-unix-cgroup",
            if unix_missing.is_empty() {
                Ok("connect_unix and sendmsg_unix programs load".into())
            } else if let Some(e) = &unix_refused {
                Err(e.clone())
            } else {
                Err(unix_missing
                    .iter()
                    .map(|m| format!("{}: {}", m.program, m.reason))
                    .collect::<Vec<_>>()
                    .join("; "))
            },
        ));
        if find("network").is_ok() {
            let mut b = Backends::decide(lsm, landlock);
            if b.lsm() {
                b.missing = missing;
                b.notes = notes;
            }
            b.settle_unix(|| unix_missing);
            own_refusal = b.unix != backends::UnixBackend::BpfLsm && unix_refused.is_some();
            backends = Some(b);
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
        && !own_refusal
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
            if let Some(fix) = &c.fix {
                println!("{:<25} fix: {fix}", "");
            }
        }
        match &report.backends {
            Some(b) => {
                println!(
                    "\nenforcement on this host: network={} exec={} file={} unix={}",
                    b.network,
                    b.exec_name(),
                    b.file_name(),
                    b.unix.name()
                );
                match b.unix {
                    backends::UnixBackend::BpfLsm => println!(
                        "  AF_UNIX: judged by the LSM hooks unix_stream_connect and unix_may_send"
                    ),
                    backends::UnixBackend::CgroupSockAddr => println!(
                        "  AF_UNIX: judged by the cgroup programs connect_unix and sendmsg_unix"
                    ),
                    backends::UnixBackend::Unjudged => println!(
                        "  AF_UNIX NOT JUDGED: neither BPF LSM nor the AF_UNIX cgroup hooks \
                         (Linux >= 6.7) are available; {}",
                        programs::UNIX_UNJUDGED
                    ),
                }
                if let Some(why) = &b.lsm_unavailable {
                    println!("  (BPF LSM not used: {why})");
                }
                for m in &b.missing {
                    println!(
                        "  NOT LOADED {} ({}): {}\n    so: {}",
                        m.program, m.hook, m.reason, m.loses
                    );
                }
                for n in &b.notes {
                    println!("  note: {n}");
                }
                if b.file == backends::FileBackend::Landlock {
                    println!(
                        "  file rules apply to processes started with `agentguard run`; `tag`ged processes get none"
                    );
                }
                if !b.lsm() {
                    println!(
                        "  open budgets are counted by syscall tracepoints, attached only while the policy has one (they slow every syscall host-wide): they can freeze or kill an instance, not refuse an open"
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
