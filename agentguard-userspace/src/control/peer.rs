//! Who is on the other end of a control connection: credentials from the kernel, the peer's
//! cgroup, and a pidfd so the answer cannot be spoofed by pid reuse.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        getsockopt,
        sockopt::{PeerCredentials, PeerPidfd},
    },
};

use crate::cgroup::Hierarchy;

/// The peer of a Unix socket connection.
#[derive(Debug)]
pub struct Peer {
    /// Process id at connect time.
    pub pid: u32,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// A pidfd for the peer process (SO_PEERPIDFD, Linux 6.5+), when the kernel has it.
    pub pidfd: Option<OwnedFd>,
}

/// Why a peer is refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Reading credentials failed.
    #[error("cannot read peer credentials: {0}")]
    Credentials(#[source] io::Error),
    /// Not root.
    #[error("permission denied: only root may use the agentguard control socket (peer uid {0})")]
    NotRoot(u32),
    /// The peer runs inside an agent cgroup.
    #[error("permission denied: processes inside an agent cgroup may not use the control socket")]
    InsideAgent,
    /// The agent socket is for agent processes.
    #[error(
        "the agent socket serves processes inside agent instances; administrators use the control socket"
    )]
    NotAnAgent,
    /// The peer's cgroup could not be determined reliably.
    #[error("cannot verify the peer's cgroup: {0}")]
    Unverifiable(String),
}

impl Peer {
    /// Reads the peer of `sock`.
    pub fn of(sock: &impl AsFd) -> Result<Self, PeerError> {
        let cred =
            getsockopt(sock, PeerCredentials).map_err(|e| PeerError::Credentials(e.into()))?;
        Ok(Self {
            pid: u32::try_from(cred.pid()).unwrap_or(0),
            uid: cred.uid(),
            gid: cred.gid(),
            pidfd: peer_pidfd(sock),
        })
    }

    /// The peer's executable, for the log.
    pub fn exe(&self) -> Option<String> {
        std::fs::read_link(format!("/proc/{}/exe", self.pid))
            .ok()
            .map(|p: PathBuf| p.display().to_string())
    }

    /// Whether the process the pidfd refers to is still alive, i.e. `pid` still names the peer
    /// and not a process that reused its number. Without a pidfd (kernels before 6.5) the answer
    /// rests on the pid alone.
    pub fn still_same_process(&self) -> bool {
        match &self.pidfd {
            Some(fd) => pidfd_alive(fd),
            None => true,
        }
    }

    /// The cgroup of a peer that must be an agent process (for the agent socket): its path,
    /// verified against pid reuse.
    pub fn agent_cgroup(&self, hierarchy: &Hierarchy) -> Result<PathBuf, PeerError> {
        let rel =
            Hierarchy::cgroup_of(self.pid).map_err(|e| PeerError::Unverifiable(e.to_string()))?;
        let abs = hierarchy
            .mount()
            .join(rel.strip_prefix("/").unwrap_or(&rel));
        if !self.still_same_process() {
            return Err(PeerError::Unverifiable(format!(
                "process {} exited during the check",
                self.pid
            )));
        }
        if !abs.starts_with(hierarchy.root()) {
            return Err(PeerError::NotAnAgent);
        }
        Ok(abs)
    }

    /// The administrator check: root, and not a process inside any agent cgroup (a root agent
    /// must not thaw itself or widen its own policy).
    pub fn require_admin(&self, hierarchy: &Hierarchy) -> Result<(), PeerError> {
        if self.uid != 0 {
            return Err(PeerError::NotRoot(self.uid));
        }
        let inside = hierarchy
            .contains_pid(self.pid)
            .map_err(|e| PeerError::Unverifiable(e.to_string()))?;
        if !self.still_same_process() {
            return Err(PeerError::Unverifiable(format!(
                "process {} exited during the check",
                self.pid
            )));
        }
        if inside {
            return Err(PeerError::InsideAgent);
        }
        Ok(())
    }
}

/// A pidfd turns readable when its process exits. Polling it, unlike sending signal 0, needs no
/// permission to signal the process, so an unprivileged client can check the root daemon too.
/// An error (other than an interrupted poll) counts as gone: the caller then refuses.
fn pidfd_alive(fd: &OwnedFd) -> bool {
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(ready) => return ready == 0,
            Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// `None` on kernels without SO_PEERPIDFD (before 6.5).
fn peer_pidfd(sock: &impl AsFd) -> Option<OwnedFd> {
    getsockopt(sock, PeerPidfd).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn a_pidfd_tells_a_live_peer_from_an_exited_process() -> io::Result<()> {
        let (a, _b) = UnixStream::pair()?;
        let peer = Peer::of(&a).map_err(io::Error::other)?;
        assert_eq!(peer.pid, std::process::id());
        // Kernels before 6.5 have no SO_PEERPIDFD; the rest of the check then has nothing to do.
        if peer.pidfd.is_some() {
            assert!(peer.still_same_process());
        }

        let mut child = std::process::Command::new("true").spawn()?;
        let pid =
            rustix::process::Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?)
                .ok_or_else(|| io::Error::other("pid 0"))?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        child.wait()?;
        assert!(!pidfd_alive(&fd));
        Ok(())
    }
}
