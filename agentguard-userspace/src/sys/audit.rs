//! The kernel audit subsystem over `NETLINK_AUDIT`: reading its status, switching it on and
//! off, adding and removing task-filter rules, and joining the read-only multicast group.
//!
//! agentguard never registers itself as the audit daemon (the unicast `pid`): a host's auditd
//! keeps receiving everything, and agentguard reads the same records from the multicast group
//! `AUDIT_NLGRP_READLOG`. Message encoding is kept in pure functions so it is unit-tested.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::{
    errno::Errno,
    sys::socket::{
        self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt,
    },
};

/// `AUDIT_GET`: read the status.
const AUDIT_GET: u16 = 1000;
/// `AUDIT_SET`: change the status.
const AUDIT_SET: u16 = 1001;
/// `AUDIT_ADD_RULE`.
const AUDIT_ADD_RULE: u16 = 1011;
/// `AUDIT_DEL_RULE`.
const AUDIT_DEL_RULE: u16 = 1012;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// `AUDIT_STATUS_ENABLED` in `audit_status.mask`.
const AUDIT_STATUS_ENABLED: u32 = 1;
/// `AUDIT_STATUS_BACKLOG_LIMIT` in `audit_status.mask`.
const AUDIT_STATUS_BACKLOG_LIMIT: u32 = 0x10;
/// The multicast group of read-only audit listeners.
pub const AUDIT_NLGRP_READLOG: u32 = 1;
/// `AUDIT_FILTER_TASK`: rules consulted when a task is created.
const AUDIT_FILTER_TASK: u32 = 1;
/// `AUDIT_NEVER`: no audit context for matching tasks.
const AUDIT_NEVER: u32 = 0;
/// `AUDIT_UID` field.
const AUDIT_UID: u32 = 0;
/// `AUDIT_LESS_THAN` operator.
const AUDIT_LESS_THAN: u32 = 0x1000_0000;
/// `AUDIT_GREATER_THAN | AUDIT_EQUAL`.
const AUDIT_GREATER_THAN_OR_EQUAL: u32 = 0x2000_0000 | 0x4000_0000;
/// `AUDIT_MAX_FIELDS` and `AUDIT_BITMASK_SIZE`.
const AUDIT_RULE_SLOTS: usize = 64;
const NLMSG_HDRLEN: usize = 16;

/// Audit netlink errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditNetlinkError {
    /// The socket could not be created or used.
    #[error("audit netlink {what}: {errno}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        errno: Errno,
    },
    /// The kernel answered with an error.
    #[error("the kernel refused {what}: {errno}")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// The error.
        errno: Errno,
    },
    /// The kernel's reply could not be read.
    #[error("malformed audit netlink reply to {0}")]
    Malformed(&'static str),
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> AuditNetlinkError {
    move |errno| AuditNetlinkError::Sys { what, errno }
}

/// The part of `struct audit_status` agentguard uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// 0 off, 1 on, 2 on and locked until reboot.
    pub enabled: u32,
    /// The registered audit daemon's pid (0: none).
    pub pid: u32,
    /// Records queued for the audit thread at most; beyond it the kernel drops them.
    pub backlog_limit: u32,
    /// Records the kernel dropped since boot (backlog full, rate limit), of any kind.
    pub lost: u32,
}

/// A task-filter rule: `never` for tasks whose uid is outside `[from, to)`, expressed as the
/// two rules `uid < from` and `uid >= to` (the kernel ANDs fields within one rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeverRule {
    /// `-a never,task -F uid<N`.
    UidBelow(u32),
    /// `-a never,task -F uid>=N`.
    UidFrom(u32),
}

/// Encodes one netlink message: header, then the payload padded to 4 bytes.
pub fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// One netlink message in a datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// The payload.
    pub payload: &'a [u8],
}

