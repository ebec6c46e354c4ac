//! Landlock refusals into the log (fallback file backend, Linux >= 6.15).
//!
//! Landlock refuses in the kernel and tells nobody but the audit subsystem. At start-up the
//! daemon joins the audit read-log multicast group (never the unicast audit daemon slot, so a
//! host's auditd keeps working) and, if audit was off, switches it on and restores it on exit.
//! Switching audit on gives every task created from then on syscall-audit work; two task-filter
//! `never` rules exclude every uid outside agentguard's dynamic uid range, so only agents pay.
//!
//! Each refusal arrives as an `AUDIT_LANDLOCK_ACCESS` record. The agent is found from, in
//! order: the `SYSCALL` record of the same event (the denying pid, present for tasks with an
//! audit context) and its cgroup; the domain's creator, named when the domain first appeared
//! (`AUDIT_LANDLOCK_DOMAIN status=allocated`, with the creator's pid) and cached by domain id;
//! the dynamic uid of the instance.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use agentguard_common::verdict::{Backend, Verdict};
use nix::sys::socket::{MsgFlags, recv};
use tokio::{io::unix::AsyncFd, sync::watch};

use super::{
    Shared,
    identity::{DYNAMIC_UID_BASE, DYNAMIC_UID_COUNT},
};
use crate::{
    audit::{
        self,
        record::{Action, Body},
    },
    cgroup::Hierarchy,
    ebpf::backends::{self, FileBackend},
    events::landlock::{
        AUDIT_EOE, AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN, AUDIT_SYSCALL, AuditRecord,
        refused,
    },
    sys::audit::{self as netlink, Control, NeverRule},
};

/// Landlock audit records exist from this ABI on (Linux 6.15).
pub const LANDLOCK_AUDIT_ABI: i32 = 7;
/// How long a refusal waits for the rest of its event (its SYSCALL record, its domain's first
/// record) before it is logged with what is known.
const GRACE: Duration = Duration::from_millis(100);
/// Events waiting at once; beyond it the oldest is logged early.
const PENDING_MAX: usize = 4096;
/// Domains remembered.
const DOMAINS_MAX: usize = 16384;
/// Refusal records logged per instance tree (a top-level instance and its sub-agents) per
/// one-second window; beyond it they are counted and logged as a `lost-events` gap (`source` =
/// `landlock-budget`, naming the top-level instance). The same figure as the kernel's refusal
/// event budget, so an agent hammering a refused path loses its own tree's records, not the
/// daemon's time or the disk, however many sub-agents it starts.
pub const PER_INSTANCE_PER_SECOND: u64 = 2000;
/// The audit backlog the daemon asks for when it switches audit on (the kernel's default is
/// 64 records); the limit found is put back on exit.
const BACKLOG_LIMIT: u32 = 8192;
/// How often gaps (over-budget refusals, records the kernel or the socket dropped) are logged.
const GAP_INTERVAL: Duration = Duration::from_secs(1);
/// The file in the state directory that says the daemon switched audit on (so a daemon that
/// crashed is followed by one that still switches it off).
const MARKER: &str = "audit-enabled-by-agentguard";

/// The task-filter rules that keep non-agents free of syscall-audit work.
pub const NEVER_RULES: [NeverRule; 2] = [
    NeverRule::UidBelow(DYNAMIC_UID_BASE),
    NeverRule::UidFrom(DYNAMIC_UID_BASE + DYNAMIC_UID_COUNT),
];

/// Whether this kernel can report Landlock refusals, and why not.
pub fn supported() -> Result<(), String> {
    match backends::landlock_abi() {
        Some(abi) if abi >= LANDLOCK_AUDIT_ABI => {}
        Some(abi) => {
            return Err(format!(
                "file refusals not logged on this kernel (Landlock ABI {abi}; audit records need ABI {LANDLOCK_AUDIT_ABI}, Linux 6.15)"
            ));
        }
        None => return Err("file refusals not logged on this kernel (no Landlock)".into()),
    }
    Control::open()
        .and_then(|mut c| c.status())
        .map(drop)
        .map_err(|e| format!("file refusals not logged on this kernel (audit unavailable: {e})"))
}

/// The audit state the daemon changed, to put back on exit.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    /// Set when the daemon switched audit on: the marker file to remove after restoring.
    restore: Option<PathBuf>,
}

