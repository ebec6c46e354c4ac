//! The raw `bpf(2)` call, for the commands aya 0.14 does not expose to us: batched map updates
//! and deletes ([`super::batch`]), link update ([`super::link_update`]) and the map-in-map
//! barrier ([`super::quiesce`]).

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

/// `bpf(cmd, attr, size_of::<T>())`; the kernel's non-negative result, or errno.
///
/// # Safety
///
/// `T` must be a `#[repr(C)]` prefix of `union bpf_attr` with the layout the kernel expects for
/// `cmd`, and every pointer and fd in it valid for the access the kernel makes through it during
/// the call.
pub unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller's contract; `attr` is live and its size is passed with it, so the
    // kernel reads (and, for commands that answer in it, writes) at most that many bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// [`bpf`] for a command that returns a new file descriptor (a map, an object from a pin).
///
/// # Safety
///
/// As for [`bpf`], and `cmd` must return a new fd on success.
pub unsafe fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: the caller's contract.
    let fd = unsafe { bpf(cmd, attr) }?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether a unit test that needs the kernel's BPF (root) can run; under CI, which runs the
/// unit tests as root, it must: a test that cannot fails there rather than pass unrun.
#[cfg(test)]
pub(crate) fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI runs the unit tests as root; this one needs it"
    );
    false
}
