//! Userspace views: `aya::Pod` for every map type, and safe decoding of ring buffer records.

use core::{fmt, mem::size_of, ptr};

use crate::{
    agent::{
        AgentConfig, AgentKey, Bucket, BucketKey, CgroupEntry, Counters, EventBudget, GlobalState,
    },
    event::{EventHeader, EventKind, ExecEvent, FileEvent, NetEvent},
    offsets::KernelOffsets,
    rules::{ExecKey, NetKey, PathKey, RuleRef},
};

macro_rules! pod {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: `#[repr(C)]`, only integer fields and explicit padding: every bit pattern is a
        // valid value and there are no implicit padding bytes.
        unsafe impl aya::Pod for $t {}
    )*};
}

pod!(
    AgentConfig,
    KernelOffsets,
    AgentKey,
    Bucket,
    BucketKey,
    CgroupEntry,
    Counters,
    EventBudget,
    GlobalState,
    RuleRef,
    NetKey,
    PathKey,
    ExecKey,
);

/// A ring buffer record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// [`EventKind::Connect`] or [`EventKind::Send`].
    Net(NetEvent),
    /// [`EventKind::Exec`].
    Exec(ExecEvent),
    /// [`EventKind::FileOpen`], [`EventKind::PathOp`] or [`EventKind::Privileged`].
    File(FileEvent),
}

impl KernelEvent {
    /// The common header.
    pub const fn header(&self) -> &EventHeader {
        match self {
            Self::Net(e) => &e.header,
            Self::Exec(e) => &e.header,
            Self::File(e) => &e.header,
        }
    }
}

/// Why a ring buffer record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than the struct its kind names.
    Short {
        /// The kind number read.
        kind: u16,
        /// Bytes received.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The kind number is not one the kernel sends.
    UnknownKind(u16),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short {
                kind,
                len,
                expected,
            } => write!(
                f,
                "event of kind {kind} is {len} bytes, expected {expected}"
            ),
            Self::UnknownKind(k) => write!(f, "unknown event kind {k}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Reads a `T` from the start of `buf` after checking its length.
fn read<T: Copy>(buf: &[u8], kind: u16) -> Result<T, DecodeError> {
    if buf.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: buf.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: the length was checked above; `T` is one of this crate's integer-only
    // `#[repr(C)]` event types for which every bit pattern is valid; the read is unaligned.
    Ok(unsafe { ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// Decodes one ring buffer record.
pub fn decode(buf: &[u8]) -> Result<KernelEvent, DecodeError> {
    if buf.len() < 2 {
        return Err(DecodeError::Short {
            kind: 0,
            len: buf.len(),
            expected: size_of::<EventHeader>(),
        });
    }
    let kind = u16::from_ne_bytes([buf[0], buf[1]]);
    match EventKind::from_u16(kind) {
        Some(EventKind::Connect | EventKind::Send) => read(buf, kind).map(KernelEvent::Net),
        Some(EventKind::Exec) => read(buf, kind).map(KernelEvent::Exec),
        Some(EventKind::FileOpen | EventKind::PathOp | EventKind::Privileged) => {
            read(buf, kind).map(KernelEvent::File)
        }
        Some(EventKind::Lost) | None => Err(DecodeError::UnknownKind(kind)),
    }
}

/// The bytes of a NUL-terminated fixed buffer, up to the first NUL.
pub fn c_bytes(buf: &[u8]) -> &[u8] {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    &buf[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{COMM_LEN, rules::NO_RULE, verdict::Verdict};

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u16,
            verdict: Verdict::Denied as u8,
            backend: 1,
            rule_id: NO_RULE,
            ktime_ns: 42,
            cgroup_id: 7,
            agent_id: 9,
            generation: 1,
            pid: 100,
            tid: 101,
            uid: 1000,
            flags: 0,
            comm: [b'x'; COMM_LEN],
        }
    }

    fn bytes_of<T>(v: &T) -> &[u8] {
        // SAFETY: test-only view of a plain integer struct as bytes.
        unsafe { core::slice::from_raw_parts(ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn decodes_net_event_round_trip() {
        let ev = NetEvent {
            header: header(EventKind::Connect),
            addr: [1; 16],
            port: 8080,
            family: 2,
            protocol: 6,
            _pad: [0; 3],
        };
        assert_eq!(decode(bytes_of(&ev)), Ok(KernelEvent::Net(ev)));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let ev = NetEvent {
            header: header(EventKind::Send),
            addr: [0; 16],
            port: 1,
            family: 10,
            protocol: 17,
            _pad: [0; 3],
        };
        let b = bytes_of(&ev);
        assert!(matches!(
            decode(&b[..70]),
            Err(DecodeError::Short {
                kind: 2,
                len: 70,
                ..
            })
        ));
        let mut unknown = header(EventKind::Exec);
        unknown.kind = 999;
        assert_eq!(
            decode(bytes_of(&unknown)),
            Err(DecodeError::UnknownKind(999))
        );
        assert_eq!(c_bytes(b"ab\0cd"), b"ab");
    }
}