/// Splits a datagram into its netlink messages; stops at the first malformed header.
pub fn messages(mut buf: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let len = usize::try_from(word(0)).unwrap_or(usize::MAX);
        if len < NLMSG_HDRLEN || len > buf.len() {
            // The audit multicast path sets nlmsg_len to the header plus the text; a few
            // kernels have sent it short of the buffer or past it: take what is there.
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            out.push(Message {
                kind,
                seq: word(8),
                payload: &buf[NLMSG_HDRLEN..],
            });
            break;
        }
        out.push(Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            seq: word(8),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// `struct audit_status` asking to set `enabled`.
pub fn set_enabled_payload(enabled: u32) -> Vec<u8> {
    let mut words = [0u32; 11];
    words[0] = AUDIT_STATUS_ENABLED;
    words[1] = enabled;
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// `struct audit_status` asking to set `backlog_limit`.
pub fn set_backlog_payload(limit: u32) -> Vec<u8> {
    let mut words = [0u32; 11];
    words[0] = AUDIT_STATUS_BACKLOG_LIMIT;
    words[5] = limit;
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Reads `enabled`, `pid`, `backlog_limit` and `lost` from an `AUDIT_GET` reply.
pub fn parse_status(payload: &[u8]) -> Option<Status> {
    let word = |i: usize| {
        let b = payload.get(i * 4..i * 4 + 4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    Some(Status {
        enabled: word(1)?,
        pid: word(3)?,
        backlog_limit: word(5)?,
        lost: word(6)?,
    })
}

/// The `Drops` column of `/proc/net/netlink` for the socket with inode `inode`: records the
/// kernel could not queue to it (its receive buffer was full).
pub fn socket_drops(proc_net_netlink: &str, inode: u64) -> Option<u64> {
    proc_net_netlink.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (ino, drops) = (cols.get(9)?, cols.get(8)?);
        (ino.parse::<u64>().ok()? == inode)
            .then(|| drops.parse().ok())
            .flatten()
    })
}

/// How many records the kernel could not queue to `fd` (a netlink socket) so far.
pub fn drops_of(fd: &OwnedFd) -> Option<u64> {
    let inode = nix::sys::stat::fstat(fd).ok()?.st_ino;
    socket_drops(&std::fs::read_to_string("/proc/net/netlink").ok()?, inode)
}

/// `struct audit_rule_data` for a task-filter `never` rule.
pub fn rule_payload(rule: NeverRule) -> Vec<u8> {
    let (op, value) = match rule {
        NeverRule::UidBelow(v) => (AUDIT_LESS_THAN, v),
        NeverRule::UidFrom(v) => (AUDIT_GREATER_THAN_OR_EQUAL, v),
    };
    let mut words = Vec::with_capacity(4 + 4 * AUDIT_RULE_SLOTS);
    words.extend([AUDIT_FILTER_TASK, AUDIT_NEVER, 1]);
    // The syscall mask does not apply to the task list: all syscalls, as auditctl writes it.
    words.extend([u32::MAX; AUDIT_RULE_SLOTS]);
    let slots = |first: u32| {
        let mut s = [0u32; AUDIT_RULE_SLOTS];
        s[0] = first;
        s
    };
    words.extend(slots(AUDIT_UID));
    words.extend(slots(value));
    words.extend(slots(op));
    // buflen: no string fields.
    words.push(0);
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// An `NLMSG_ERROR` payload: the errno (0 for an acknowledgement).
fn ack_errno(payload: &[u8]) -> Option<i32> {
    let b = payload.get(..4)?;
    Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// A request/reply socket for audit control.
#[derive(Debug)]
pub struct Control {
    fd: OwnedFd,
    seq: u32,
}

impl Control {
    /// Opens a control socket. Fails with `EPROTONOSUPPORT` without `CONFIG_AUDIT`.
    pub fn open() -> Result<Self, AuditNetlinkError> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkAudit,
        )
        .map_err(sys("socket"))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(sys("bind"))?;
        // A kernel that never answers must not hang the daemon's start or exit.
        socket::setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(5, 0),
        )
        .map_err(sys("SO_RCVTIMEO"))?;
        Ok(Self { fd, seq: 0 })
    }

    /// Sends a request and waits for the kernel's acknowledgement, or with `reply`, for a
    /// message of that type: the kernel sends `AUDIT_GET`'s answer from a worker thread, so
    /// it may come after the acknowledgement.
    fn request(
        &mut self,
        what: &'static str,
        kind: u16,
        payload: &[u8],
        reply: Option<u16>,
    ) -> Result<Vec<(u16, Vec<u8>)>, AuditNetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let msg = message(kind, NLM_F_REQUEST | NLM_F_ACK, self.seq, payload);
        socket::sendto(
            self.fd.as_raw_fd(),
            &msg,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(sys("send"))?;
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 8192];
        // Bounded: a kernel that never acknowledges must not hang the daemon.
        for _ in 0..16 {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(sys("recv"))?;
            for m in messages(&buf[..n]) {
                if m.seq != self.seq {
                    continue;
                }
                match m.kind {
                    NLMSG_ERROR => {
                        let errno =
                            ack_errno(m.payload).ok_or(AuditNetlinkError::Malformed(what))?;
                        if errno != 0 {
                            return Err(AuditNetlinkError::Refused {
                                what,
                                errno: Errno::from_raw(-errno),
                            });
                        }
                        if reply.is_none() {
                            return Ok(replies);
                        }
                    }
                    NLMSG_DONE if reply.is_none() => return Ok(replies),
                    k => {
                        replies.push((k, m.payload.to_vec()));
                        if reply == Some(k) {
                            return Ok(replies);
                        }
                    }
                }
            }
        }
        Err(AuditNetlinkError::Malformed(what))
    }

    /// The current status.
    pub fn status(&mut self) -> Result<Status, AuditNetlinkError> {
        let replies = self.request("AUDIT_GET", AUDIT_GET, &[], Some(AUDIT_GET))?;
        replies
            .iter()
            .find(|(k, _)| *k == AUDIT_GET)
            .and_then(|(_, p)| parse_status(p))
            .ok_or(AuditNetlinkError::Malformed("AUDIT_GET"))
    }

    /// Switches auditing on (1) or off (0).
    pub fn set_enabled(&mut self, enabled: u32) -> Result<(), AuditNetlinkError> {
        self.request("AUDIT_SET", AUDIT_SET, &set_enabled_payload(enabled), None)
            .map(drop)
    }

    /// Sets how many records the kernel queues before it drops them.
    pub fn set_backlog_limit(&mut self, limit: u32) -> Result<(), AuditNetlinkError> {
        self.request("AUDIT_SET", AUDIT_SET, &set_backlog_payload(limit), None)
            .map(drop)
    }

    /// Adds a rule; one that is already there (a previous daemon's) counts as added.
    pub fn add_rule(&mut self, rule: NeverRule) -> Result<(), AuditNetlinkError> {
        match self.request("AUDIT_ADD_RULE", AUDIT_ADD_RULE, &rule_payload(rule), None) {
            Err(AuditNetlinkError::Refused {
                errno: Errno::EEXIST,
                ..
            }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Removes a rule; one that is not there counts as removed.
    pub fn delete_rule(&mut self, rule: NeverRule) -> Result<(), AuditNetlinkError> {
        match self.request("AUDIT_DEL_RULE", AUDIT_DEL_RULE, &rule_payload(rule), None) {
            Err(AuditNetlinkError::Refused {
                errno: Errno::ENOENT,
                ..
            }) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// A non-blocking socket joined to the read-only multicast group, for the daemon's reactor.
pub fn multicast_reader() -> Result<OwnedFd, AuditNetlinkError> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkAudit,
    )
    .map_err(sys("socket"))?;
    // Room for bursts while the daemon is busy: records beyond it are lost (ENOBUFS).
    let _ = socket::setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20));
    socket::bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, 1 << (AUDIT_NLGRP_READLOG - 1)),
    )
    .map_err(sys("bind to the audit read-log multicast group"))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_padding() {
        let a = message(AUDIT_GET, NLM_F_REQUEST | NLM_F_ACK, 7, &[]);
        assert_eq!(a.len(), 16);
        assert_eq!(&a[..4], &16u32.to_ne_bytes());
        let b = message(1423, 0, 0, b"audit(1.2:3): x=1\0");
        assert_eq!(b.len(), 36, "18 bytes of text padded to 20");
        let mut both = a.clone();
        both.extend_from_slice(&b);
        let got = messages(&both);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].kind, got[0].seq, got[0].payload),
            (AUDIT_GET, 7, &[][..])
        );
        assert_eq!(got[1].payload, b"audit(1.2:3): x=1\0");
        // A truncated trailer is not a message; an overlong length keeps what is there.
        assert_eq!(messages(&both[..10]), vec![]);
        let mut long = b.clone();
        long[..4].copy_from_slice(&100u32.to_ne_bytes());
        assert_eq!(messages(&long)[0].payload, &b[16..]);
    }

    #[test]
    fn status_and_rules_have_the_kernel_layout() {
        let set = set_enabled_payload(1);
        assert_eq!(set.len(), 44);
        assert_eq!(
            &set[..8],
            &[1u32.to_ne_bytes(), 1u32.to_ne_bytes()].concat()[..]
        );
        let mut reply = vec![0u8; 44];
        reply[4..8].copy_from_slice(&2u32.to_ne_bytes());
        reply[12..16].copy_from_slice(&900u32.to_ne_bytes());
        reply[20..24].copy_from_slice(&64u32.to_ne_bytes());
        reply[24..28].copy_from_slice(&31u32.to_ne_bytes());
        assert_eq!(
            parse_status(&reply),
            Some(Status {
                enabled: 2,
                pid: 900,
                backlog_limit: 64,
                lost: 31,
            })
        );
        assert_eq!(parse_status(&reply[..10]), None);
        let backlog = set_backlog_payload(8192);
        assert_eq!(&backlog[..4], &0x10u32.to_ne_bytes());
        assert_eq!(&backlog[20..24], &8192u32.to_ne_bytes());

        let rule = rule_payload(NeverRule::UidFrom(0x7e01_0000));
        assert_eq!(rule.len(), 4 * (3 + 4 * 64 + 1));
        let word = |i: usize| u32::from_ne_bytes(rule[i * 4..i * 4 + 4].try_into().expect("4"));
        assert_eq!(
            (word(0), word(1), word(2)),
            (AUDIT_FILTER_TASK, AUDIT_NEVER, 1)
        );
        assert_eq!(word(3 + 64), AUDIT_UID);
        assert_eq!(word(3 + 128), 0x7e01_0000);
        assert_eq!(word(3 + 192), AUDIT_GREATER_THAN_OR_EQUAL);
        assert_eq!(word(3 + 256), 0, "no string buffer");
        assert_eq!(ack_errno(&(-17i32).to_ne_bytes()), Some(-17));
    }

    #[test]
    fn socket_drops_come_from_the_row_of_the_socket_inode() {
        let table = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n\
                     0000000087427714 0   0          00000000 0        0        0     2        0        4       \n\
                     000000005a56c94e 9   4242       00000001 4096     0        0     2        17       548     \n";
        assert_eq!(socket_drops(table, 548), Some(17));
        assert_eq!(socket_drops(table, 4), Some(0));
        assert_eq!(socket_drops(table, 5), None);
    }
}
