//! Records to frames and back.
//!
//! A frame is `magic(4) | len(u32 LE) | prev(32) | payload(len) | hash(32)`, where the payload
//! is the postcard encoding of a [`Record`] (its canonical bytes) and `hash` is
//! [`chain::link`]`(prev, payload)`. The magic lets a reader find the next frame after damage;
//! the length and the trailing hash make a torn write detectable; storing `prev` lets a verifier
//! tell "this record was changed" (hash mismatch) from "a record before it is gone" (link
//! mismatch).

use super::{
    chain::{self, Hash},
    record::Record,
};

/// First bytes of every frame. Not ASCII-only, so text in a payload rarely looks like it.
pub const FRAME_MAGIC: [u8; 4] = [0xA5, b'A', b'G', b'R'];
/// Bytes a frame adds around its payload.
pub const FRAME_OVERHEAD: usize = 4 + 4 + 32 + 32;
/// Largest payload a frame may carry. Real records are a few hundred bytes; the bound keeps a
/// damaged length field from making a reader wait for, or allocate, gigabytes.
pub const MAX_PAYLOAD: usize = 1 << 20;

const PREFIX: usize = 4 + 4 + 32;

/// Why a record could not be framed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// postcard refused the record.
    #[error("encoding a record: {0}")]
    Postcard(#[from] postcard::Error),
    /// The record's encoding is larger than [`MAX_PAYLOAD`].
    #[error("record is {0} bytes encoded, more than a frame holds ({MAX_PAYLOAD})")]
    TooLarge(usize),
}

/// Appends the frame for `record`, chained from `prev`, to `out`; returns the record's hash.
///
/// On error `out` is left as it was.
/// `record` is a [`Record`] or a borrowed view that encodes to the same bytes (see
/// [`super::borrowed`]). The hash is computed over the payload where it lies in `out`.
pub fn append_frame<R: serde::Serialize + ?Sized>(
    out: &mut Vec<u8>,
    prev: &Hash,
    record: &R,
) -> Result<Hash, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(prev);
    // Encoding straight into the batch buffer avoids an allocation per record.
    if let Err(e) = postcard::to_extend(record, Sink(out)) {
        out.truncate(start);
        return Err(e.into());
    }
    let payload_len = out.len() - start - PREFIX;
    let len = match u32::try_from(payload_len) {
        Ok(len) if payload_len <= MAX_PAYLOAD => len,
        _ => {
            out.truncate(start);
            return Err(EncodeError::TooLarge(payload_len));
        }
    };
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let hash = chain::link(prev, &out[start + PREFIX..]);
    out.extend_from_slice(&hash);
    Ok(hash)
}

/// Lets postcard extend a borrowed buffer (it takes its writer by value).
struct Sink<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Sink<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// A frame as found in a segment, not yet checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The hash the record claims to chain from.
    pub prev: Hash,
    /// The record's canonical bytes.
    pub payload: &'a [u8],
    /// The hash stored after the payload.
    pub hash: Hash,
    /// Bytes the whole frame takes.
    pub len: usize,
}

impl Frame<'_> {
    /// Whether the stored hash is the hash of the stored prev and payload.
    pub fn self_consistent(&self) -> bool {
        chain::link(&self.prev, self.payload) == self.hash
    }

    /// Decodes the payload.
    pub fn record(&self) -> Result<Record, DecodeError> {
        decode_record(self.payload)
    }
}

/// Why a payload is not a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// postcard could not decode it (damage, or a record kind newer than this program).
    #[error("payload does not decode: {0}")]
    Postcard(#[from] postcard::Error),
    /// Bytes were left over after the record: not the canonical encoding.
    #[error("{0} stray bytes after the record")]
    Trailing(usize),
}

/// Decodes canonical record bytes.
pub fn decode_record(payload: &[u8]) -> Result<Record, DecodeError> {
    let (record, rest) = postcard::take_from_bytes::<Record>(payload)?;
    if rest.is_empty() {
        Ok(record)
    } else {
        Err(DecodeError::Trailing(rest.len()))
    }
}

