//! A borrowed view of an [`Action`] record, for the event pipeline: built from a kernel event
//! and the daemon's name snapshot without allocating, and encoded to exactly the bytes the owned
//! [`Record`] would be (postcard writes neither type nor field names, only the fields in order
//! and enum variant indexes; `&str` and `Cow<str>` encode as `String` does).
//!
//! The field order and variant order below must follow [`Action`], [`Target`] and [`Body`]; the
//! tests check every target kind byte for byte against the owned encoding.
//!
//! [`Record`]: super::record::Record
//! [`Body`]: super::record::Body

use std::{borrow::Cow, net::IpAddr};

use serde::{Serialize, Serializer, ser::SerializeStruct};

use super::record::{Action, Target};

/// [`Action`], borrowing its strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActionRef<'a> {
    /// See [`Action::kind`].
    pub kind: u16,
    /// See [`Action::verdict`].
    pub verdict: u8,
    /// See [`Action::backend`].
    pub backend: u8,
    /// See [`Action::agent`].
    pub agent: &'a str,
    /// See [`Action::instance`].
    pub instance: &'a str,
    /// See [`Action::cgroup_id`].
    pub cgroup_id: u64,
    /// See [`Action::pid`].
    pub pid: u32,
    /// See [`Action::tid`].
    pub tid: u32,
    /// See [`Action::uid`].
    pub uid: u32,
    /// See [`Action::comm`] (owned only when the kernel's bytes were not UTF-8).
    pub comm: Cow<'a, str>,
    /// See [`Action::target`].
    pub target: TargetRef<'a>,
    /// See [`Action::rule`].
    pub rule: Option<&'a str>,
    /// See [`Action::flags`].
    pub flags: u32,
    /// See [`Action::generation`].
    pub generation: u32,
}

/// [`Target`], borrowing its strings. Same variants in the same order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TargetRef<'a> {
    /// See [`Target::Net`].
    Net {
        /// Address.
        addr: IpAddr,
        /// Port.
        port: u16,
        /// IP protocol number.
        protocol: u8,
        /// DNS name the allowing rule came from.
        name: Option<&'a str>,
    },
    /// See [`Target::Exec`].
    Exec {
        /// File name as passed to exec.
        path: Cow<'a, str>,
        /// Kernel `s_dev`.
        dev: u64,
        /// Inode.
        ino: u64,
    },
    /// See [`Target::File`].
    File {
        /// Operation number.
        op: u16,
        /// `ACCESS_*` bits.
        access: u8,
        /// Path.
        path: Cow<'a, str>,
        /// Target pid for ptrace.
        target_pid: Option<u32>,
    },
}

impl ActionRef<'_> {
    /// The owned record (for the few consumers that keep it, e.g. the recent refusals).
    pub fn to_owned_action(&self) -> Action {
        Action {
            kind: self.kind,
            verdict: self.verdict,
            backend: self.backend,
            agent: self.agent.to_owned(),
            instance: self.instance.to_owned(),
            cgroup_id: self.cgroup_id,
            pid: self.pid,
            tid: self.tid,
            uid: self.uid,
            comm: self.comm.clone().into_owned(),
            target: match &self.target {
                TargetRef::Net {
                    addr,
                    port,
                    protocol,
                    name,
                } => Target::Net {
                    addr: *addr,
                    port: *port,
                    protocol: *protocol,
                    name: name.map(str::to_owned),
                },
                TargetRef::Exec { path, dev, ino } => Target::Exec {
                    path: path.clone().into_owned(),
                    dev: *dev,
                    ino: *ino,
                },
                TargetRef::File {
                    op,
                    access,
                    path,
                    target_pid,
                } => Target::File {
                    op: *op,
                    access: *access,
                    path: path.clone().into_owned(),
                    target_pid: *target_pid,
                },
            },
            rule: self.rule.map(str::to_owned),
            flags: self.flags,
            generation: self.generation,
        }
    }
}

/// A [`Record`](super::record::Record) whose body is `Body::Action`, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct ActionRecordRef<'r, 'a> {
    /// See `Record::seq`.
    pub seq: u64,
    /// See `Record::wall_ns`.
    pub wall_ns: u64,
    /// See `Record::mono_ns`.
    pub mono_ns: u64,
    /// The action.
    pub action: &'r ActionRef<'a>,
}

/// Variant index of `Body::Action` (the record kind; see [`super::record::Body::kind_id`]).
const BODY_ACTION: u32 = 0;

/// The body, written as `Body::Action(..)`.
struct AsBody<'r, 'a>(&'r ActionRef<'a>);

impl Serialize for AsBody<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("Body", BODY_ACTION, "Action", self.0)
    }
}

