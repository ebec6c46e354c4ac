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
use crate::{
    audit::record::Actor,
    control::{
        peer::Peer,
        proto::{Request, Response},
    },
};

/// Binds the socket (mode 0600), replacing a stale one but never a live daemon's.
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot chmod {}", path.display())))?;
    Ok(listener)
}

/// Accepts connections until shutdown.
pub async fn run(
    shared: Arc<Shared>,
    listener: UnixListener,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(shared, stream).await {
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

async fn serve(shared: Arc<Shared>, stream: UnixStream) -> std::io::Result<()> {
    let peer = Peer::of(&stream);
    let hierarchy = shared.lock_state().hierarchy.clone();
    let admitted = peer
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|p| p.require_admin(&hierarchy).map_err(|e| e.to_string()));
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let (response, last) = match (&admitted, &peer) {
            (Err(e), _) => (Response::Error(e.clone()), true),
            (Ok(()), Ok(peer)) => match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    // After `run` the peer lives in an agent cgroup: it gets no second request.
                    let last = matches!(req, Request::Run { .. });
                    (handlers::handle(&shared, peer, req).await, last)
                }
                Err(e) => (Response::Error(format!("malformed request: {e}")), true),
            },
            (Ok(()), Err(e)) => (Response::Error(e.to_string()), true),
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
