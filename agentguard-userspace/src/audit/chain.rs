//! The hash chain: how a record's hash binds it to everything before it.
//!
//! `hash = blake3(prev || canonical bytes)`, where `prev` is the previous record's hash, or for
//! the first record the log's random genesis value (so two logs never share a chain, and a
//! record cannot be moved from one log into another).

use std::fmt;

/// A blake3 hash: a record's hash, a chain head, a genesis value.
pub type Hash = [u8; 32];

/// The hash of a record whose predecessor's hash is `prev` and whose canonical bytes are
/// `payload`.
pub fn link(prev: &Hash, payload: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev);
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

/// The end of the chain: what the next record will chain from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Sequence number of the last record; `None` for an empty log.
    pub seq: Option<u64>,
    /// Hash of the last record; the genesis value for an empty log.
    pub hash: Hash,
}

impl Head {
    /// The anchor form `SEQ:HASH` (just `HASH` for an empty log) that `log verify --head` takes.
    pub fn anchor(&self) -> Anchor {
        Anchor {
            seq: self.seq,
            hash: self.hash,
        }
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.anchor().fmt(f)
    }
}

/// A head recorded outside the host, to check the log against later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Sequence number of the anchored record, when known (it sharpens the diagnosis).
    pub seq: Option<u64>,
    /// Hash of the anchored record.
    pub hash: Hash,
}

/// Why an anchor could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// The sequence number before `:` is not a number.
    #[error("bad sequence number {0:?} (expected SEQ:HASH or HASH)")]
    BadSeq(String),
    /// The hash is not 64 hex digits.
    #[error("bad hash {0:?} (expected 64 hex digits)")]
    BadHash(String),
}

impl std::str::FromStr for Anchor {
    type Err = AnchorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (seq, hash) = match s.split_once(':') {
            Some((seq, hash)) => {
                let seq = seq
                    .parse()
                    .map_err(|_| AnchorError::BadSeq(seq.to_owned()))?;
                (Some(seq), hash)
            }
            None => (None, s),
        };
        Ok(Self {
            seq,
            hash: parse_hash(hash).ok_or_else(|| AnchorError::BadHash(hash.to_owned()))?,
        })
    }
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(seq) = self.seq {
            write!(f, "{seq}:")?;
        }
        f.write_str(&hex::encode(self.hash))
    }
}

/// Parses 64 hex digits.
pub fn parse_hash(s: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_depends_on_prev_and_payload() {
        let a = link(&[0; 32], b"x");
        assert_ne!(a, link(&[1; 32], b"x"));
        assert_ne!(a, link(&[0; 32], b"y"));
        assert_eq!(a, link(&[0; 32], b"x"));
    }

    #[test]
    fn anchor_round_trips_with_and_without_seq() {
        let head = Head {
            seq: Some(42),
            hash: [0xab; 32],
        };
        let parsed: Anchor = head.to_string().parse().expect("parses");
        assert_eq!(parsed, head.anchor());
        let bare: Anchor = hex::encode([7u8; 32]).parse().expect("parses");
        assert_eq!(
            bare,
            Anchor {
                seq: None,
                hash: [7; 32]
            }
        );
        assert!(matches!(
            "x:00".parse::<Anchor>(),
            Err(AnchorError::BadSeq(_))
        ));
        assert!(matches!(
            "1:00".parse::<Anchor>(),
            Err(AnchorError::BadHash(_))
        ));
    }
}
