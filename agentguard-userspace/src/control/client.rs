//! The blocking client every CLI command uses. Blocking on purpose: `agentguard run` must stay
//! single-threaded so it can apply Landlock and credentials to the whole process before exec.
//!
//! Before it sends anything, the client checks who serves the socket (`verify_server`): a
//! process that took over the socket path could otherwise answer `run` with an empty sandbox or
//! claim a freeze that never happened.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::{
    frame::{self, JsonLines, MAX_REPLY},
    peer::Peer,
    proto::{Reply, Request, Response},
};
use crate::cgroup::Hierarchy;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens there.
    #[error(
        "cannot connect to the agentguard daemon at {path}: {source} (is `agentguard daemon` running? use --socket or AGENTGUARD_SOCKET for another socket)"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Something else than the agentguard daemon serves the socket.
    #[error(
        "refusing {path}: {reason}; only the agentguard daemon (root, outside every agent cgroup) is trusted there, so nothing was sent"
    )]
    Untrusted {
        /// The socket.
        path: PathBuf,
        /// What the check found.
        reason: String,
    },
    /// The connection broke.
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon's answer was not understood.
    #[error("unexpected reply from the daemon: {0}")]
    Protocol(String),
    /// The daemon refused or failed the request.
    #[error("{0}")]
    Daemon(String),
}

/// A connection to the daemon.
pub struct Client {
    stream: UnixStream,
    codec: JsonLines<Response>,
    buf: BytesMut,
}

impl Client {
    /// Connects (the socket is close-on-exec: an agent never inherits it) and checks that the
    /// agentguard daemon is what serves it.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        verify_server(&stream).map_err(|reason| ClientError::Untrusted {
            path: path.to_owned(),
            reason,
        })?;
        Ok(Self {
            stream,
            codec: JsonLines::new(MAX_REPLY),
            buf: BytesMut::new(),
        })
    }

    /// Sends a request and waits for its reply.
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let line = frame::encode_line(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Err(e) = self.stream.write_all(&line) {
            // A daemon that refuses a connection (peer not allowed, too many connections) writes
            // why and closes before reading anything: the reason is still there to read.
            return match self.read_response() {
                Ok(Response::Error(message)) => Err(ClientError::Daemon(message)),
                _ => Err(e.into()),
            };
        }
        let response = self.read_response()?;
        match response {
            Response::Ok(reply) => Ok(reply),
            Response::Error(message) => Err(ClientError::Daemon(message)),
        }
    }

    /// Reads until one whole reply line is buffered (never more than [`MAX_REPLY`] bytes).
    fn read_response(&mut self) -> Result<Response, ClientError> {
        let protocol = |e: frame::FrameError| ClientError::Protocol(e.to_string());
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(response) = self.codec.decode(&mut self.buf).map_err(protocol)? {
                return Ok(response);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return self
                    .codec
                    .decode_eof(&mut self.buf)
                    .map_err(protocol)?
                    .ok_or_else(|| {
                        ClientError::Protocol("the daemon closed the connection".into())
                    });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Checks who serves a connected control socket, from the kernel's record of the listening
/// process (`SO_PEERCRED`, taken when the server called `listen`, so the server cannot forge
/// it) rather than from the socket file, whose path and owner can change between a check and the
/// connect:
///
/// - the listening process must have run as uid 0: a non-root impostor is refused wherever its
///   socket lives (a world-writable directory, a path given by `--socket` or the environment);
/// - it must not live inside the agentguard cgroup subtree: a root agent that replaced the socket
///   file is refused too. The cgroup is read from `/proc/PID/cgroup` and the answer confirmed with
///   the pidfd from `SO_PEERPIDFD` (Linux 6.5+), so a recycled pid cannot stand in for the daemon.
///
/// A client that is not root, or runs inside an agent, may be unable to read the daemon's
/// `/proc` entry (Landlock, `hidepid`); it then relies on the uid check alone. Such a client can
/// only use the agent socket, and what an impostor could tell it only concerns the caller's own
/// sub-agents, which stay inside the caller's confinement.
fn verify_server(stream: &UnixStream) -> Result<(), String> {
    let peer = Peer::of(stream).map_err(|e| e.to_string())?;
    if peer.uid != 0 {
        return Err(format!(
            "it is served by uid {} (pid {}), not by root",
            peer.uid, peer.pid
        ));
    }
    let inside = match Hierarchy::discover() {
        Ok(h) if peer.pid != 0 => h.contains_pid(peer.pid).map_err(|e| e.to_string()),
        Ok(_) => Err("its process is not visible from this pid namespace".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    match inside {
        Ok(true) => Err(format!(
            "it is served by pid {}, a process inside an agent cgroup",
            peer.pid
        )),
        Ok(false) if peer.still_same_process() => Ok(()),
        Ok(false) => Err(format!(
            "the serving process {} exited during the check",
            peer.pid
        )),
        // Only a root client outside every agent (an operator) must get the full check; it can
        // always read /proc. Others cannot use the administrator socket anyway.
        Err(_) if !nix::unistd::geteuid().is_root() || self_inside_agent() => Ok(()),
        Err(e) => Err(format!("cannot verify the serving process: {e}")),
    }
}

/// Whether this process runs inside the agentguard subtree (read from `/proc/self`, which every
/// sandbox leaves readable).
fn self_inside_agent() -> bool {
    Hierarchy::discover()
        .and_then(|h| h.contains_pid(std::process::id()))
        .unwrap_or(false)
}
