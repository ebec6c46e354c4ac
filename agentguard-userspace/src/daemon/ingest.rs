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
        record::{Actor, Body},
    },
    control::proto::Selector,
    events::{ring::EventRing, to_action},
    policy::throttle::kind_name,
};

/// How long an escalation waits for the kernel to report the instance frozen or empty.
const ESCALATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Records handled per lock of the state and the log.
const BATCH: usize = 4096;

/// Drains the ring buffer until shutdown, then once more.
pub async fn run(
    shared: Arc<Shared>,
    mut ring: EventRing,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    loop {
        tokio::select! {
            r = ring.next_batch(BATCH) => match r {
                Ok(batch) => process(&shared, batch),
                Err(e) => {
                    tracing::error!(error = %e, "event ring buffer failed");
                    break;
                }
            },
            _ = shutdown.changed() => break,
        }
        check_lost(&shared);
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
pub async fn tick(shared: Arc<Shared>, mut shutdown: watch::Receiver<Option<bool>>) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => break,
        }
        check_lost(&shared);
        if let Err(e) = shared.lock_log().tick() {
            tracing::error!(error = %e, "audit log tick failed");
        }
    }
}

/// Writes a `Lost` record when the kernel's drop counter moved since the last one logged.
fn check_lost(shared: &Shared) {
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
        if let Err(e) = log.append(
            wall,
            mono,
            Body::Lost {
                dropped: total - logged,
                total,
            },
        ) {
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
            let op = if h.flags & EVENT_ESCALATE_KILL != 0 {
                Some(operator::Op::Kill)
            } else if h.flags & EVENT_ESCALATE_FREEZE != 0 {
                Some(operator::Op::Freeze)
            } else {
                None
            };
            if let Some(op) = op
                && Breach::acts_on(st.breaches.get(&h.cgroup_id), h.ktime_ns)
                && st.breaches.insert(h.cgroup_id, Breach::Escalated) != Some(Breach::Escalated)
                && let Some(inst) = st.instances.get(&h.cgroup_id)
            {
                let budget = st
                    .policy
                    .agent(&inst.agent)
                    .map(|a| {
                        a.limits
                            .iter()
                            .filter(|l| l.kind == throttle_kind(h.kind))
                            .map(|l| {
                                format!("{} {} per {:?}", kind_name(l.kind), l.rate, l.scope)
                                    .to_lowercase()
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                escalations.push((op, inst.clone(), budget));
            }
            actions.push((h.ktime_ns, action));
        }
    }
    {
        let (wall, mono) = audit::now();
        let mut log = shared.lock_log();
        for (ktime, action) in actions {
            // Kernel times are CLOCK_MONOTONIC; wall time is derived from the same offset.
            let wall_ns = wall.saturating_sub(mono.saturating_sub(ktime));
            shared.note_refusal(wall_ns, &action);
            if let Err(e) = log.append(wall_ns, ktime, Body::Action(action)) {
                tracing::error!(error = %e, "cannot append to the audit log");
            }
        }
    }
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
