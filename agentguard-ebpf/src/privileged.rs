//! Operations that would change what a path or a process means (BPF LSM backend): agents may not
//! create user namespaces or mount (a bind mount or chroot would re-map paths under their
//! rules), and may not ptrace (or read /proc of) processes outside their own instance.

use agentguard_common::{
    event::{EventKind, FileOp},
    verdict::Verdict,
};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    file::{FileInfo, emit_file},
    identity::{self, Subject},
    kernel,
    maps::CGROUPS,
    verdict::{self, Judgement},
};

const EPERM: i32 = 1;

/// Refuses `op` for an agent (logging it); allows everyone else.
fn refuse_for_agents(op: FileOp, target_pid: u32) -> i32 {
    let Some(subject) = identity::current() else {
        return 0;
    };
    refuse(&subject, op, target_pid)
}

fn refuse(subject: &Subject, op: FileOp, target_pid: u32) -> i32 {
    let (j, log) = verdict::finish(subject, None, Judgement::refuse(Verdict::Denied, 0));
    if log {
        emit_file(
            subject,
            &j,
            &FileInfo {
                kind: EventKind::Privileged,
                op,
                access: 0,
                len: usize::MAX,
                target_pid,
            },
            core::ptr::null_mut(),
        );
    }
    if j.permits() { 0 } else { -EPERM }
}

#[lsm(hook = "userns_create")]
pub fn ag_userns_create(ctx: LsmContext) -> i32 {
    // Arguments: (const struct cred *cred, int ret).
    let ret: i32 = ctx.arg(1);
    if ret != 0 {
        return ret;
    }
    refuse_for_agents(FileOp::UserNamespace, 0)
}

#[lsm(hook = "sb_mount")]
pub fn ag_sb_mount(ctx: LsmContext) -> i32 {
    // Arguments: (dev_name, path, type, flags, data, ret).
    let ret: i32 = ctx.arg(5);
    if ret != 0 {
        return ret;
    }
    refuse_for_agents(FileOp::Mount, 0)
}

#[lsm(hook = "move_mount")]
pub fn ag_move_mount(ctx: LsmContext) -> i32 {
    // Arguments: (from_path, to_path, ret).
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return ret;
    }
    refuse_for_agents(FileOp::Mount, 0)
}

#[lsm(hook = "ptrace_access_check")]
pub fn ag_ptrace_access_check(ctx: LsmContext) -> i32 {
    // Arguments: (struct task_struct *child, unsigned int mode, int ret).
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return ret;
    }
    let Some(subject) = identity::current() else {
        return 0;
    };
    let child: *const u8 = ctx.arg(0);
    let Some(o) = kernel::offsets() else {
        return refuse(&subject, FileOp::Ptrace, 0);
    };
    let target_pid: u32 = kernel::read(child, o.task_tgid).unwrap_or(0);
    let child_cgroup = kernel::read::<*const u8>(child, o.task_cgroups)
        .and_then(|css| kernel::read::<*const u8>(css, o.css_set_dfl_cgrp))
        .and_then(|cg| kernel::read::<*const u8>(cg, o.cgroup_kn))
        .and_then(|kn| kernel::read::<u64>(kn, o.kernfs_node_id));
    let own_root = subject.root_instance_id();
    let same_instance = child_cgroup
        // SAFETY: map values stay valid for the program run.
        .and_then(|id| unsafe { CGROUPS.get(id) })
        .is_some_and(|e| own_root != 0 && e.root_instance_id == own_root);
    if same_instance {
        0
    } else {
        refuse(&subject, FileOp::Ptrace, target_pid)
    }
}
