//! Kernel -> log: drains the ring buffer, names what it can, appends to the log, accounts for
//! drops, and turns budget breaches into freezes or kills.

use std::{sync::Arc, time::Duration};

use agentguard_common::{
    agent::ThrottleKind,
    event::{EVENT_ESCALATE_FREEZE, EVENT_ESCALATE_KILL, EventKind},
    user::{DecodeError, KernelEvent},
};
use tokio::sync::watch;

use super::{Shared, operator, state::Breach};
use crate::{
    audit::{
        self,
        prune::Retention,
        record::{Actor, Body},
    },
    control::proto::Selector,
    events::{Names as _, ring::EventRing, to_action},
};

/// How long an escalation waits for the kernel to report the instance frozen or empty.
const ESCALATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Records handled per lock of the state and the log.
const BATCH: usize = 4096;

/// How often the ring of allowed events is drained: the programs send those without waking the
/// daemon (see the eBPF crate's `emit::Pending::send`) unless the ring is filling up.
pub const DRAIN_ALLOWED: Duration = Duration::from_millis(20);

/// Drains the ring buffer until shutdown, then once more: when the kernel wakes the daemon, and
/// every `drain_every` for events sent without a wake-up. Lost-event accounting is on the
/// [`tick`], not per batch.
pub async fn run(
    shared: Arc<Shared>,
    mut ring: EventRing,
    drain_every: Option<Duration>,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let mut drain = drain_every.map(|every| {
        let mut drain = tokio::time::interval(every);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        drain
    });
    loop {
        tokio::select! {
            r = ring.next_batch(BATCH) => match r {
                Ok(batch) => process(&shared, batch),
                Err(e) => {
                    tracing::error!(error = %e, "event ring buffer failed");
                    break;
                }
            },
            _ = async { drain.as_mut()?.tick().await; Some(()) }, if drain.is_some() => {
                let batch = ring.batch_now(BATCH);
                if !batch.is_empty() {
                    process(&shared, batch);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    // Whatever the kernel produced before the stop still goes into the log.
    loop {
        let batch = ring.batch_now(BATCH);
        if batch.is_empty() {
            break;
        }
        process(&shared, batch);
    }
    check_lost(&shared);
}

/// Periodic work: log durability and seals, drop accounting.
pub async fn tick(
    shared: Arc<Shared>,
    retention: Option<Retention>,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => break,
        }
        check_lost(&shared);
        if let Err(e) = shared.lock_log().tick() {
            tracing::error!(error = %e, "audit log tick failed");
        }
        if let Some(keep) = retention
            && last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY)
        {
            last_prune = Some(std::time::Instant::now());
            prune(&shared, keep);
        }
    }
}

/// How often the daemon applies its log retention (segments are 64 MiB by default, so a
/// finer grain would rarely find anything to remove).
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Applies the retention rule; failures are reported and retried at the next interval.
fn prune(shared: &Shared, keep: Retention) {
    let by = Actor::Daemon {
        reason: "retention".into(),
    };
    match shared.lock_log().prune(keep, by) {
        Ok(Some(p)) => tracing::info!(
            segments = p.segments,
            bytes = p.bytes,
            first_kept_seq = p.first_kept_seq,
            "log pruned ({keep})"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "cannot prune the log ({keep})"),
    }
}

/// Writes a `Lost` record when the kernel's drop counter moved since the last one logged, and
/// `LostEvents` records for refusals lost on full rings and for events over instance budgets.
fn check_lost(shared: &Arc<Shared>) {
    check_ring_lost(shared);
    check_gaps(shared);
}

/// Gaps the kernel counted outside the main ring's counter: each as a `LostEvents` record, and
/// escalations asked for by refusals that were not sent carried out all the same.
fn check_gaps(shared: &Arc<Shared>) {
    let mut records = Vec::new();
    let mut escalations = Vec::new();
    {
        let mut guard = shared.lock_state();
        let st = &mut *guard;
        match st.maps.lost_refusals_total() {
            Ok(total) if total > st.gaps.refusal_ring => {
                records.push(Body::LostEvents {
                    source: "refusal-ring".into(),
                    agent: String::new(),
                    instance: String::new(),
                    cgroup_id: 0,
                    allowed: 0,
                    refusals: total - st.gaps.refusal_ring,
                });
                st.gaps.refusal_ring = total;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the lost-refusal counter"),
        }
        for (cgroup_id, b) in st.maps.event_budgets() {
            let (allowed, refusals) = st.gaps.instances.get(&cgroup_id).copied().unwrap_or((0, 0));
            let live = st.instances.contains_key(&cgroup_id);
            if b.lost_allowed > allowed || b.lost_refusals > refusals {
                let (agent, instance) = st.instance(cgroup_id).unwrap_or_default();
                records.push(Body::LostEvents {
                    source: "instance-budget".into(),
                    agent,
                    instance,
                    cgroup_id,
                    allowed: b.lost_allowed.saturating_sub(allowed),
                    refusals: b.lost_refusals.saturating_sub(refusals),
                });
                st.gaps
                    .instances
                    .insert(cgroup_id, (b.lost_allowed, b.lost_refusals));
            }
            if live
                && b.escalate != 0
                && let Some(e) = escalation(st, cgroup_id, b.escalate, b.escalate_ns, None)
            {
                escalations.push(e);
            }
            if !live {
                // Ended: its last gap is logged above; the kernel will not charge it again.
                if let Err(e) = st.maps.forget_event_budget(cgroup_id) {
                    tracing::warn!(cgroup_id, error = %e, "cannot remove an event budget");
                }
                st.gaps.instances.remove(&cgroup_id);
            }
        }
    }
    for body in records {
        shared.log(body);
    }
    spawn_escalations(shared, escalations);
}

/// The daemon's answer to a budget breach the kernel reported for `cgroup_id` at `ktime_ns`
/// (`flags`: `EVENT_ESCALATE_*`), unless it already acted on this breach.
fn escalation(
    st: &mut super::State,
    cgroup_id: u64,
    flags: u32,
    ktime_ns: u64,
    kind: Option<u16>,
) -> Option<(operator::Op, crate::cgroup::Instance, String)> {
    let op = if flags & EVENT_ESCALATE_KILL != 0 {
        operator::Op::Kill
    } else if flags & EVENT_ESCALATE_FREEZE != 0 {
        operator::Op::Freeze
    } else {
        return None;
    };
    if !Breach::acts_on(st.breaches.get(&cgroup_id), ktime_ns)
        || st.breaches.insert(cgroup_id, Breach::Escalated) == Some(Breach::Escalated)
    {
        return None;
    }
    let inst = st.instances.get(&cgroup_id)?.clone();
    let budget = st
        .policy
        .agent(&inst.agent)
        .map(|a| {
            a.limits
                .iter()
                .filter(|l| kind.is_none_or(|k| l.kind == throttle_kind(k)))
                .map(|l| {
                    format!("{} {} per {}", l.kind.name(), l.rate, l.scope.name()).to_lowercase()
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    Some((op, inst, budget))
}

/// Writes a `Lost` record when the kernel's drop counter of the main ring moved since the last
/// one logged.
fn check_ring_lost(shared: &Shared) {
    let total = match shared.lock_state().maps.lost_total() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the lost-event counter");
            return;
        }
    };
    let mut log = shared.lock_log();
    // A counter below the logged total means the maps were recreated (a new object version).
    let logged = log.last_lost_total().filter(|l| *l <= total).unwrap_or(0);
    if total > logged {
        let (wall, mono) = audit::now();
        let body = Body::Lost {
            dropped: total - logged,
            total,
        };
        shared.metrics.observe(&body);
        if let Err(e) = log.append(wall, mono, body) {
            tracing::error!(error = %e, "cannot log lost events");
        }
    }
}

fn throttle_kind(kind: u16) -> ThrottleKind {
    match EventKind::from_u16(kind) {
        Some(EventKind::Exec) => ThrottleKind::Exec,
        Some(EventKind::FileOpen) => ThrottleKind::Open,
        _ => ThrottleKind::Connect,
    }
}

fn process(shared: &Arc<Shared>, batch: Vec<Result<KernelEvent, DecodeError>>) {
    if batch.is_empty() {
        return;
    }
    let mut actions = Vec::with_capacity(batch.len());
    let mut escalations = Vec::new();
    {
        let mut st = shared.lock_state();
        for ev in batch {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable kernel event");
                    continue;
                }
            };
            let action = to_action(&ev, &*st);
            let h = ev.header();
            if let Some(e) = escalation(&mut st, h.cgroup_id, h.flags, h.ktime_ns, Some(h.kind)) {
                escalations.push(e);
            }
            actions.push((h.ktime_ns, action));
        }
    }
    {
        let (wall, mono) = audit::now();
        let mut log = shared.lock_log();
        for (ktime, action) in actions {
            let body = Body::Action(action);
            shared.metrics.observe(&body);
            // Kernel times are CLOCK_MONOTONIC; wall time is derived from the same offset.
            let wall_ns = wall.saturating_sub(mono.saturating_sub(ktime));
            if let Body::Action(action) = &body {
                shared.note_refusal(wall_ns, action);
            }
            if let Err(e) = log.append(wall_ns, ktime, body) {
                tracing::error!(error = %e, "cannot append to the audit log");
            }
        }
    }
    spawn_escalations(shared, escalations);
}

/// Freezes or kills each instance (in the background), as its budget asks.
fn spawn_escalations(
    shared: &Arc<Shared>,
    escalations: Vec<(operator::Op, crate::cgroup::Instance, String)>,
) {
    for (op, inst, budget) in escalations {
        let shared = shared.clone();
        tokio::spawn(async move {
            tracing::warn!(instance = %inst.name, ?op, %budget, "budget exceeded: escalating");
            let target = Selector::Instance(inst.name.clone()).to_string();
            let out = operator::run(
                &shared,
                op,
                target,
                vec![inst],
                ESCALATION_TIMEOUT,
                Actor::Daemon {
                    reason: "budget exceeded".into(),
                },
                Some(budget),
            )
            .await;
            for e in out.errors {
                tracing::error!("escalation failed: {e}");
            }
        });
    }
}