/// Joins the multicast group and switches audit on when it is off. `None` (with the reason
/// logged) when the file backend is not Landlock or the kernel cannot report.
pub fn start(state_dir: &Path, file: FileBackend) -> Option<Listener> {
    if file != FileBackend::Landlock {
        return None;
    }
    if let Err(why) = supported() {
        tracing::warn!("{why}");
        return None;
    }
    match listen(state_dir) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("file refusals will not be logged: {e}");
            None
        }
    }
}

fn listen(state_dir: &Path) -> Result<Listener, String> {
    // Joined before audit is switched on, so nothing after that is missed.
    let fd = netlink::multicast_reader().map_err(|e| e.to_string())?;
    let mut control = Control::open().map_err(|e| e.to_string())?;
    let status = control.status().map_err(|e| e.to_string())?;
    let marker = state_dir.join(MARKER);
    let ours = marker.exists();
    if status.enabled == 0 || ours {
        // The marker keeps the backlog limit found (a crashed daemon's marker already does).
        if !ours {
            std::fs::write(&marker, format!("{}\n", status.backlog_limit))
                .map_err(|e| format!("{}: {e}", marker.display()))?;
        }
        for rule in NEVER_RULES {
            control.add_rule(rule).map_err(|e| e.to_string())?;
        }
        // Landlock logs from atomic context: a record that finds the backlog full is dropped
        // (counted in the kernel's `lost`). The default 64 loses most of a burst.
        if status.backlog_limit < BACKLOG_LIMIT {
            control
                .set_backlog_limit(BACKLOG_LIMIT)
                .map_err(|e| e.to_string())?;
        }
        control.set_enabled(1).map_err(|e| e.to_string())?;
        tracing::info!(
            "audit switched on for Landlock refusals (restored on exit); tasks outside the dynamic uid range get no syscall audit context"
        );
        Ok(Listener {
            fd,
            restore: Some(marker),
        })
    } else {
        tracing::info!(
            enabled = status.enabled,
            auditd_pid = status.pid,
            "audit already on: reading Landlock refusals from its multicast group, leaving its state and rules alone"
        );
        Ok(Listener { fd, restore: None })
    }
}

impl Listener {
    /// Whether the daemon installed its `never` rules (then a refusal without a SYSCALL record
    /// comes from a task created outside the dynamic uid range: an agent's first process).
    fn rules_installed(&self) -> bool {
        self.restore.is_some()
    }
}

/// Puts audit back as the daemon found it (`marker` is set when the daemon switched it on).
fn restore_audit(marker: Option<PathBuf>) {
    let Some(marker) = marker else { return };
    let backlog = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|n| *n > 0);
    let result = Control::open().and_then(|mut c| {
        for rule in NEVER_RULES {
            c.delete_rule(rule)?;
        }
        c.set_enabled(0)?;
        match backlog {
            Some(n) => c.set_backlog_limit(n),
            None => Ok(()),
        }
    });
    match result {
        Ok(()) => {
            let _ = std::fs::remove_file(&marker);
            tracing::info!("audit switched off again, as the daemon found it");
        }
        Err(e) => tracing::error!(error = %e, "cannot restore the audit state"),
    }
}

/// An instance, as a refusal names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// Full agent name.
    pub agent: String,
    /// Instance path.
    pub instance: String,
    /// Instance cgroup id.
    pub cgroup_id: u64,
}

/// What the assembler asks the daemon.
pub trait Resolve {
    /// The instance a live process belongs to (nearest instance at or above its cgroup).
    fn by_pid(&self, pid: u32) -> Option<Named>;
    /// The instance a dynamic uid was handed to.
    fn by_uid(&self, uid: u32) -> Option<Named>;
    /// The instance whose first process had this pid (live or exited).
    fn by_first_pid(&self, pid: u32) -> Option<Named>;
    /// The dynamic uid an instance runs as, if it runs as one.
    fn dynamic_uid(&self, cgroup_id: u64) -> Option<u32>;
}

#[derive(Clone, Debug)]
struct Domain {
    pid: u32,
    uid: u32,
    named: Option<Named>,
}

#[derive(Debug, Default)]
struct Syscall {
    pid: u32,
    uid: u32,
    comm: String,
    named: Option<Named>,
}

