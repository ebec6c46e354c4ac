//! The administrator control socket and signal handling.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use super::{DaemonError, Shared, apply, handlers};
use crate::cgroup::Instance;
use crate::{
    audit::record::Actor,
    control::{
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
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(shared, stream, role).await {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn serve(shared: Arc<Shared>, stream: UnixStream, role: Role) -> std::io::Result<()> {
    let peer = Peer::of(&stream).map_err(|e| e.to_string());
    let admitted = peer
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|p| admit(&shared, p, role));
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let (response, last) = match (&admitted, &peer) {
            (Ok(caller), Ok(peer)) => match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    // After `run` the peer lives in an agent cgroup: it gets no second request.
                    let last = matches!(req, Request::Run { .. });
                    let response = match caller {
                        None => handlers::handle(&shared, peer, req).await,
                        Some(instance) => {
                            handlers::handle_agent(&shared, peer, instance, req).await
                        }
                    };
                    (response, last)
                }
                Err(e) => (Response::Error(format!("malformed request: {e}")), true),
            },
            (Err(e), _) | (_, Err(e)) => (Response::Error(e.clone()), true),
        };
        let mut out = serde_json::to_string(&response)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode reply: {e}\"}}"));
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
        if last {
            break;
        }
    }
    Ok(())
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
