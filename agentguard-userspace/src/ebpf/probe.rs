//! Capability probes for `agentguard doctor`: the same programs the daemon loads, loaded into a
//! throwaway bpffs directory and unloaded again, so "works here" means what the daemon will do.

use std::path::PathBuf;

use aya::Btf;
use serde::Serialize;

use super::{backends::MissingProgram, offsets, pins, programs::Group};

/// Whether one program group loads here.
#[derive(Clone, Debug, Serialize)]
pub struct GroupProbe {
    /// The group.
    pub group: &'static str,
    /// `Ok` or why the group cannot load (an essential program's error).
    pub result: Result<(), String>,
    /// Optional programs of the group that did not load.
    pub missing: Vec<MissingProgram>,
    /// Programs that loaded as an alternate variant, and why.
    pub notes: Vec<String>,
}

/// Loads every group's programs (without attaching them) and reports per group.
pub fn programs() -> Vec<GroupProbe> {
    let groups = [
        Group::Network,
        Group::ExecFallback,
        Group::Lsm,
        Group::OpenBudget,
        Group::UnixSockAddr,
    ];
    let fail_all = |e: String| {
        groups
            .iter()
            .map(|g| GroupProbe {
                group: g.name(),
                result: Err(e.clone()),
                missing: Vec::new(),
                notes: Vec::new(),
            })
            .collect()
    };
    if let Err(e) = pins::ensure_bpffs() {
        return fail_all(format!("bpffs: {e}"));
    }
    let dir = PathBuf::from(format!("{}-probe-{}", pins::ROOT, std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail_all(format!("{}: {e}", dir.display()));
    }
    let result = (|| {
        let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
        let offsets = offsets::from_btf(std::path::Path::new(offsets::VMLINUX_BTF))
            .map_err(|e| e.to_string())?;
        let mut ebpf = super::loader::open_object(
            super::object::OBJECT,
            &btf,
            &offsets,
            &dir,
            agentguard_common::maps::EVENTS_BYTES,
        )
        .map_err(|e| format!("eBPF object: {e}"))?;
        Ok::<_, String>(
            groups
                .iter()
                .map(|g| {
                    let result = if *g == Group::Lsm {
                        super::backends::bpf_lsm_active()
                    } else {
                        Ok(())
                    }
                    .and_then(|()| {
                        super::loader::load_group(&mut ebpf, *g, &btf)
                            .map_err(|e| super::loader::brief(&e))
                    });
                    let (result, missing, notes) = match result {
                        Ok(report) => (Ok(()), report.missing, report.notes),
                        Err(e) => (Err(e), Vec::new(), Vec::new()),
                    };
                    GroupProbe {
                        group: g.name(),
                        result,
                        missing,
                        notes,
                    }
                })
                .collect::<Vec<_>>(),
        )
    })();
    let _ = pins::remove_tree(&dir);
    result.unwrap_or_else(fail_all)
}