#[derive(Debug)]
struct Pending {
    since: Instant,
    access: Vec<AuditRecord>,
    syscall: Option<Syscall>,
}

/// Groups audit records into refusals and names them.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: BTreeMap<u64, Pending>,
    domains: HashMap<u64, Domain>,
    domain_order: std::collections::VecDeque<u64>,
    /// See `Listener::rules_installed`.
    pub creator_without_context: bool,
}

fn is_dynamic(uid: u32) -> bool {
    (DYNAMIC_UID_BASE..DYNAMIC_UID_BASE + DYNAMIC_UID_COUNT).contains(&uid)
}

impl Assembler {
    /// Takes one record; returns the refusals it completes.
    pub fn push(&mut self, r: AuditRecord, now: Instant, names: &impl Resolve) -> Vec<Action> {
        let mut done = Vec::new();
        match r.kind {
            AUDIT_LANDLOCK_ACCESS => {
                if self.pending.len() >= PENDING_MAX
                    && let Some((_, oldest)) = self.pending.pop_first()
                {
                    done.extend(self.finish(oldest, names));
                }
                self.pending
                    .entry(r.serial)
                    .or_insert_with(|| Pending {
                        since: now,
                        access: Vec::new(),
                        syscall: None,
                    })
                    .access
                    .push(r);
            }
            AUDIT_LANDLOCK_DOMAIN => {
                let Some(id) = r.domain() else {
                    return done;
                };
                match r.get("status") {
                    Some("allocated") => {
                        let pid = r.id("pid").unwrap_or(0);
                        let uid = r.id("uid").unwrap_or(0);
                        // agentguard's domains are created by `run`, which became the agent's
                        // first process; the daemon knows that pid even after it exited. Other
                        // domains (an agent sandboxing its own children) by their creator's cgroup.
                        let named = names
                            .by_first_pid(pid)
                            .or_else(|| names.by_pid(pid))
                            .or_else(|| names.by_uid(uid));
                        self.remember(id, Domain { pid, uid, named });
                    }
                    Some("deallocated") => {
                        // Its refusals are all queued before this record: log them first.
                        let serials: Vec<u64> = self
                            .pending
                            .iter()
                            .filter(|(_, p)| p.access.iter().any(|a| a.domain() == Some(id)))
                            .map(|(s, _)| *s)
                            .collect();
                        for s in serials {
                            if let Some(p) = self.pending.remove(&s) {
                                done.extend(self.finish(p, names));
                            }
                        }
                        self.domains.remove(&id);
                    }
                    _ => {}
                }
            }
            AUDIT_SYSCALL => {
                if let Some(p) = self.pending.get_mut(&r.serial) {
                    let pid = r.id("pid").unwrap_or(0);
                    let uid = r.id("uid").unwrap_or(0);
                    p.syscall = Some(Syscall {
                        pid,
                        uid,
                        comm: r.get("comm").unwrap_or_default().to_owned(),
                        named: names.by_pid(pid),
                    });
                }
            }
            AUDIT_EOE => {
                if let Some(p) = self.pending.remove(&r.serial) {
                    done.extend(self.finish(p, names));
                }
            }
            _ => {}
        }
        done
    }

