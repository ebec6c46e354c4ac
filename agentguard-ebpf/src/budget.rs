//! The open budget on the fallback backend. Without BPF LSM no program judges opens (Landlock
//! does, and it has no budgets), so opens are counted by syscall tracepoints. A tracepoint cannot
//! refuse anything: an exhausted open budget can only freeze or kill the instance (through the
//! daemon). With `on_exceed = "deny"` the breach is logged as `audit-denied`.

use agentguard_common::{
    agent::ThrottleKind,
    event::{EVENT_ESCALATE_FREEZE, EVENT_ESCALATE_KILL, EventKind, FileEvent, FileOp},
    rules::NO_RULE,
    verdict::{Backend, Verdict},
};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    emit, identity,
    verdict::{self, Judgement},
};

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn ag_open_budget_openat(_ctx: TracePointContext) -> u32 {
    count_open();
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn ag_open_budget_openat2(_ctx: TracePointContext) -> u32 {
    count_open();
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn ag_open_budget_open(_ctx: TracePointContext) -> u32 {
    count_open();
    0
}

#[inline(always)]
fn count_open() {
    let Some(subject) = identity::current() else {
        return;
    };
    let (mut j, _) = verdict::finish(
        &subject,
        Some(ThrottleKind::Open),
        Judgement::allow(NO_RULE),
    );
    if j.verdict == Verdict::Allowed {
        return;
    }
    if j.verdict == Verdict::Throttled
        && j.flags & (EVENT_ESCALATE_FREEZE | EVENT_ESCALATE_KILL) == 0
    {
        // Nothing here can refuse the open: say so rather than claim it was refused.
        j.verdict = Verdict::AuditDenied;
    }
    let Some(mut entry) = emit::reserve::<FileEvent>(&subject, &j) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved ring buffer memory of the right size, written field by field.
    unsafe {
        (*ev).header = entry.header(EventKind::FileOpen, Backend::Tracepoint, &subject, &j);
        (*ev).op = FileOp::Open as u16;
        (*ev).access = 0;
        (*ev)._pad = 0;
        (*ev).target_pid = 0;
        (*ev).path[0] = 0;
    }
    entry.send();
}
