//! Kernel -> log: drains the ring buffers on a dedicated thread, names what it can, appends to
//! the log, accounts for drops, and turns budget breaches into freezes or kills.
//!
//! The thread is not a tokio worker: a burst of events keeps it busy without starving the
//! control socket, and it does not wait for the disk (the log's fsync is the [`tick`] task's,
//! outside the append lock) unless the log has no room left ([`wait_for_room`]). Per batch it takes the log lock once; names come from the
//! published [`NameSnapshot`](super::names::NameSnapshot), not the state lock, which it takes
//! only for events that ask for an escalation.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use agentguard_common::{
    agent::ThrottleKind,
    event::{EVENT_ESCALATE_FREEZE, EVENT_ESCALATE_KILL, EventKind},
    user::{DecodeError, KernelEvent},
};
use tokio::{runtime::Handle, sync::watch};

use super::{Shared, denials, metrics::ActionTally, operator, state::Breach};
use crate::{
    audit::{
        self,
        prune::Retention,
        record::{Actor, Body},
    },
    control::proto::Selector,
    events::{
        Names as _,
        ring::{EventRing, Wakeups},
        to_action_ref,
    },
};

/// How long an escalation waits for the kernel to report the instance frozen or empty.
const ESCALATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Records handled per lock of the log.
const BATCH: usize = 4096;

/// How long the ingest thread waits for the log to take records again before letting the log
/// refuse them (counted, and chained as a `log-backlog` gap): a slow disk gets this long to
/// finish the fsync a segment rotation waits for; a failing disk does not hold up the
/// escalations of later events for longer.
const ROOM_WAIT: Duration = Duration::from_secs(5);

/// How often the ring of allowed events is drained: the programs send those without waking the
/// daemon (see the eBPF crate's `emit::Pending::send`) unless the ring is filling up.
pub const DRAIN_ALLOWED: Duration = Duration::from_millis(20);