    /// Refusals that waited `GRACE` (or all of them with `all`).
    pub fn expire(&mut self, now: Instant, all: bool, names: &impl Resolve) -> Vec<Action> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| all || now.saturating_duration_since(p.since) >= GRACE)
            .map(|(s, _)| *s)
            .collect();
        let mut done = Vec::new();
        for s in due {
            if let Some(p) = self.pending.remove(&s) {
                done.extend(self.finish(p, names));
            }
        }
        done
    }

    fn remember(&mut self, id: u64, d: Domain) {
        if self.domains.insert(id, d).is_none() {
            self.domain_order.push_back(id);
        }
        while self.domain_order.len() > DOMAINS_MAX {
            if let Some(old) = self.domain_order.pop_front() {
                self.domains.remove(&old);
            }
        }
    }

    fn finish(&self, p: Pending, names: &impl Resolve) -> Vec<Action> {
        p.access
            .iter()
            .filter_map(|r| {
                let what = refused(r)?;
                let domain = r.domain().and_then(|id| self.domains.get(&id));
                let sc = p.syscall.as_ref();
                let named = sc
                    .and_then(|s| s.named.clone())
                    .or_else(|| domain.and_then(|d| d.named.clone()))
                    .or_else(|| sc.and_then(|s| names.by_uid(s.uid)))
                    .or_else(|| domain.and_then(|d| names.by_uid(d.uid)))
                    .unwrap_or(Named {
                        agent: String::new(),
                        instance: String::new(),
                        cgroup_id: 0,
                    });
                // Without a SYSCALL record and with agentguard's rules in force, the denying
                // task had no audit context: it was created outside the dynamic uid range, which
                // for a dynamic-uid agent is only its first process, the domain's creator (the
                // launcher that became the agent: same pid; its uid and comm in the domain
                // record are the launcher's, from before it switched user and exec'd).
                let dynamic = names.dynamic_uid(named.cgroup_id);
                let creator = match (sc, domain, dynamic) {
                    (None, Some(d), Some(uid)) if self.creator_without_context => {
                        Some((d.pid, uid))
                    }
                    _ => None,
                };
                let pid = sc.map(|s| s.pid).or(creator.map(|c| c.0)).unwrap_or(0);
                Some(Action {
                    kind: what.kind as u16,
                    verdict: Verdict::Denied as u8,
                    backend: Backend::Landlock as u8,
                    agent: named.agent,
                    instance: named.instance,
                    cgroup_id: named.cgroup_id,
                    pid,
                    tid: pid,
                    uid: sc
                        .map(|s| s.uid)
                        .or(creator.map(|c| c.1))
                        .or(dynamic)
                        .unwrap_or(0),
                    comm: sc.map(|s| s.comm.clone()).unwrap_or_default(),
                    target: what.target,
                    rule: None,
                    flags: 0,
                    generation: 0,
                })
            })
            .collect()
    }
}

/// One instance's window.
#[derive(Debug)]
struct Window {
    start: Instant,
    used: u64,
    over: u64,
    agent: String,
    instance: String,
}

/// The top-level instance whose tree (it and its sub-agents) shares a refusal budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub cgroup_id: u64,
    pub agent: String,
    pub instance: String,
}

impl Tree {
    /// The tree of `a`'s instance, from the live instances; an instance the daemon does not
    /// know (cgroup id 0: refusals naming no instance) is a tree of its own.
    fn of(shared: &Shared, a: &Action) -> Self {
        let st = shared.lock_state();
        let root = st.instances.get(&a.cgroup_id).map(|i| i.root_instance);
        match root.and_then(|r| st.instances.get(&r).map(|i| (r, i))) {
            Some((cgroup_id, i)) => Self {
                cgroup_id,
                agent: i.agent.clone(),
                instance: i.name.clone(),
            },
            None => Self {
                cgroup_id: a.cgroup_id,
                agent: a.agent.clone(),
                instance: a.instance.clone(),
            },
        }
    }
}

/// Per-tree budget of logged refusal records.
#[derive(Debug, Default)]
pub struct Budget {
    windows: HashMap<u64, Window>,
}

impl Budget {
    /// Whether a refusal in `tree` may be logged now; if not, it is counted for the tree.
    pub fn admit(&mut self, tree: &Tree, now: Instant) -> bool {
        let w = self
            .windows
            .entry(tree.cgroup_id)
            .or_insert_with(|| Window {
                start: now,
                used: 0,
                over: 0,
                agent: tree.agent.clone(),
                instance: tree.instance.clone(),
            });
        if now.saturating_duration_since(w.start) >= Duration::from_secs(1) {
            w.start = now;
            w.used = 0;
        }
        if w.used < PER_INSTANCE_PER_SECOND {
            w.used += 1;
            true
        } else {
            w.over += 1;
            false
        }
    }

    /// The gaps counted since the last call, one `lost-events` record per instance; windows
    /// idle for a second are forgotten (so the map holds only instances refused lately).
    pub fn gaps(&mut self, now: Instant) -> Vec<Body> {
        let mut out = Vec::new();
        self.windows.retain(|cgroup_id, w| {
            if w.over > 0 {
                out.push(Body::LostEvents {
                    source: "landlock-budget".into(),
                    agent: w.agent.clone(),
                    instance: w.instance.clone(),
                    cgroup_id: *cgroup_id,
                    allowed: 0,
                    refusals: w.over,
                });
                w.over = 0;
            }
            now.saturating_duration_since(w.start) < Duration::from_secs(1)
        });
        out
    }
}

