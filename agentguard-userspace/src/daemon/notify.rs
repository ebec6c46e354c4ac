//! The systemd readiness protocol (`sd_notify(3)`), for `Type=notify` units.
//!
//! READY=1 is sent only once the policy is written to the kernel maps, the programs are
//! attached and both control sockets accept connections: `systemctl start agentguard` returning
//! means agents are confined, and units ordered `After=agentguard.service` start confined.
//! Every function is a no-op when the daemon was not started by a service manager (no
//! `NOTIFY_SOCKET`); a failure to notify is logged, never fatal to enforcement.

use std::{sync::Arc, time::Duration};

use sd_notify::NotifyState;
use tokio::sync::watch;

use super::Shared;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The policy is enforced and the sockets are listening.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new policy is in force.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The daemon is shutting down (enforcement stays unless it unloads).
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval the service manager asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog at half its interval while the daemon's state and log locks can be taken:
/// a daemon deadlocked on them, or whose runtime stalled, stops pinging and systemd restarts it
/// (the new daemon re-adopts the pinned programs, so agents stay confined meanwhile).
pub async fn watchdog(
    shared: Arc<Shared>,
    interval: Duration,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let mut ticker = tokio::time::interval((interval / 2).max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        // Off the runtime's two workers: waiting here on a lock must never stall other tasks.
        let probe = shared.clone();
        let alive = tokio::task::spawn_blocking(move || {
            drop(probe.lock_state());
            drop(probe.lock_log());
        })
        .await;
        if alive.is_ok() {
            send(&[NotifyState::Watchdog]);
        }
    }
}