/// Starts the ingest thread for the ring of allowed events (`events`, drained when the kernel
/// wakes the daemon and every [`DRAIN_ALLOWED`]) and the ring of refusals and escalations
/// (`alerts`, drained as soon as the kernel wakes the daemon, and between batches of the
/// other). It drains both once more after shutdown is requested and accounts for drops; the
/// returned task ends when the thread has.
pub fn spawn(
    shared: Arc<Shared>,
    events: EventRing,
    alerts: EventRing,
    shutdown: watch::Receiver<Option<bool>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let wakeups = Wakeups::new(&events, &alerts).map_err(std::io::Error::from)?;
    let runtime = Handle::current();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("agentguard-ingest".into())
        .spawn(move || {
            super::priority::raise_ingest_thread();
            let mut p = Pipeline::new(shared, runtime);
            p.run(&wakeups, events, alerts, &shutdown);
            let _ = done.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}

/// The ingest thread's buffers, reused from batch to batch.
struct Pipeline {
    shared: Arc<Shared>,
    runtime: Handle,
    /// Decoded in place and handled there: an event is the size of the largest kind (a path
    /// event's), and each move of one is a copy of that size.
    batch: Vec<Result<KernelEvent, DecodeError>>,
    tally: ActionTally,
    /// The last wait for room ended without any: the disk is failing, not slow. Until the log
    /// has room again records are refused (and counted) at once, so that [`ROOM_WAIT`] bounds
    /// the whole episode, not each record of it.
    gave_up_on_room: bool,
}

impl Pipeline {
    fn new(shared: Arc<Shared>, runtime: Handle) -> Self {
        Self {
            shared,
            runtime,
            batch: Vec::with_capacity(BATCH),
            tally: ActionTally::default(),
            gave_up_on_room: false,
        }
    }

    fn run(
        &mut self,
        wakeups: &Wakeups,
        mut events: EventRing,
        mut alerts: EventRing,
        shutdown: &watch::Receiver<Option<bool>>,
    ) {
        let mut next_drain = Instant::now() + DRAIN_ALLOWED;
        // The shutdown request is seen within one drain interval.
        while shutdown.borrow().is_none() {
            let woken = match wakeups.wait(next_drain.saturating_duration_since(Instant::now())) {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(error = %e, "waiting on the event ring buffers failed");
                    break;
                }
            };
            if woken.alerts {
                self.drain(&mut alerts, None);
            }
            let now = Instant::now();
            if woken.events || now >= next_drain {
                self.drain(&mut events, Some(&mut alerts));
                if now >= next_drain {
                    next_drain = now + DRAIN_ALLOWED;
                }
            }
        }
        // Whatever the kernel produced before the stop still goes into the log.
        self.drain(&mut alerts, None);
        self.drain(&mut events, Some(&mut alerts));
        check_lost(&self.shared, &self.runtime);
    }

    /// Empties `ring` batch by batch; between batches, `alerts` too, so a refusal or an
    /// escalation never waits behind a long drain of allowed events.
    fn drain(&mut self, ring: &mut EventRing, mut alerts: Option<&mut EventRing>) {
        loop {
            let n = ring.fill(BATCH, &mut self.batch);
            self.process();
            if let Some(alerts) = alerts.as_deref_mut() {
                while alerts.fill(BATCH, &mut self.batch) > 0 {
                    self.process();
                }
            }
            if n < BATCH {
                return;
            }
        }
    }

    /// Logs the batch: escalations first (so a freeze or kill never waits for the log), then
    /// every record in kernel order under one lock of the log.
    fn process(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut escalations = Vec::new();
        for ev in &self.batch {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable kernel event");
                    continue;
                }
            };
            let h = ev.header();
            if h.flags & (EVENT_ESCALATE_FREEZE | EVENT_ESCALATE_KILL) != 0 {
                let mut st = self.shared.lock_state();
                if let Some(e) = escalation(&mut st, h.cgroup_id, h.flags, h.ktime_ns, Some(h.kind))
                {
                    escalations.push(e);
                }
            }
        }
        spawn_escalations(&self.shared, &self.runtime, escalations);

        let names = self.shared.names.load();
        let (wall, mono) = audit::now();
        let mut log = self.shared.lock_log();
        for ev in self.batch.iter().filter_map(|ev| ev.as_ref().ok()) {
            if log.has_room() {
                self.gave_up_on_room = false;
            } else if !self.gave_up_on_room {
                drop(log);
                let shared = &self.shared;
                self.gave_up_on_room = !wait_for_room(
                    || shared.lock_log().has_room(),
                    || commit(shared),
                    ROOM_WAIT,
                );
                log = self.shared.lock_log();
            }
            let action = to_action_ref(ev, &**names);
            let ktime = ev.header().ktime_ns;
            self.tally.add(action.agent, action.kind, action.verdict);
            // Kernel times are CLOCK_MONOTONIC; wall time is derived from the same offset.
            let wall_ns = wall.saturating_sub(mono.saturating_sub(ktime));
            if denials::wanted(action.instance, action.verdict) {
                self.shared.note_refusal(wall_ns, &action.to_owned_action());
            }
            if let Err(e) = log.append_action(wall_ns, ktime, &action) {
                tracing::error!(error = %e, "cannot append to the audit log");
            }
        }
        drop(log);
        self.batch.clear();
        self.shared.metrics.fold(&mut self.tally);
    }
}

/// Periodic work: log durability and seals, drop accounting.
pub async fn tick(
    shared: Arc<Shared>,
    retention: Option<Retention>,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    let mut last_prune: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => break,
        }
        check_lost(&shared, &Handle::current());
        let committer = shared.clone();
        match tokio::task::spawn_blocking(move || commit(&committer)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit log tick failed"),
            Err(e) => tracing::error!(error = %e, "audit log tick panicked"),
        }
        if let Some(keep) = retention
            && last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY)
        {
            last_prune = Some(Instant::now());
            prune(&shared, keep);
        }
    }
}

/// The log's housekeeping with its fsync outside the append lock (group commit): records
/// appended meanwhile wait for the next one, not for this one's disk.
pub fn commit(shared: &Shared) -> Result<(), audit::AuditError> {
    let ticket = shared.lock_log().begin_sync()?;
    if let Some(mut ticket) = ticket {
        // A failed ticket is handed back too: a rotation it carried must not stay pending.
        if let Err(e) = ticket.run() {
            shared.lock_log().abandon_sync(ticket);
            return Err(e);
        }
        shared.lock_log().end_sync(ticket)?;
    }
    Ok(())
}

