//! Test helpers: typical records, and surgery on a written log's frames (what an attacker on
//! the host, or a crash, would do to the files).

use std::{fs, net::IpAddr, path::Path, time::Duration};

use agentguard_common::{
    event::{EventKind, PROTO_TCP},
    verdict::{Backend, Verdict},
};

use super::{
    chain::Hash,
    encode,
    header::SEGMENT_HEADER_LEN,
    record::{Action, Body, Record, Target},
    segment,
    writer::LogOptions,
};

/// A typical network action; `i` varies agent, verdict and port.
pub fn action(i: u64) -> Body {
    let verdict = if i.is_multiple_of(3) {
        Verdict::Denied
    } else {
        Verdict::Allowed
    };
    Body::Action(Action {
        kind: EventKind::Connect as u16,
        verdict: verdict as u8,
        backend: Backend::CgroupSockAddr as u8,
        agent: if i.is_multiple_of(2) {
            "buyer".into()
        } else {
            "buyer/search".into()
        },
        instance: "buyer/1".into(),
        cgroup_id: 4242,
        pid: 1000 + (i % 7) as u32,
        tid: 1000,
        uid: 1000,
        comm: "python3".into(),
        target: Target::Net {
            addr: IpAddr::from([192, 0, 2, 1]),
            port: 443 + (i % 5) as u16,
            protocol: PROTO_TCP,
            name: Some("api.example.com".into()),
        },
        rule: Some("api.example.com:443".into()),
        flags: 0,
        generation: 1,
    })
}

/// Options that never seal or fsync by time during a test, so results do not depend on timing.
pub fn options(dir: &Path) -> LogOptions {
    LogOptions {
        seal_interval: Duration::from_secs(3600),
        fsync_interval: Duration::from_secs(3600),
        ..LogOptions::new(dir)
    }
}

/// A segment file split into its header and frames.
pub struct Surgery {
    path: std::path::PathBuf,
    pub header: Vec<u8>,
    pub frames: Vec<Vec<u8>>,
}

impl Surgery {
    /// Splits the segment starting at `first_seq` in `dir`.
    pub fn open(dir: &Path, first_seq: u64) -> Self {
        let path = dir.join(segment::file_name(first_seq));
        let bytes = fs::read(&path).expect("read segment");
        let (header, mut rest) = bytes.split_at(SEGMENT_HEADER_LEN);
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len = encode::parse_frame(rest).expect("intact frame").len;
            frames.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
        Self {
            path,
            header: header.to_vec(),
            frames,
        }
    }

    /// The record in frame `i`.
    pub fn record(&self, i: usize) -> Record {
        encode::parse_frame(&self.frames[i])
            .expect("frame")
            .record()
            .expect("record")
    }

    /// Frame `i`'s hash.
    pub fn hash(&self, i: usize) -> Hash {
        encode::parse_frame(&self.frames[i]).expect("frame").hash
    }

    /// Frame `i`'s prev.
    pub fn prev(&self, i: usize) -> Hash {
        encode::parse_frame(&self.frames[i]).expect("frame").prev
    }

    /// Index of the first frame at or after `i` holding an action.
    pub fn action_at_or_after(&self, i: usize) -> usize {
        (i..self.frames.len())
            .find(|&j| matches!(self.record(j).body, Body::Action(_)))
            .expect("an action")
    }

    /// A well-formed frame for `record` chained from `prev`.
    pub fn frame(prev: &Hash, record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        encode::append_frame(&mut out, prev, record).expect("encode");
        out
    }

    /// Replaces frame `i` with `record`, keeping its prev (its hash changes: the next frame's
    /// link breaks, as after "edit and fix the hash").
    pub fn rewrite(&mut self, i: usize, record: &Record) {
        self.frames[i] = Self::frame(&self.prev(i), record);
    }

    /// Re-links and re-hashes every frame from `i` on, as an attacker without the seal key
    /// would after changing frame `i` (seals keep their now-wrong MACs).
    pub fn rechain(&mut self, i: usize) {
        let mut prev = match i.checked_sub(1) {
            Some(before) => self.hash(before),
            None => self.prev(i),
        };
        for j in i..self.frames.len() {
            let record = self.record(j);
            self.frames[j] = Self::frame(&prev, &record);
            prev = self.hash(j);
        }
    }

    /// Writes the segment back.
    pub fn save(&self) {
        let mut bytes = self.header.clone();
        for f in &self.frames {
            bytes.extend_from_slice(f);
        }
        fs::write(&self.path, bytes).expect("write segment");
    }
}

/// Every record of the log in `dir`, in order (no warnings allowed).
pub fn read_all(dir: &Path) -> Vec<Record> {
    let mut tail = super::follow::Tail::new(dir);
    let mut out = Vec::new();
    loop {
        let batch = tail.poll().expect("poll");
        assert!(batch.warnings.is_empty(), "{:?}", batch.warnings);
        out.extend(batch.records);
        if !batch.more {
            return out;
        }
    }
}