/// Counters of records that never reached the daemon, as logged so far.
#[derive(Debug, Default)]
struct Dropped {
    /// The multicast socket's drop count (its receive buffer was full).
    socket: u64,
    /// The kernel's audit `lost` counter (backlog full): records of any kind, Landlock's among
    /// them. Starts at the value found at start-up.
    kernel: Option<u32>,
}

impl Dropped {
    fn gaps(&mut self, fd: &OwnedFd, control: Option<&mut Control>) -> Vec<Body> {
        let mut out = Vec::new();
        let gap = |source: &str, n: u64| Body::LostEvents {
            source: source.into(),
            agent: String::new(),
            instance: String::new(),
            cgroup_id: 0,
            allowed: 0,
            refusals: n,
        };
        if let Some(total) = netlink::drops_of(fd)
            && total > self.socket
        {
            out.push(gap("audit-socket", total - self.socket));
            self.socket = total;
        }
        if let Some(lost) = control.and_then(|c| c.status().ok()).map(|s| s.lost) {
            match self.kernel {
                Some(seen) if lost > seen => {
                    out.push(gap("audit-kernel", u64::from(lost - seen)));
                }
                _ => {}
            }
            self.kernel = Some(lost);
        }
        out
    }
}

/// The daemon's view for [`Resolve`].
struct StateNames<'a>(&'a Shared);

impl Resolve for StateNames<'_> {
    fn by_pid(&self, pid: u32) -> Option<Named> {
        if pid == 0 {
            return None;
        }
        let rel = Hierarchy::cgroup_of(pid).ok()?;
        let st = self.0.lock_state();
        let abs = st
            .hierarchy
            .mount()
            .join(rel.strip_prefix("/").unwrap_or(&rel));
        st.instances
            .values()
            .filter(|i| abs.starts_with(&i.path))
            .max_by_key(|i| i.path.components().count())
            .map(|i| Named {
                agent: i.agent.clone(),
                instance: i.name.clone(),
                cgroup_id: i.id,
            })
    }

    fn by_uid(&self, uid: u32) -> Option<Named> {
        if !is_dynamic(uid) {
            return None;
        }
        let (agent, instance, cgroup_id) = self.0.lock_state().by_dynamic_uid(uid)?;
        Some(Named {
            agent,
            instance,
            cgroup_id,
        })
    }

    fn by_first_pid(&self, pid: u32) -> Option<Named> {
        let st = self.0.lock_state();
        let id = *st.first_pids.get(&pid)?;
        let (agent, instance) = crate::events::Names::instance(&*st, id)?;
        Some(Named {
            agent: agent.to_owned(),
            instance: instance.to_owned(),
            cgroup_id: id,
        })
    }

    fn dynamic_uid(&self, cgroup_id: u64) -> Option<u32> {
        let st = self.0.lock_state();
        st.dynamic_uids.get(&cgroup_id).copied().or_else(|| {
            st.exited_uids
                .iter()
                .find(|(_, id)| **id == cgroup_id)
                .map(|(uid, _)| *uid)
        })
    }
}

