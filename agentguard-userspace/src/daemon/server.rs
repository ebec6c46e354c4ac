//! The control sockets (administrator and agent) and signal handling.
//!
//! Every connection is bounded so that no local user can exhaust the daemon: the peer is checked
//! before a byte of its request is read, requests are at most [`Role::max_request`] bytes, each
//! request (and each reply) must cross the socket within [`ClientLimits::request_timeout`], and
//! [`Slots`] caps the connections held open per peer uid and in total. Refusals are written
//! without waiting on the peer and cost the daemon no task.

use std::{
    collections::HashMap,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures_util::StreamExt;
use tokio::{
    io::AsyncWriteExt,
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tokio_util::codec::FramedRead;

use super::{DaemonError, Shared, apply, handlers};
use crate::cgroup::Instance;
use crate::{
    audit::record::Actor,
    control::{
        frame::{self, FrameError, JsonLines, MAX_ADMIN_REQUEST, MAX_AGENT_REQUEST},
        peer::Peer,
        proto::{Request, Response},
    },
};

/// Who a socket serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The administrator socket: root peers outside every agent cgroup; every request.
    Admin,
    /// The agent socket: processes inside agent instances; starting their own sub-agents only.
    Agent,
}

impl Role {
    fn mode(self) -> u32 {
        match self {
            Self::Admin => 0o600,
            // Any agent process may connect; what it may ask is decided by its cgroup.
            Self::Agent => 0o666,
        }
    }

    /// The longest request line accepted on this socket.
    pub fn max_request(self) -> usize {
        match self {
            Self::Admin => MAX_ADMIN_REQUEST,
            Self::Agent => MAX_AGENT_REQUEST,
        }
    }
}

/// How long and how many: what one client, and all of them, may hold of the daemon. Applies to
/// each socket separately, so agents crowding the agent socket never lock out the administrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// How long a client may take to send one whole request, counted from when the daemon starts
    /// waiting for it (connect, or the previous reply), and to take one reply. An idle or
    /// trickling (slowloris) client is disconnected after it.
    pub request_timeout: Duration,
    /// Connections one peer uid may hold open at once on one socket.
    pub per_uid: usize,
    /// Connections all peers together may hold open at once on one socket.
    pub total: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            per_uid: 16,
            total: 128,
        }
    }
}

