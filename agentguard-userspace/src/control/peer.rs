//! Who is on the other end of a control connection: credentials from the kernel, the peer's
//! cgroup, and a pidfd so the answer cannot be spoofed by pid reuse.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

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

/// Signal 0 through the pidfd: succeeds only while that very process is alive. `EPERM` means
/// the process exists but the caller may not signal it (an unprivileged client checking the root
/// daemon); only `ESRCH` means it is gone.
fn pidfd_alive(fd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 and a NULL siginfo only checks permission and
    // liveness; it touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn peer_pidfd(sock: &impl AsFd) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).ok()?;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, a c_int we own.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    if rc != 0 || fd < 0 {
        return None;
    }
    // SAFETY: the kernel just created this fd for us; nobody else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
