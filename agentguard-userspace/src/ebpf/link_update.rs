//! Replacing the program of a pinned link in place (`BPF_LINK_UPDATE`), which aya 0.14 keeps
//! crate-private: two `bpf(2)` commands with their fixed-layout attributes.
//!
//! An upgrade swaps each cgroup sock_addr program this way: the kernel switches the link to the
//! new program atomically, so every connect is judged by exactly one of the two builds, never by
//! neither and never twice (which would spend a budget token twice).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use super::sys::{bpf, bpf_fd};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `bpf_attr` for `BPF_OBJ_GET` (`pathname`, `bpf_fd`, `file_flags`, `path_fd`).
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `bpf_attr` for `BPF_LINK_UPDATE` (`link_fd`, `new_prog_fd`, `flags`, `old_prog_fd`).
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Opens the pinned object at `path` (a link, here).
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: the `BPF_OBJ_GET` layout; `pathname` points at `c`, alive for the call; the
    // command returns a new fd.
    unsafe { bpf_fd(BPF_OBJ_GET, &mut attr) }
}

/// Makes `link` run `program` instead of its current program, atomically.
pub fn update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let fd = |f: BorrowedFd<'_>| u32::try_from(f.as_raw_fd()).map_err(io::Error::other);
    let mut attr = LinkUpdateAttr {
        link_fd: fd(link.as_fd())?,
        new_prog_fd: fd(program)?,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: the `BPF_LINK_UPDATE` layout; both fds are borrowed, open for the call.
    unsafe { bpf(BPF_LINK_UPDATE, &mut attr) }.map(drop)
}
