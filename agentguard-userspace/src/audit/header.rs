//! The fixed-size headers: `log.header` (once per log) and the start of every segment file.
//!
//! Each ends with 16 bytes of blake3 over the bytes before it. That catches damage, not an
//! attacker (who can recompute it); what an attacker could gain from a header (a different
//! genesis value, a different `first_seq`) shows up as a chain or sequence break instead.

/// Format version written into both headers.
pub const FORMAT_VERSION: u32 = 1;
/// Magic of `log.header`.
pub const LOG_MAGIC: [u8; 8] = *b"AGLOGHDR";
/// Magic at the start of each segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"AGLOGSEG";
/// Size of `log.header`.
pub const LOG_HEADER_LEN: usize = 72;
/// Size of a segment header; the first frame starts here.
pub const SEGMENT_HEADER_LEN: usize = 64;

const CHECK_LEN: usize = 16;
const FLAG_LOST_TOTAL: u32 = 1;

/// Why bytes are not a valid header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than a header takes.
    #[error("header cut short: {0} bytes")]
    Short(usize),
    /// Not the magic this header must start with.
    #[error("wrong magic")]
    BadMagic,
    /// Written by a newer (or unknown) format.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    /// Flag or reserved bits this version does not define.
    #[error("unknown flags or reserved bytes set")]
    Unknown,
    /// The checksum does not match the header's bytes.
    #[error("checksum mismatch (the header is damaged)")]
    BadChecksum,
}

/// `log.header`: what every record of the log ultimately chains from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHeader {
    /// When the log was created, ns since the Unix epoch.
    pub created_wall_ns: u64,
    /// The random value the first record chains from.
    pub genesis: [u8; 32],
}

impl LogHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; LOG_HEADER_LEN] {
        let mut out = [0u8; LOG_HEADER_LEN];
        out[0..8].copy_from_slice(&LOG_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.created_wall_ns.to_le_bytes());
        out[24..56].copy_from_slice(&self.genesis);
        seal_check(&mut out);
        out
    }

    /// Parses and checks a header.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let bytes = checked(bytes, LOG_HEADER_LEN, &LOG_MAGIC)?;
        if u32_at(bytes, 12) != 0 {
            return Err(HeaderError::Unknown);
        }
        let mut genesis = [0u8; 32];
        genesis.copy_from_slice(&bytes[24..56]);
        Ok(Self {
            created_wall_ns: u64_at(bytes, 16),
            genesis,
        })
    }
}

/// The start of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment's first record (also its file name).
    pub first_seq: u64,
    /// The `total` of the newest `Lost` record before this segment, so a restarted daemon
    /// need not read old segments to learn it. Checked by `verify`.
    pub lost_total: Option<u64>,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.lost_total.is_some() {
            FLAG_LOST_TOTAL
        } else {
            0
        };
        out[12..16].copy_from_slice(&flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.lost_total.unwrap_or(0).to_le_bytes());
        seal_check(&mut out);
        out
    }

    /// Parses and checks a header.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let bytes = checked(bytes, SEGMENT_HEADER_LEN, &SEGMENT_MAGIC)?;
        let flags = u32_at(bytes, 12);
        let lost = u64_at(bytes, 24);
        if flags & !FLAG_LOST_TOTAL != 0
            || bytes[32..48].iter().any(|&b| b != 0)
            || (flags & FLAG_LOST_TOTAL == 0 && lost != 0)
        {
            return Err(HeaderError::Unknown);
        }
        Ok(Self {
            first_seq: u64_at(bytes, 16),
            lost_total: (flags & FLAG_LOST_TOTAL != 0).then_some(lost),
        })
    }
}

/// Writes the checksum into the last 16 bytes of `out`.
pub(super) fn seal_check(out: &mut [u8]) {
    let body = out.len() - CHECK_LEN;
    let check = blake3::hash(&out[..body]);
    out[body..].copy_from_slice(&check.as_bytes()[..CHECK_LEN]);
}

/// The first `len` bytes, once magic, version and checksum are right.
pub(super) fn checked<'a>(
    bytes: &'a [u8],
    len: usize,
    magic: &[u8; 8],
) -> Result<&'a [u8], HeaderError> {
    let Some(bytes) = bytes.get(..len) else {
        return Err(HeaderError::Short(bytes.len()));
    };
    if bytes[0..8] != magic[..] {
        return Err(HeaderError::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    let body = len - CHECK_LEN;
    if blake3::hash(&bytes[..body]).as_bytes()[..CHECK_LEN] != bytes[body..] {
        return Err(HeaderError::BadChecksum);
    }
    Ok(bytes)
}

pub(super) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(super) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let log = LogHeader {
            created_wall_ns: 5,
            genesis: [3; 32],
        };
        assert_eq!(LogHeader::decode(&log.encode()), Ok(log));
        for lost_total in [None, Some(0), Some(9)] {
            let seg = SegmentHeader {
                first_seq: 77,
                lost_total,
            };
            assert_eq!(SegmentHeader::decode(&seg.encode()), Ok(seg));
        }
    }

    #[test]
    fn damaged_headers_are_refused() {
        let bytes = LogHeader {
            created_wall_ns: 5,
            genesis: [3; 32],
        }
        .encode();
        assert_eq!(LogHeader::decode(&bytes[..10]), Err(HeaderError::Short(10)));
        let mut flipped = bytes;
        flipped[30] ^= 1;
        assert_eq!(LogHeader::decode(&flipped), Err(HeaderError::BadChecksum));
        assert_eq!(SegmentHeader::decode(&bytes), Err(HeaderError::BadMagic));
        let mut newer = bytes;
        newer[8] = 2;
        assert_eq!(
            LogHeader::decode(&newer),
            Err(HeaderError::UnsupportedVersion(2))
        );
    }
}
