//! Turning a rule decision into the final verdict: audit mode, budgets, counters.

use agentguard_common::{
    agent::{AGENT_AUDIT, AGENT_LOG_ALLOWED, Counters, ThrottleKind},
    event::{EVENT_ESCALATE_FREEZE, EVENT_ESCALATE_KILL},
    rules::NO_RULE,
    verdict::Verdict,
};

use crate::{
    emit::{BPF_NOEXIST, add_shared},
    identity::Subject,
    maps::COUNTERS,
    throttle,
};

/// A decision about one action.
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// The rule that matched, or [`NO_RULE`].
    pub rule_id: u32,
    /// `EVENT_*` flags.
    pub flags: u32,
}

impl Judgement {
    /// Allowed by `rule_id` (or by the absence of rules of that kind when it is [`NO_RULE`]).
    #[inline(always)]
    pub fn allow(rule_id: u32) -> Self {
        Self {
            verdict: Verdict::Allowed,
            rule_id,
            flags: 0,
        }
    }

    /// Refused with `verdict` (Denied or Killed), with extra `EVENT_*` flags.
    #[inline(always)]
    pub fn refuse(verdict: Verdict, flags: u32) -> Self {
        Self {
            verdict,
            rule_id: NO_RULE,
            flags,
        }
    }

    /// Whether the action goes ahead.
    #[inline(always)]
    pub fn permits(&self) -> bool {
        matches!(self.verdict, Verdict::Allowed | Verdict::AuditDenied)
    }
}

/// Completes a rule decision: charges the budget of an allowed action, applies audit mode,
/// counts the verdict, and says whether an event must be sent (every refusal, and allowed
/// actions when the agent logs them).
#[inline(always)]
pub fn finish(
    subject: &Subject,
    kind: Option<ThrottleKind>,
    mut j: Judgement,
) -> (Judgement, bool) {
    let flags = subject.flags();
    j.flags |= subject.event_flags;
    if j.verdict == Verdict::Allowed
        && let (Some(kind), Some(config)) = (kind, subject.config)
        && let Some(escalation) = throttle::charge(subject, config, kind)
    {
        j.verdict = Verdict::Throttled;
        j.flags |= escalation;
    }
    if flags & AGENT_AUDIT != 0 && !matches!(j.verdict, Verdict::Allowed) {
        j.verdict = Verdict::AuditDenied;
        // Audit mode never escalates: it is for watching, not stopping.
        j.flags &= !(EVENT_ESCALATE_FREEZE | EVENT_ESCALATE_KILL);
    }
    count(subject.cgroup_id, j.verdict);
    let log = j.verdict != Verdict::Allowed || flags & AGENT_LOG_ALLOWED != 0;
    (j, log)
}

#[inline(always)]
fn count(cgroup_id: u64, verdict: Verdict) {
    if let Some(c) = COUNTERS.get_ptr_mut(cgroup_id) {
        add(c, verdict);
        return;
    }
    let mut c = Counters::default();
    match verdict {
        Verdict::Allowed => c.allowed = 1,
        Verdict::AuditDenied => c.audit_denied = 1,
        Verdict::Throttled => {
            c.denied = 1;
            c.throttled = 1;
        }
        Verdict::Denied | Verdict::Killed => c.denied = 1,
    }
    // Only if still absent: another run on this CPU (which preempted this one) may have created
    // the entry meanwhile, and overwriting it would drop what it counted. A full map only loses
    // statistics, never a verdict.
    if COUNTERS.insert(cgroup_id, c, BPF_NOEXIST).is_err()
        && let Some(c) = COUNTERS.get_ptr_mut(cgroup_id)
    {
        add(c, verdict);
    }
}

/// Counts `verdict` in this CPU's value of an entry. Atomic adds: a program run can be preempted
/// on its CPU by another run counting in the same value.
#[inline(always)]
fn add(c: *mut Counters, verdict: Verdict) {
    // SAFETY: per-CPU value of a map entry, valid for this program run, aligned to 8.
    unsafe {
        match verdict {
            Verdict::Allowed => add_shared(&raw mut (*c).allowed),
            Verdict::AuditDenied => add_shared(&raw mut (*c).audit_denied),
            Verdict::Throttled => {
                add_shared(&raw mut (*c).denied);
                add_shared(&raw mut (*c).throttled);
            }
            Verdict::Denied | Verdict::Killed => add_shared(&raw mut (*c).denied),
        }
    }
}
