//! Exec rules name binaries by path but the kernel matches their identity (device, inode), so a
//! binary replaced on disk (package managers write a new file and rename it over the old one)
//! would silently fall out of the allowlist. This task watches the directories of every allowed
//! binary and, when one changes, re-resolves the policy's binaries and re-applies the policy,
//! logging which ones changed.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt;
use inotify::{Inotify, WatchDescriptor, WatchMask};
use tokio::sync::watch;

use super::{Shared, apply};
use crate::{audit::record::Actor, policy::resolve};

/// Quiet time after the last change before re-resolving: an upgrade touches a file several times.
const SETTLE: Duration = Duration::from_millis(300);

/// The paths to watch for a set of exec rules: each path and, for symlinks, its target.
pub fn paths_of(exec: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in exec {
        if let Ok(real) = std::fs::canonicalize(&p)
            && real != p
        {
            out.push(real);
        }
        out.push(p);
    }
    out.sort();
    out.dedup();
    out
}

/// Watches until shutdown.
pub async fn run(
    shared: Arc<Shared>,
    mut paths: watch::Receiver<Vec<PathBuf>>,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let inotify = match Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "inotify unavailable: replaced binaries will not be re-resolved");
            return;
        }
    };
    let mut watches = inotify.watches();
    let Ok(mut stream) = inotify.into_event_stream(vec![0u8; 4096]) else {
        tracing::error!("inotify stream unavailable: replaced binaries will not be re-resolved");
        return;
    };
    let mut dirs: HashMap<WatchDescriptor, (PathBuf, HashSet<OsString>)> = HashMap::new();
    let mut dirty = false;
    let mask = WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB;
    let mut rewatch = true;
    loop {
        if rewatch {
            for (wd, _) in dirs.drain() {
                let _ = watches.remove(wd);
            }
            let mut by_dir: HashMap<PathBuf, HashSet<OsString>> = HashMap::new();
            for p in paths.borrow_and_update().iter() {
                if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
                    by_dir
                        .entry(dir.to_owned())
                        .or_default()
                        .insert(name.to_owned());
                }
            }
            for (dir, names) in by_dir {
                match watches.add(&dir, mask) {
                    Ok(wd) => {
                        dirs.insert(wd, (dir, names));
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory of an allowed binary")
                    }
                }
            }
            rewatch = false;
        }
        tokio::select! {
            r = paths.changed() => {
                if r.is_err() { break; }
                rewatch = true;
            }
            Some(Ok(ev)) = stream.next() => {
                let relevant = dirs.get(&ev.wd).is_some_and(|(_, names)| ev.name.as_ref().is_some_and(|n| names.contains(n.as_os_str())));
                dirty |= relevant;
            }
            () = tokio::time::sleep(SETTLE), if dirty => {
                dirty = false;
                reresolve(&shared).await;
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Re-resolves the policy's binaries; re-applies the policy when any identity changed.
async fn reresolve(shared: &Arc<Shared>) {
    let (policy, before) = {
        let st = shared.lock_state();
        (st.policy.clone(), st.binaries.clone())
    };
    let now = match resolve::binaries(&policy) {
        Ok(b) => b,
        Err(diags) => {
            // Mid-upgrade a binary may be missing; the old identity stays in force until the new
            // file appears and triggers another check.
            let what: Vec<String> = diags.iter().map(|d| d.message.clone()).collect();
            tracing::warn!(
                "allowed binaries changed but cannot be resolved yet; the previous rules stay in force: {}",
                what.join("; ")
            );
            return;
        }
    };
    let mut changed: Vec<String> = now
        .iter()
        .filter(|(p, id)| before.get(*p) != Some(*id))
        .map(|(p, _)| p.display().to_string())
        .collect();
    if changed.is_empty() {
        return;
    }
    changed.sort();
    let reason = format!("exec binaries changed on disk: {}", changed.join(", "));
    tracing::info!("{reason}: re-applying the policy");
    // Re-applies whatever policy is in force when the lock is taken, not the copy above: a
    // concurrent `policy apply` must not be undone.
    if let Err(e) = apply::reapply_current(shared, Actor::Daemon { reason }).await {
        tracing::error!(
            "re-applying after a binary change failed, the previous rules stay in force: {e}"
        );
    }
}
