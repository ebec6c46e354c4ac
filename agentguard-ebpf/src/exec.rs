//! Exec allowlist: the binary's (dev, inode) identity looked up in [`EXEC_RULES`].
//!
//! Two backends share [`decide`]:
//! - BPF LSM `bprm_check_security` refuses a binary with EPERM before the exec commits. It runs
//!   for every stage of an exec; a stage whose file starts with `#!` passes, so a script runs
//!   exactly when its interpreter is allowed.
//! - Fallback `tp_btf/sched_process_exec` only sees the final binary after the exec committed,
//!   so it kills the process with SIGKILL before the binary runs any of its own code.
//!
//! Both therefore implement one rule: the binary that ends up running must be allowed.

use agentguard_common::{
    agent::{AGENT_EXEC_RULES, ThrottleKind, exec_restricted},
    event::{EVENT_PARENT_DENIED, EVENT_TRUNCATED, EXEC_PATH_LEN, EventKind, ExecEvent},
    maps::MAX_AGENT_DEPTH,
    offsets::KernelOffsets,
    rules::{ExecKey, NO_RULE},
    verdict::{Backend, Verdict},
};
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_str_bytes, bpf_send_signal},
    macros::{btf_tracepoint, lsm},
    programs::{BtfTracePointContext, LsmContext},
};

use crate::{
    emit,
    identity::{self, Subject},
    kernel,
    maps::EXEC_RULES,
    verdict::{self, Judgement},
};

const SIGKILL: u32 = 9;
const EPERM: i32 = 1;

#[btf_tracepoint(function = "sched_process_exec")]
pub fn ag_exec_fallback(ctx: BtfTracePointContext) -> i32 {
    // Arguments: (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm).
    let bprm: *const u8 = ctx.arg(2);
    if let Some(j) = judge(bprm, Backend::TpBtfExec, Verdict::Killed)
        && !j.permits()
    {
        // SAFETY: helper without memory arguments; signals the current process.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    0
}

#[lsm(hook = "bprm_check_security")]
pub fn ag_bprm_check(ctx: LsmContext) -> i32 {
    // Arguments: (struct linux_binprm *bprm, int ret).
    let ret: i32 = ctx.arg(1);
    if ret != 0 {
        return ret;
    }
    let bprm: *const u8 = ctx.arg(0);
    match judge(bprm, Backend::BpfLsm, Verdict::Denied) {
        Some(j) if !j.permits() => -EPERM,
        _ => 0,
    }
}

#[inline(always)]
fn lookup(generation: u32, agent_id: u32, dev: u64, ino: u64) -> Option<u32> {
    let key = ExecKey {
        agent_id,
        generation,
        dev,
        ino,
    };
    // SAFETY: map values stay valid for the duration of the program run.
    unsafe { EXEC_RULES.get(key) }.map(|r| r.rule_id)
}

/// The rule decision: the agent's own list (when it has one), then every ancestor that has one.
/// A sub-agent without an exec list of its own is still held to its ancestors' lists: it can
/// never run what its parent may not.
#[inline(always)]
fn decide(subject: &Subject, identity: Option<(u64, u64)>, refusal: Verdict) -> Judgement {
    let flags = subject.flags();
    if !exec_restricted(flags) {
        return Judgement::allow(NO_RULE);
    }
    let Some((dev, ino)) = identity else {
        return Judgement::refuse(refusal, 0);
    };
    let mut rule_id = NO_RULE;
    if flags & AGENT_EXEC_RULES != 0 {
        match lookup(subject.generation, subject.agent_id(), dev, ino) {
            Some(id) => rule_id = id,
            None => return Judgement::refuse(refusal, 0),
        }
    }
    let mut parent = subject.parent_agent_id();
    let mut depth = 0;
    while parent != 0 && depth < MAX_AGENT_DEPTH {
        let parent_config = identity::agent_config(subject.generation, parent);
        let parent_has_rules = parent_config.is_none_or(|c| c.flags & AGENT_EXEC_RULES != 0);
        if parent_has_rules {
            match lookup(subject.generation, parent, dev, ino) {
                // Without a list of its own, the nearest ancestor's rule is the one that allowed.
                Some(id) if rule_id == NO_RULE => rule_id = id,
                Some(_) => {}
                None => return Judgement::refuse(refusal, EVENT_PARENT_DENIED),
            }
        }
        parent = parent_config.map_or(0, |c| c.parent_agent_id);
        depth += 1;
    }
    Judgement::allow(rule_id)
}

/// Whether the file being examined starts with `#!`: its interpreter is judged at the next
/// stage of the same exec.
#[inline(always)]
fn is_script(o: &KernelOffsets, bprm: *const u8) -> bool {
    matches!(
        kernel::read::<[u8; 2]>(bprm, o.binprm_buf),
        Some([b'#', b'!'])
    )
}

/// Judges the exec in `bprm` for the current task; `None` when the task is not an agent.
#[inline(always)]
fn judge(bprm: *const u8, backend: Backend, refusal: Verdict) -> Option<Judgement> {
    let subject = identity::current()?;
    let offsets = kernel::offsets();
    let (file_id, script) = match &offsets {
        Some(o) => {
            let file: Option<*const u8> = kernel::read(bprm, o.binprm_file);
            (
                file.and_then(|f| kernel::file_identity(o, f)),
                backend == Backend::BpfLsm && is_script(o, bprm),
            )
        }
        None => (None, false),
    };
    if script {
        // Not a verdict: the interpreter's stage decides. Nothing to log or count.
        return Some(Judgement::allow(NO_RULE));
    }
    let (j, log) = verdict::finish(
        &subject,
        Some(ThrottleKind::Exec),
        decide(&subject, file_id, refusal),
    );
    if log && let Some(mut entry) = emit::reserve::<ExecEvent>(&subject, &j) {
        let ev = entry.as_mut_ptr();
        let (dev, ino) = file_id.unwrap_or((0, 0));
        let mut flags = 0;
        // SAFETY: `ev` points to reserved ring buffer memory of the right size; fields are
        // written in place (the event is too large for the BPF stack).
        unsafe {
            (*ev).dev = dev;
            (*ev).ino = ino;
            (*ev).filename[0] = 0;
            if let Some(o) = &offsets
                && let Some(name) = kernel::read::<*const u8>(bprm, o.binprm_filename)
            {
                match bpf_probe_read_kernel_str_bytes(name, &mut (*ev).filename) {
                    Ok(s) if s.len() + 1 >= EXEC_PATH_LEN => flags |= EVENT_TRUNCATED,
                    Ok(_) => {}
                    Err(_) => (*ev).filename[0] = 0,
                }
            }
            let mut header = entry.header(EventKind::Exec, backend, &subject, &j);
            header.flags |= flags;
            (*ev).header = header;
        }
        entry.send();
    }
    Some(j)
}
