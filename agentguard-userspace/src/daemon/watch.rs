//! Instance lifetimes: re-adopting running instances at start-up, and noticing when one has no
//! process left (inotify on `cgroup.events`, whose `populated` flag the kernel maintains).

use std::{collections::HashMap, sync::Arc};

use futures_util::StreamExt;
use inotify::{Inotify, WatchDescriptor, WatchMask};
use tokio::sync::{mpsc, watch};

use super::{DaemonError, Shared, State};
use crate::{
    audit::record::Body,
    cgroup::{self, Instance},
};

/// Registers every populated instance found in the cgroup tree (a restarted daemon picks up the
/// agents that kept running) and removes empty ones. Returns the instances to watch.
pub fn readopt(state: &mut State) -> Result<Vec<Instance>, DaemonError> {
    let mut live = Vec::new();
    // Children first, so an empty parent is removed after its empty sub-agent instances.
    let mut found = state.hierarchy.scan()?;
    found.reverse();
    for inst in found {
        if cgroup::populated(&inst.path).unwrap_or(false) {
            state.register(&inst, false)?;
            tracing::info!(instance = %inst.name, "re-adopted running agent instance");
            live.push(inst);
        } else if let Err(e) = state.hierarchy.remove(&inst) {
            tracing::warn!(instance = %inst.name, error = %e, "cannot remove empty instance cgroup");
        }
    }
    live.reverse();
    Ok(live)
}

/// Watches instances until shutdown; logs and cleans up each one that empties.
pub async fn run(
    shared: Arc<Shared>,
    mut new: mpsc::UnboundedReceiver<Instance>,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let inotify = match Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "inotify unavailable: instance exits will not be noticed");
            return;
        }
    };
    let mut watches = inotify.watches();
    let mut stream = match inotify.into_event_stream(vec![0u8; 4096]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "inotify stream unavailable");
            return;
        }
    };
    let mut watched: HashMap<WatchDescriptor, Instance> = HashMap::new();
    loop {
        tokio::select! {
            Some(inst) = new.recv() => {
                match watches.add(inst.path.join("cgroup.events"), WatchMask::MODIFY) {
                    Ok(wd) => {
                        watched.insert(wd.clone(), inst.clone());
                        // The instance may have emptied before the watch existed.
                        check(&shared, &mut watched, &mut watches, &wd);
                    }
                    Err(e) => tracing::warn!(instance = %inst.name, error = %e, "cannot watch instance"),
                }
            }
            Some(ev) = stream.next() => {
                if let Ok(ev) = ev {
                    check(&shared, &mut watched, &mut watches, &ev.wd);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

fn check(
    shared: &Shared,
    watched: &mut HashMap<WatchDescriptor, Instance>,
    watches: &mut inotify::Watches,
    wd: &WatchDescriptor,
) {
    let Some(inst) = watched.get(wd) else { return };
    if cgroup::populated(&inst.path).unwrap_or(false) {
        return;
    }
    let inst = inst.clone();
    // An empty instance has empty sub-agent instances: they end with it.
    let mut st = shared.lock_state();
    let ended: Vec<Instance> = st
        .instances
        .values()
        .filter(|i| i.path.starts_with(&inst.path))
        .cloned()
        .collect();
    for i in &ended {
        st.unregister(i.id);
        // Only instances with an identity of their own have a directory; for the others
        // (sub-agents sharing their instance's) this finds nothing.
        shared.private_tmp.remove(i);
    }
    let ids: Vec<u64> = ended.iter().map(|i| i.id).collect();
    let revoked = shared.gateway.forget(&ids);
    if let Err(e) = st.hierarchy.remove(&inst) {
        tracing::warn!(instance = %inst.name, error = %e, "cannot remove instance cgroup");
    }
    drop(st);
    crate::gateway::checkout::log_revoked(shared, revoked, "instance ended");
    watched.retain(|w, i| {
        let gone = i.path.starts_with(&inst.path);
        if gone {
            let _ = watches.remove(w.clone());
        }
        !gone
    });
    for i in ended {
        tracing::info!(instance = %i.name, "agent instance exited");
        shared.log(Body::InstanceExit {
            agent: i.agent,
            instance: i.name,
            cgroup_id: i.id,
        });
    }
}