/// Waits until the log has room (`has_room`), running its `commit` (the fsync, and the segment
/// rotation a backlog usually waits for) rather than letting it refuse records, for at most
/// `limit`; true when there is room. Meanwhile the ring buffers hold what arrives, and what
/// they cannot hold the kernel counts as lost, a count the log chains: a slow disk loses no
/// record without a trace.
fn wait_for_room(
    has_room: impl Fn() -> bool,
    mut commit: impl FnMut() -> Result<(), audit::AuditError>,
    limit: Duration,
) -> bool {
    let start = Instant::now();
    let mut reported = false;
    loop {
        if let Err(e) = commit()
            && !std::mem::replace(&mut reported, true)
        {
            tracing::warn!(error = %e, "the audit log is waiting for the disk");
        }
        if has_room() {
            return true;
        }
        if start.elapsed() >= limit {
            tracing::error!(
                "the audit log still has no room after {limit:?}: records are refused (and counted in the log)"
            );
            return false;
        }
        // Another commit (the tick's) holds the rotation: give it the CPU.
        std::thread::sleep(Duration::from_millis(1));
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
fn check_lost(shared: &Arc<Shared>, runtime: &Handle) {
    check_ring_lost(shared);
    check_gaps(shared, runtime);
}

/// Gaps the kernel counted outside the main ring's counter: each as a `LostEvents` record, and
/// escalations asked for by refusals that were not sent carried out all the same.
fn check_gaps(shared: &Arc<Shared>, runtime: &Handle) {
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
                    agent: agent.to_owned(),
                    instance: instance.to_owned(),
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
    spawn_escalations(shared, runtime, escalations);
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

/// Freezes or kills each instance (in the background), as its budget asks.
fn spawn_escalations(
    shared: &Arc<Shared>,
    runtime: &Handle,
    escalations: Vec<(operator::Op, crate::cgroup::Instance, String)>,
) {
    for (op, inst, budget) in escalations {
        let shared = shared.clone();
        runtime.spawn(async move {
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

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, MutexGuard, mpsc};

    use super::*;
    use crate::audit::{
        AuditLog,
        testutil::{action, options, read_all},
        writer::LogOptions,
    };

    fn lock(log: &Mutex<AuditLog>) -> MutexGuard<'_, AuditLog> {
        log.lock().expect("not poisoned")
    }

    /// What the daemon's `commit` does, on a bare log.
    fn commit(log: &Mutex<AuditLog>) -> Result<(), audit::AuditError> {
        let ticket = lock(log).begin_sync()?;
        if let Some(mut ticket) = ticket {
            ticket.run()?;
            lock(log).end_sync(ticket)?;
        }
        Ok(())
    }

    /// The log has no room while another thread (the tick) does a segment rotation: the
    /// ingest side waits for it instead of having records refused, gets room as soon as that
    /// rotation ends, and every record is in the chain with no gap.
    #[test]
    fn waiting_for_room_lets_the_rotation_in_flight_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Mutex::new(
            AuditLog::open(LogOptions {
                segment_bytes: 4096,
                max_pending: 8192,
                ..options(dir.path())
            })
            .expect("open"),
        );
        let mut appended = 0u64;
        // Fill the segment until the rotation is decided and taken by the "tick".
        let ticket = loop {
            lock(&log)
                .append(appended, appended, action(appended))
                .expect("append");
            appended += 1;
            if let Some(ticket) = lock(&log).begin_sync().expect("begin") {
                break ticket;
            }
        };
        while lock(&log).has_room() {
            lock(&log)
                .append(appended, appended, action(appended))
                .expect("append");
            appended += 1;
        }
        let (go, gone) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let log = &log;
            s.spawn(move || {
                // The tick's rotation, held until the ingest side is waiting for it.
                gone.recv().expect("the waiter starts");
                let mut ticket = ticket;
                ticket.run().expect("rotation");
                lock(log).end_sync(ticket).expect("end");
            });
            let mut first = true;
            let room = wait_for_room(
                || lock(log).has_room(),
                || {
                    if std::mem::replace(&mut first, false) {
                        go.send(()).expect("the rotation thread waits");
                    }
                    commit(log)
                },
                // Only a bound for a broken test: the wait ends when the rotation does.
                Duration::from_secs(600),
            );
            assert!(room, "room once the rotation in flight ended");
        });
        for _ in 0..10 {
            lock(&log)
                .append(appended, appended, action(appended))
                .expect("append");
            appended += 1;
        }
        lock(&log).flush().expect("flush");
        drop(log);
        let records = read_all(dir.path());
        assert!(
            records
                .iter()
                .all(|r| !matches!(r.body, Body::LostEvents { .. })),
            "nothing was refused"
        );
        assert_eq!(records.len() as u64, appended);
        let report = audit::verify(dir.path(), None, None).expect("verify");
        assert!(report.intact(), "{report}");
    }
}