/// Binds a socket, replacing a stale one but never a live daemon's.
pub fn bind(path: &Path, role: Role) -> Result<UnixListener, DaemonError> {
    let io = |what: String| move |source| DaemonError::Io { what, source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Io {
                what: format!("control socket {}", path.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another agentguard daemon is listening there",
                ),
            });
        }
        std::fs::remove_file(path)
            .map_err(io(format!("cannot remove stale socket {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io(format!("cannot bind {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(role.mode()))
        .map_err(io(format!("cannot chmod {}", path.display())))?;
    Ok(listener)
}

/// Accepts connections until shutdown.
pub async fn run(
    shared: Arc<Shared>,
    listener: UnixListener,
    role: Role,
    limits: ClientLimits,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let slots = Arc::new(Slots::new(limits));
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => accept(&shared, stream, role, limits, &slots),
                Err(e) => {
                    // EMFILE and friends fail at once and again on the next call: pause rather
                    // than spin a core while the condition lasts.
                    tracing::warn!(error = %e, ?role, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Decides about a fresh connection without awaiting anything: refused peers get one error line
/// and are closed on the spot; an admitted one gets a slot and a task.
fn accept(
    shared: &Arc<Shared>,
    stream: UnixStream,
    role: Role,
    limits: ClientLimits,
    slots: &Arc<Slots>,
) {
    let peer = match Peer::of(&stream) {
        Ok(peer) => peer,
        Err(e) => return refuse(&stream, &e.to_string()),
    };
    // Admission before reading: a peer that may not use this socket never gets a byte read,
    // nor a slot that an admitted client could need.
    let caller = match admit(shared, &peer, role) {
        Ok(caller) => caller,
        Err(message) => return refuse(&stream, &message),
    };
    let slot = match slots.take(peer.uid) {
        Ok(slot) => slot,
        Err(full) => {
            tracing::debug!(uid = peer.uid, pid = peer.pid, ?role, "{full}");
            return refuse(&stream, &full.to_string());
        }
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = serve(&shared, stream, &peer, caller.as_ref(), role, limits).await {
            tracing::debug!(error = %e, uid = peer.uid, pid = peer.pid, "control connection ended");
        }
    });
}

/// Writes an error line if the socket takes it at once (an empty socket buffer always does),
/// then the caller drops the stream.
fn refuse(stream: &UnixStream, message: &str) {
    say_now(stream, &error_line(message));
}

/// One non-blocking send straight to the socket. Not tokio's `try_write`: that gives up without
/// trying until the runtime has seen the socket's first writable event, which a connection
/// refused right after `accept` may not have had yet.
fn say_now(socket: &impl AsFd, line: &[u8]) {
    use nix::sys::socket::{MsgFlags, send};
    let _ = send(
        socket.as_fd().as_raw_fd(),
        line,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    /// The request could not be read (too long, not UTF-8, not a request, broken stream).
    #[error("bad request: {0}")]
    Frame(#[from] FrameError),
    /// The client sent no whole request within the timeout.
    #[error("no whole request within {0:?}")]
    Idle(Duration),
    /// The client did not take its reply within the timeout.
    #[error("reply not taken within {0:?}")]
    Stalled(Duration),
    /// Writing the reply failed.
    #[error("cannot write the reply: {0}")]
    Write(#[source] std::io::Error),
}

async fn serve(
    shared: &Arc<Shared>,
    stream: UnixStream,
    peer: &Peer,
    caller: Option<&Instance>,
    role: Role,
    limits: ClientLimits,
) -> Result<(), ServeError> {
    let (read, mut write) = stream.into_split();
    let mut requests = FramedRead::new(read, JsonLines::<Request>::new(role.max_request()));
    loop {
        let request = match tokio::time::timeout(limits.request_timeout, requests.next()).await {
            Err(_) => {
                let idle = ServeError::Idle(limits.request_timeout);
                say_now(
                    write.as_ref(),
                    &error_line(&format!("{idle}; closing the connection")),
                );
                return Err(idle);
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => {
                if matches!(e, FrameError::TooLong { .. }) {
                    tracing::warn!(
                        uid = peer.uid,
                        pid = peer.pid,
                        ?role,
                        "{e}; connection closed"
                    );
                }
                say_now(
                    write.as_ref(),
                    &error_line(&format!("{e}; closing the connection")),
                );
                return Err(e.into());
            }
            Ok(Some(Ok(request))) => request,
        };
        // After `run` the peer lives in an agent cgroup: it gets no second request.
        let last = matches!(request, Request::Run { .. });
        let response = match caller {
            None => handlers::handle(shared, peer, request).await,
            Some(instance) => handlers::handle_agent(shared, peer, instance, request).await,
        };
        send(&mut write, &response, limits.request_timeout).await?;
        if last {
            return Ok(());
        }
    }
}

fn error_line(message: &str) -> Vec<u8> {
    frame::encode_line(&Response::Error(message.to_owned()))
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

async fn send(
    write: &mut OwnedWriteHalf,
    response: &Response,
    timeout: Duration,
) -> Result<(), ServeError> {
    let line = match frame::encode_line(response) {
        Ok(line) => line,
        Err(e) => frame::encode_line(&Response::Error(e.to_string()))?,
    };
    tokio::time::timeout(timeout, write.write_all(&line))
        .await
        .map_err(|_| ServeError::Stalled(timeout))?
        .map_err(ServeError::Write)
}

/// Connection slots of one socket, counted per peer uid and in total.
#[derive(Debug)]
struct Slots {
    limits: ClientLimits,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

/// Why a connection got no slot.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum Full {
    /// The peer's uid holds its share.
    #[error(
        "too many connections from uid {uid} ({limit} open); close some or raise --max-connections-per-uid"
    )]
    Uid {
        /// The peer's uid.
        uid: u32,
        /// The per-uid limit.
        limit: usize,
    },
    /// Every slot is taken.
    #[error("too many connections ({limit} open); try again later")]
    Total {
        /// The global limit.
        limit: usize,
    },
}

/// One open connection; frees its slot when dropped (the connection's task ended).
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Slots {
    fn new(limits: ClientLimits) -> Self {
        Self {
            limits,
            open: Mutex::new(Open::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(self: &Arc<Self>, uid: u32) -> Result<Slot, Full> {
        let mut open = self.lock();
        let mine = open.by_uid.get(&uid).copied().unwrap_or(0);
        if mine >= self.limits.per_uid {
            return Err(Full::Uid {
                uid,
                limit: self.limits.per_uid,
            });
        }
        if open.total >= self.limits.total {
            return Err(Full::Total {
                limit: self.limits.total,
            });
        }
        open.total += 1;
        open.by_uid.insert(uid, mine + 1);
        Ok(Slot {
            slots: self.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Checks a peer for `role`: `None` for an administrator, the calling instance for an agent.
fn admit(shared: &Shared, peer: &Peer, role: Role) -> Result<Option<Instance>, String> {
    let hierarchy = shared.lock_state().hierarchy.clone();
    match role {
        Role::Admin => peer
            .require_admin(&hierarchy)
            .map(|()| None)
            .map_err(|e| e.to_string()),
        Role::Agent => {
            let cgroup = peer.agent_cgroup(&hierarchy).map_err(|e| e.to_string())?;
            let st = shared.lock_state();
            // The nearest instance at or above the peer's cgroup.
            st.instances
                .values()
                .filter(|i| cgroup.starts_with(&i.path))
                .max_by_key(|i| i.path.components().count())
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    "the calling process belongs to no running agent instance".to_owned()
                })
        }
    }
}

/// SIGTERM/SIGINT stop the daemon (enforcement stays); SIGHUP re-reads the policy file.
pub async fn signals(
    shared: Arc<Shared>,
    policy_path: PathBuf,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); shared.request_shutdown(false); }
            _ = int.recv() => { tracing::info!("SIGINT"); shared.request_shutdown(false); }
            _ = hup.recv() => {
                tracing::info!(path = %policy_path.display(), "SIGHUP: re-reading the policy");
                let by = Actor::Daemon { reason: "SIGHUP".into() };
                let result = match std::fs::read_to_string(&policy_path) {
                    Ok(text) => apply::apply_text(&shared, &policy_path.display().to_string(), &text, by).await.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("cannot read {}: {e}", policy_path.display())),
                };
                match result {
                    Ok(a) => tracing::info!(digest = %a.digest, generation = a.generation, "policy applied"),
                    Err(e) => tracing::error!("policy NOT applied, the previous one stays in force: {e}"),
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(per_uid: usize, total: usize) -> Arc<Slots> {
        Arc::new(Slots::new(ClientLimits {
            per_uid,
            total,
            ..ClientLimits::default()
        }))
    }

    #[test]
    fn per_uid_cap_leaves_other_uids_served() -> Result<(), Full> {
        let s = slots(2, 10);
        let a1 = s.take(1000)?;
        let _a2 = s.take(1000)?;
        assert_eq!(
            s.take(1000).err(),
            Some(Full::Uid {
                uid: 1000,
                limit: 2
            })
        );
        let _b = s.take(1001)?;
        drop(a1);
        let _a3 = s.take(1000)?;
        Ok(())
    }

    #[test]
    fn global_cap_counts_every_uid() -> Result<(), Full> {
        let s = slots(2, 3);
        let held = [s.take(1)?, s.take(2)?, s.take(3)?];
        assert_eq!(s.take(4).err(), Some(Full::Total { limit: 3 }));
        drop(held);
        assert_eq!(s.lock().total, 0);
        assert!(s.lock().by_uid.is_empty());
        let _again = s.take(4)?;
        Ok(())
    }
}