/// Why bytes are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes end inside the frame (a torn write, or a writer still writing).
    #[error("frame cut short: {have} of {need} bytes")]
    Short {
        /// Bytes present.
        have: usize,
        /// Bytes the frame needs (at least).
        need: usize,
    },
    /// The frame does not start with [`FRAME_MAGIC`].
    #[error("no frame magic")]
    BadMagic,
    /// The length field exceeds [`MAX_PAYLOAD`].
    #[error("length field {0} exceeds the limit")]
    BadLength(u32),
}

/// Parses the frame at the start of `bytes`.
pub fn parse_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let have = bytes.len();
    let magic_len = have.min(4);
    if bytes[..magic_len] != FRAME_MAGIC[..magic_len] {
        return Err(FrameError::BadMagic);
    }
    let Some(len_bytes) = bytes.get(4..8) else {
        return Err(FrameError::Short {
            have,
            need: PREFIX + 32,
        });
    };
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(len_bytes);
    let len = u32::from_le_bytes(len4);
    let payload_len = len as usize;
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::BadLength(len));
    }
    let need = FRAME_OVERHEAD + payload_len;
    if have < need {
        return Err(FrameError::Short { have, need });
    }
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&bytes[8..PREFIX]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[PREFIX + payload_len..need]);
    Ok(Frame {
        prev,
        payload: &bytes[PREFIX..PREFIX + payload_len],
        hash,
        len: need,
    })
}

/// Offset of the next complete, self-consistent frame at or after `from`, if any.
///
/// Used to step over damage: a frame whose hash matches is real with overwhelming likelihood,
/// even if its magic happened to appear inside other data.
pub fn find_frame(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(rel) = bytes.get(at..)?.windows(4).position(|w| w == FRAME_MAGIC) {
        let pos = at + rel;
        if let Ok(frame) = parse_frame(&bytes[pos..])
            && frame.self_consistent()
        {
            return Some(pos);
        }
        at = pos + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Body;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            wall_ns: 1,
            mono_ns: 2,
            body: Body::Lost {
                dropped: 3,
                total: 4,
            },
        }
    }

    #[test]
    fn frame_round_trips() {
        let mut buf = vec![9, 9];
        let hash = append_frame(&mut buf, &[5; 32], &record(7)).expect("encodes");
        let frame = parse_frame(&buf[2..]).expect("parses");
        assert_eq!(frame.len, buf.len() - 2);
        assert_eq!(frame.prev, [5; 32]);
        assert_eq!(frame.hash, hash);
        assert!(frame.self_consistent());
        assert_eq!(frame.record().expect("decodes"), record(7));
    }

    #[test]
    fn torn_and_damaged_frames_are_told_apart() {
        let mut buf = Vec::new();
        append_frame(&mut buf, &[0; 32], &record(0)).expect("encodes");
        for cut in 0..buf.len() {
            assert!(
                matches!(parse_frame(&buf[..cut]), Err(FrameError::Short { .. })),
                "cut at {cut}"
            );
        }
        let mut flipped = buf.clone();
        flipped[PREFIX] ^= 1;
        assert!(!parse_frame(&flipped).expect("parses").self_consistent());
        flipped[0] = 0;
        assert_eq!(parse_frame(&flipped), Err(FrameError::BadMagic));
        let mut long = buf.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_frame(&long), Err(FrameError::BadLength(u32::MAX)));
    }

    #[test]
    fn find_frame_skips_garbage() {
        let mut buf = b"garbage\xA5AGR more".to_vec();
        let at = buf.len();
        append_frame(&mut buf, &[0; 32], &record(0)).expect("encodes");
        assert_eq!(find_frame(&buf, 0), Some(at));
        assert_eq!(find_frame(&buf, at + 1), None);
    }

    #[test]
    fn trailing_bytes_are_not_canonical() {
        let mut bytes = postcard::to_stdvec(&record(1)).expect("encodes");
        bytes.push(0);
        assert!(matches!(
            decode_record(&bytes),
            Err(DecodeError::Trailing(1))
        ));
    }
}
