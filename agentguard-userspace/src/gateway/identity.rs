//! Who is calling: the cgroup of the peer's socket, asked of the kernel with sock_diag.
//!
//! Why sock_diag (`NETLINK_SOCK_DIAG`, an exact lookup by 4-tuple, reading the
//! `INET_DIAG_CGROUP_ID` attribute, Linux >= 5.7) and not something else:
//! - The cgroup a socket belongs to is stamped by the kernel when the socket is created
//!   (`sk_cgrp_data`, the same field the cgroup connect programs judge by). A process cannot
//!   change it afterwards, and an agent cannot create a socket in a cgroup it cannot enter (the
//!   instance cgroups are root's). Nothing the agent sends (headers, paths, tokens) is consulted.
//! - The lookup is by the connection's exact 4-tuple, taken from the accepted socket before a
//!   byte of the request is read. TCP tuples are unique among live sockets, so the answer is the
//!   client's own socket; if the client is already gone the lookup fails (or finds a TIME_WAIT
//!   socket, which carries no cgroup) and the caller is treated as unknown: fail closed.
//! - Socket cookies would need a BPF program to relate: the accepted socket's cookie is not the
//!   client's. sock_diag needs no new kernel program and works the same on the LSM and fallback
//!   backends.
//!
//! A socket handed over with SCM_RIGHTS keeps its creator's cgroup, exactly as the connect
//! programs judge it: an agent lending its socket to another process spends its own tools and
//! budgets; a non-agent's socket lent to an agent is a non-agent's (403).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    socket,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48), 5 x u32.
const INET_DIAG_MSG: usize = 4 + 48 + 20;

/// The cgroup v2 id of the socket whose local address is `peer` and remote address is `local`
/// (the client end of a connection this process accepted on `local`), or `None` when the kernel
/// knows no such live socket or reports no cgroup for it.
pub fn peer_cgroup(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u64>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    let req = request(local, peer);
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 {
            return Ok(None);
        }
        match parse(&buf[..n])? {
            Parsed::Cgroup(id) => return Ok(Some(id)),
            Parsed::NotFound => return Ok(None),
            Parsed::More => {}
        }
    }
}

fn words(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut w = [0u8; 16];
            w[..4].copy_from_slice(&v4.octets());
            w
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` for an exact lookup of the client socket (sockid src =
/// the client's own address, as `ss` shows it).
fn request(local: SocketAddr, peer: SocketAddr) -> Vec<u8> {
    let family: u8 = if peer.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    };
    let len: u32 = (NLMSG_HDR + 56) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    m.push(family);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(0); // idiag_ext: the cgroup id is reported unasked
    m.push(0);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&peer.port().to_be_bytes());
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&words(peer.ip()));
    m.extend_from_slice(&words(local.ip()));
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Cgroup(u64),
    NotFound,
    More,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply")
}

/// Walks the netlink messages of one datagram.
fn parse(buf: &[u8]) -> io::Result<Parsed> {
    let mut off = 0;
    while off + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, off).ok_or_else(bad)? as usize;
        let kind = u16_at(buf, off + 4).ok_or_else(bad)?;
        if len < NLMSG_HDR || off + len > buf.len() {
            return Err(bad());
        }
        let msg = &buf[off..off + len];
        match kind {
            NLMSG_ERROR => {
                let errno = u32_at(msg, NLMSG_HDR).ok_or_else(bad)? as i32;
                return match -errno {
                    0 | libc::ENOENT => Ok(Parsed::NotFound),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            NLMSG_DONE => return Ok(Parsed::NotFound),
            SOCK_DIAG_BY_FAMILY => return Ok(cgroup_attr(&msg[NLMSG_HDR..])),
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Ok(Parsed::More)
}

/// The `INET_DIAG_CGROUP_ID` attribute after an `inet_diag_msg`.
fn cgroup_attr(body: &[u8]) -> Parsed {
    let mut off = INET_DIAG_MSG;
    while off + 4 <= body.len() {
        let (Some(len), Some(kind)) = (u16_at(body, off), u16_at(body, off + 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < 4 || off + len > body.len() {
            break;
        }
        if kind & 0x3fff == INET_DIAG_CGROUP_ID
            && len >= 12
            && let Some(b) = body.get(off + 4..off + 12).and_then(|b| b.try_into().ok())
        {
            return Parsed::Cgroup(u64::from_ne_bytes(b));
        }
        off += (len + 3) & !3;
    }
    Parsed::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_sockets_cgroup() {
        // Unprivileged: sock_diag answers about one's own sockets too.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let c = std::net::TcpStream::connect(l.local_addr().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let (s, peer) = l.accept().unwrap_or_else(|e| panic!("{e}"));
        let local = s.local_addr().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(peer, c.local_addr().unwrap_or_else(|e| panic!("{e}")));
        let id = peer_cgroup(local, peer).unwrap_or_else(|e| panic!("{e}"));
        // Our own cgroup v2 id: the inode of our cgroup directory.
        let mine = crate::cgroup::Hierarchy::discover()
            .ok()
            .and_then(|h| own_cgroup_id(&h));
        assert!(id.is_some(), "no cgroup id reported");
        if let Some(m) = mine {
            assert_eq!(id, Some(m));
        }
        // A tuple nobody holds.
        let gone = SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(
            peer_cgroup(local, gone).unwrap_or_else(|e| panic!("{e}")),
            None
        );
    }

    fn own_cgroup_id(h: &crate::cgroup::Hierarchy) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let p = h.mount().join(rel.trim_start_matches('/'));
        std::fs::metadata(p).ok().map(|m| m.ino())
    }
}