/// Reads refusals until shutdown, then restores the audit state.
pub async fn run(
    shared: Arc<Shared>,
    listener: Listener,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let mut asm = Assembler {
        creator_without_context: listener.rules_installed(),
        ..Assembler::default()
    };
    let Listener { fd, restore } = listener;
    // SAFETY: the AsyncFd owns the socket for its whole life, and the socket's fd never
    // changes.
    let fd = match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the audit socket");
            restore_audit(restore);
            return;
        }
    };
    let mut tick = tokio::time::interval(GRACE / 2);
    let mut gap_tick = tokio::time::interval(GAP_INTERVAL);
    let mut budget = Budget::default();
    let mut dropped = Dropped::default();
    // For the kernel's lost counter; without it only the socket's drops are counted.
    let mut control = Control::open().ok();
    // The counters start where they are: earlier drops are not this daemon's.
    let _ = dropped.gaps(fd.get_ref(), control.as_mut());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let done = tokio::select! {
            r = fd.readable() => match r {
                Ok(mut guard) => {
                    let mut done = Vec::new();
                    loop {
                        match recv(fd.get_ref().as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                            Ok(n) => {
                                for m in netlink::messages(&buf[..n]) {
                                    match AuditRecord::parse(m.kind, m.payload) {
                                        Ok(r) => done.extend(asm.push(r, Instant::now(), &StateNames(&shared))),
                                        Err(e) => tracing::debug!(kind = m.kind, error = %e, "unparsed audit record"),
                                    }
                                }
                            }
                            Err(nix::errno::Errno::EAGAIN) => {
                                guard.clear_ready();
                                break;
                            }
                            Err(nix::errno::Errno::ENOBUFS) => {
                                // Counted by the socket; logged as a gap on the next gap tick.
                                tracing::warn!("audit records were lost: the daemon fell behind the kernel");
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "audit socket failed");
                                guard.clear_ready();
                                break;
                            }
                        }
                    }
                    done
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit socket failed");
                    break;
                }
            },
            _ = tick.tick() => asm.expire(Instant::now(), false, &StateNames(&shared)),
            _ = gap_tick.tick() => {
                log_gaps(&shared, &mut budget, &mut dropped, fd.get_ref(), control.as_mut());
                Vec::new()
            }
            _ = shutdown.changed() => break,
        };
        append(&shared, &mut budget, done);
    }
    let done = asm.expire(Instant::now(), true, &StateNames(&shared));
    append(&shared, &mut budget, done);
    log_gaps(
        &shared,
        &mut budget,
        &mut dropped,
        fd.get_ref(),
        control.as_mut(),
    );
    drop(fd);
    restore_audit(restore);
}

fn log_gaps(
    shared: &Shared,
    budget: &mut Budget,
    dropped: &mut Dropped,
    fd: &OwnedFd,
    control: Option<&mut Control>,
) {
    let mut gaps = budget.gaps(Instant::now());
    gaps.extend(dropped.gaps(fd, control));
    for g in gaps {
        shared.log(g);
    }
}

