//! Segment files: `<first seq, 20 digits>.seg`, so names sort in log order.

use std::{
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use super::{
    error::{AuditError, io_at},
    files::{self, LOG_MODE},
    header::SegmentHeader,
};

/// File name suffix of segments.
pub const SUFFIX: &str = ".seg";

/// A segment file found in the log directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// The sequence number its name says it starts at.
    pub first_seq: u64,
    /// Its path.
    pub path: PathBuf,
}

impl SegmentFile {
    /// The file name, for messages and `Recovered` records.
    pub fn name(&self) -> String {
        file_name(self.first_seq)
    }

    /// Reads the whole file. Segments are bounded by the rotation size, so this is a few tens
    /// of MiB at most, and reading at once is much simpler than frame-by-frame I/O.
    pub fn read(&self) -> Result<Vec<u8>, AuditError> {
        read_from(&self.path, 0)
    }
}

/// Reads `path` from byte `offset` to its end.
pub fn read_from(path: &Path, offset: u64) -> Result<Vec<u8>, AuditError> {
    use std::io::Seek;
    let mut file = fs::File::open(path).map_err(io_at(path))?;
    if offset > 0 {
        file.seek(io::SeekFrom::Start(offset))
            .map_err(io_at(path))?;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_at(path))?;
    Ok(bytes)
}

/// The file name of the segment starting at `first_seq`.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

/// The first sequence number a segment file name stands for.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, in log order. Other files are ignored.
pub fn list(dir: &Path) -> Result<Vec<SegmentFile>, AuditError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        if let Some(first_seq) = name.to_str().and_then(parse_name) {
            out.push(SegmentFile {
                first_seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// Creates a segment holding only its header, durably (a crash leaves it whole or absent).
pub fn create(dir: &Path, header: SegmentHeader) -> Result<SegmentFile, AuditError> {
    let name = file_name(header.first_seq);
    files::write_atomic(dir, &name, &header.encode(), LOG_MODE)?;
    Ok(SegmentFile {
        first_seq: header.first_seq,
        path: dir.join(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_log_order() {
        let names: Vec<String> = [0, 9, 10, 123_456_789, u64::MAX].map(file_name).into();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(file_name(0), "00000000000000000000.seg");
        for (seq, name) in [0, 9, u64::MAX].map(|s| (s, file_name(s))) {
            assert_eq!(parse_name(&name), Some(seq));
        }
        assert_eq!(parse_name("0.seg"), None);
        assert_eq!(parse_name("0000000000000000000x.seg"), None);
        assert_eq!(parse_name("log.header"), None);
    }

    #[test]
    fn list_finds_segments_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        for seq in [20, 0, 10] {
            create(
                dir.path(),
                SegmentHeader {
                    first_seq: seq,
                    lost_total: None,
                },
            )
            .expect("create");
        }
        fs::write(dir.path().join("log.header"), b"x").expect("write");
        let seqs: Vec<u64> = list(dir.path())
            .expect("list")
            .iter()
            .map(|s| s.first_seq)
            .collect();
        assert_eq!(seqs, [0, 10, 20]);
    }
}