impl Serialize for ActionRecordRef<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut r = s.serialize_struct("Record", 4)?;
        r.serialize_field("seq", &self.seq)?;
        r.serialize_field("wall_ns", &self.wall_ns)?;
        r.serialize_field("mono_ns", &self.mono_ns)?;
        r.serialize_field("body", &AsBody(self.action))?;
        r.end()
    }
}

#[cfg(test)]
mod tests {
    use agentguard_common::event::PROTO_UDP;

    use super::*;
    use crate::audit::{
        self, AuditLog,
        chain::Hash,
        encode,
        record::{Body, Record},
        testutil::options,
    };

    fn actions<'a>() -> Vec<ActionRef<'a>> {
        let base = ActionRef {
            kind: 1,
            verdict: 2,
            backend: 3,
            agent: "buyer/search",
            instance: "buyer/1/search/2",
            cgroup_id: u64::MAX,
            pid: 1,
            tid: u32::MAX,
            uid: 0,
            comm: Cow::Borrowed("python3"),
            target: TargetRef::Net {
                addr: IpAddr::from([192, 0, 2, 1]),
                port: 443,
                protocol: 6,
                name: Some("api.example.com"),
            },
            rule: Some("api.example.com:443"),
            flags: 0x8000_0001,
            generation: 1,
        };
        let targets = [
            TargetRef::Net {
                addr: "2001:db8::1".parse().expect("ip"),
                port: 0,
                protocol: PROTO_UDP,
                name: None,
            },
            TargetRef::Exec {
                path: Cow::Borrowed("/usr/bin/curl"),
                dev: 0xfd00,
                ino: 1 << 40,
            },
            TargetRef::File {
                op: 3,
                access: 0x7,
                path: Cow::Borrowed("/etc/shadow"),
                target_pid: Some(77),
            },
            TargetRef::File {
                op: 9,
                access: 0,
                path: Cow::Owned(String::from_utf8_lossy(b"bad\xffutf8").into_owned()),
                target_pid: None,
            },
        ];
        let mut out = vec![base.clone()];
        for t in targets {
            out.push(ActionRef {
                target: t,
                agent: "",
                instance: "",
                rule: None,
                comm: Cow::Owned("é\u{fffd}".into()),
                ..base.clone()
            });
        }
        out
    }

    fn owned(seq: u64, a: &ActionRef<'_>) -> Record {
        Record {
            seq,
            wall_ns: 1_700_000_000_000_000_000 + seq,
            mono_ns: 12_345 + seq,
            body: Body::Action(a.to_owned_action()),
        }
    }

    #[test]
    fn borrowed_and_owned_encodings_are_identical() {
        for (i, a) in actions().iter().enumerate() {
            let seq = (i as u64) << 33;
            let want = owned(seq, a);
            let borrowed = ActionRecordRef {
                seq,
                wall_ns: want.wall_ns,
                mono_ns: want.mono_ns,
                action: a,
            };
            let b = postcard::to_stdvec(&borrowed).expect("encodes");
            assert_eq!(b, postcard::to_stdvec(&want).expect("encodes"), "{a:?}");
            assert_eq!(encode::decode_record(&b).expect("decodes"), want);
            // The whole frame, hash included.
            let prev: Hash = [i as u8; 32];
            let (mut fb, mut fo) = (Vec::new(), Vec::new());
            let hb = encode::append_frame(&mut fb, &prev, &borrowed).expect("frame");
            let ho = encode::append_frame(&mut fo, &prev, &want).expect("frame");
            assert_eq!((fb, hb), (fo, ho));
        }
    }

    #[test]
    fn a_log_of_borrowed_records_verifies_and_reads_back_as_owned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = AuditLog::open(options(dir.path())).expect("open");
        let all = actions();
        let mut want = Vec::new();
        for (i, a) in all.iter().enumerate() {
            let seq = if i % 2 == 0 {
                log.append_action(5, 6, a).expect("append")
            } else {
                log.append(5, 6, Body::Action(a.to_owned_action()))
                    .expect("append")
            };
            want.push(Record { seq, ..owned(0, a) });
        }
        let head = log.head();
        drop(log);
        let report = audit::verify(dir.path(), None, Some(head.anchor())).expect("verify");
        assert!(report.intact(), "{report}");
        let mut tail = audit::follow::Tail::new(dir.path());
        let batch = tail.poll().expect("poll");
        assert_eq!(batch.records.len(), want.len());
        for (r, w) in batch.records.iter().zip(&want) {
            assert_eq!((r.seq, &r.body), (w.seq, &w.body));
        }
    }
}