fn append(shared: &Shared, budget: &mut Budget, actions: Vec<Action>) {
    if actions.is_empty() {
        return;
    }
    let (wall, mono) = audit::now();
    let now = Instant::now();
    for a in actions {
        if !budget.admit(&Tree::of(shared, &a), now) {
            continue;
        }
        shared.note_refusal(wall, &a);
        if let Err(e) = shared.lock_log().append(wall, mono, Body::Action(a)) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use agentguard_common::event::EventKind;

    use super::*;
    use crate::audit::record::Target;

    struct Fake;

    impl Resolve for Fake {
        fn by_pid(&self, pid: u32) -> Option<Named> {
            (pid == 101).then(|| Named {
                agent: "buyer".into(),
                instance: "buyer/1".into(),
                cgroup_id: 7,
            })
        }
        fn by_uid(&self, _: u32) -> Option<Named> {
            None
        }
        fn by_first_pid(&self, pid: u32) -> Option<Named> {
            // The creator exited already; the daemon still knows its pid.
            (pid == 100).then(|| Named {
                agent: "buyer".into(),
                instance: "buyer/1".into(),
                cgroup_id: 7,
            })
        }
        fn dynamic_uid(&self, cgroup_id: u64) -> Option<u32> {
            (cgroup_id == 7).then_some(2_113_929_300)
        }
    }

    fn rec(kind: u16, text: &str) -> AuditRecord {
        AuditRecord::parse(kind, text.as_bytes()).expect("parses")
    }

    #[test]
    fn a_first_refusal_without_context_is_named_by_its_domain_creator() {
        let mut a = Assembler {
            creator_without_context: true,
            ..Assembler::default()
        };
        let t0 = Instant::now();
        assert!(a.push(rec(1423, "audit(1.0:5): domain=ab blockers=fs.read_file path=\"/etc/passwd\" dev=\"vda\" ino=9"), t0, &Fake).is_empty());
        assert!(a.push(rec(1424, "audit(1.0:6): domain=ab status=allocated mode=enforcing pid=100 uid=0 exe=\"/usr/bin/agentguard\" comm=\"agentguard\""), t0, &Fake).is_empty());
        assert!(
            a.expire(t0, false, &Fake).is_empty(),
            "waits for a SYSCALL record"
        );
        let got = a.expire(t0 + GRACE, false, &Fake);
        assert_eq!(got.len(), 1);
        let g = &got[0];
        assert_eq!(
            (g.agent.as_str(), g.instance.as_str(), g.cgroup_id),
            ("buyer", "buyer/1", 7)
        );
        assert_eq!((g.pid, g.comm.as_str(), g.uid), (100, "", 2_113_929_300));
        assert_eq!(g.verdict, Verdict::Denied as u8);
        assert_eq!(g.kind, EventKind::FileOpen as u16);
        assert!(matches!(&g.target, Target::File { path, .. } if path == "/etc/passwd"));
        // A later refusal in the same domain, the creator gone: still named from the cache.
        a.push(
            rec(
                1423,
                "audit(2.0:9): domain=ab blockers=fs.execute path=\"/usr/bin/curl\" ino=3",
            ),
            t0,
            &Fake,
        );
        let got = a.expire(t0, true, &Fake);
        assert_eq!(got[0].instance, "buyer/1");
        assert_eq!(got[0].kind, EventKind::Exec as u16);
    }

    #[test]
    fn a_syscall_record_names_the_denying_process_and_eoe_ends_the_event() {
        let mut a = Assembler::default();
        let t0 = Instant::now();
        a.push(
            rec(
                1423,
                "audit(1.0:5): domain=cd blockers=fs.write_file path=\"/srv/x\"",
            ),
            t0,
            &Fake,
        );
        a.push(rec(1300, "audit(1.0:5): arch=c000003e syscall=257 success=no exit=-13 ppid=100 pid=101 uid=2113929300 comm=\"sh\""), t0, &Fake);
        let got = a.push(rec(1320, "audit(1.0:5): "), t0, &Fake);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].pid, got[0].comm.as_str(), got[0].instance.as_str()),
            (101, "sh", "buyer/1")
        );
        // Unknown domain, unknown pid: logged anyway, with no agent.
        a.push(
            rec(
                1423,
                "audit(1.0:8): domain=ef blockers=fs.read_dir path=\"/root\"",
            ),
            t0,
            &Fake,
        );
        let got = a.expire(t0, true, &Fake);
        assert_eq!((got[0].instance.as_str(), got[0].pid), ("", 0));
    }

    #[test]
    fn an_instance_over_its_budget_loses_its_own_records_as_a_counted_gap() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        let tree = |cgroup_id: u64, instance: &str| Tree {
            cgroup_id,
            agent: "flood".into(),
            instance: instance.into(),
        };
        let loud = tree(7, "flood/1");
        let quiet = tree(8, "flood/2");
        let admitted = (0..PER_INSTANCE_PER_SECOND + 500)
            .filter(|_| b.admit(&loud, t0))
            .count();
        assert_eq!(admitted as u64, PER_INSTANCE_PER_SECOND);
        assert!(b.admit(&quiet, t0), "another instance keeps its own budget");
        let gaps = b.gaps(t0);
        assert_eq!(gaps.len(), 1);
        assert!(matches!(
            &gaps[0],
            Body::LostEvents { source, instance, refusals: 500, cgroup_id: 7, .. }
                if source == "landlock-budget" && instance == "flood/1"
        ));
        assert!(b.gaps(t0).is_empty(), "a gap is logged once");
        assert!(b.admit(&loud, t0 + Duration::from_secs(1)), "a new window");
        assert!(b.gaps(t0 + Duration::from_secs(3)).is_empty());
        assert!(b.windows.is_empty(), "idle windows are forgotten");
    }

    #[test]
    fn a_domain_ending_flushes_its_refusals_first() {
        let mut a = Assembler::default();
        let t0 = Instant::now();
        a.push(
            rec(
                1424,
                "audit(1.0:4): domain=ab status=allocated mode=enforcing pid=100 uid=5 comm=\"p\"",
            ),
            t0,
            &Fake,
        );
        a.push(
            rec(
                1423,
                "audit(1.0:5): domain=ab blockers=fs.make_reg path=\"/srv/new\"",
            ),
            t0,
            &Fake,
        );
        let got = a.push(
            rec(1424, "audit(1.0:6): domain=ab status=deallocated denials=1"),
            t0,
            &Fake,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].instance, "buyer/1");
        assert_eq!(
            got[0].pid, 0,
            "no syscall record and no rules: the denying pid is unknown"
        );
        assert_eq!(got[0].uid, 2_113_929_300, "the instance's dynamic uid");
        assert!(a.domains.is_empty());
    }
}
