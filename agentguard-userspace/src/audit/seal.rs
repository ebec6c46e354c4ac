//! Forward-secure sealing: a chain of one-way keys, one per seal.
//!
//! `init` draws a random seed, gives it to the operator (to keep offline) and stores only the
//! key derived from it. Each seal MACs the chain head with the current key, then the key is
//! replaced by a one-way function of itself and the old one is overwritten. Someone who takes
//! the host later holds only the current key and cannot produce the earlier seals; the auditor
//! re-derives every key from the seed.

use std::{fmt, path::Path, str::FromStr};

use super::{
    chain::Hash,
    error::AuditError,
    files::{self, KEY_MODE, SEAL_KEY},
    header::{self, HeaderError},
};

/// blake3 `derive_key` context turning the seed into the epoch-0 key.
const SEED_CONTEXT: &str = "agentguard 2025 seal key from seed";
/// blake3 `derive_key` context turning one epoch's key into the next.
const EVOLVE_CONTEXT: &str = "agentguard 2025 seal key evolve";
const KEY_MAGIC: [u8; 8] = *b"AGSEALKY";
const KEY_FILE_LEN: usize = 72;

/// The secret a log's seals derive from. Whoever holds it can verify, and also forge, every
/// seal: it belongs offline, with the auditor.
#[derive(Clone, PartialEq, Eq)]
pub struct SealSeed([u8; 32]);

impl SealSeed {
    /// A fresh random seed.
    pub fn generate() -> Result<Self, AuditError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self(seed))
    }

    /// The seed as 64 hex digits, to show the operator once.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key of seal epoch 0.
    pub fn first_key(&self) -> SealKey {
        SealKey {
            epoch: 0,
            key: blake3::derive_key(SEED_CONTEXT, &self.0),
        }
    }
}

impl fmt::Debug for SealSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never in logs or panic messages.
        f.write_str("SealSeed(..)")
    }
}

/// A seed given as anything but 64 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a seal key is 64 hex digits")]
pub struct BadSeed;

impl FromStr for SealSeed {
    type Err = BadSeed;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut seed).map_err(|_| BadSeed)?;
        Ok(Self(seed))
    }
}

/// The key of one seal epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey {
    epoch: u64,
    key: [u8; 32],
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl SealKey {
    /// The epoch this key seals.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The MAC a seal of this epoch carries over chain head `head`.
    pub fn mac(&self, head: &Hash) -> Hash {
        *blake3::keyed_hash(&self.key, head).as_bytes()
    }

    /// Moves to the next epoch. The old key is overwritten in place: nothing in this struct
    /// can give it back.
    pub fn evolve(&mut self) {
        self.key = blake3::derive_key(EVOLVE_CONTEXT, &self.key);
        self.epoch += 1;
    }

    /// Evolves until this key is for `epoch` (keys only move forward); false if it is past it.
    pub fn advance_to(&mut self, epoch: u64) -> bool {
        while self.epoch < epoch {
            self.evolve();
        }
        self.epoch == epoch
    }

    /// The key file's bytes.
    fn encode(&self) -> [u8; KEY_FILE_LEN] {
        let mut out = [0u8; KEY_FILE_LEN];
        out[0..8].copy_from_slice(&KEY_MAGIC);
        out[8..12].copy_from_slice(&header::FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        out[24..56].copy_from_slice(&self.key);
        header::seal_check(&mut out);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let bytes = header::checked(bytes, KEY_FILE_LEN, &KEY_MAGIC)?;
        if header::u32_at(bytes, 12) != 0 || bytes.len() != KEY_FILE_LEN {
            return Err(HeaderError::Unknown);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[24..56]);
        Ok(Self {
            epoch: header::u64_at(bytes, 16),
            key,
        })
    }

    /// Reads `dir/seal.key`; `Ok(None)` if the log was never initialised for sealing.
    pub fn load(dir: &Path) -> Result<Option<Self>, AuditError> {
        let path = dir.join(SEAL_KEY);
        match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&bytes)
                .map(Some)
                .map_err(|error| AuditError::BadKeyFile { path, error }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AuditError::Io { path, source: e }),
        }
    }

    /// Replaces `dir/seal.key` with this key, durably (temp, fsync, rename, fsync dir).
    pub fn store(&self, dir: &Path) -> Result<(), AuditError> {
        files::write_atomic(dir, SEAL_KEY, &self.encode(), KEY_MODE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_evolve_one_way_and_reproducibly() {
        let seed = SealSeed([1; 32]);
        let mut k = seed.first_key();
        let k0 = k.clone();
        k.evolve();
        assert_eq!(k.epoch(), 1);
        assert_ne!(k.mac(&[0; 32]), k0.mac(&[0; 32]));
        let mut again = seed.first_key();
        assert!(again.advance_to(1));
        assert_eq!(again, k);
        assert!(!again.advance_to(0), "keys never go back");
        assert_ne!(
            SealSeed([2; 32]).first_key().mac(&[0; 32]),
            k0.mac(&[0; 32])
        );
    }

    #[test]
    fn key_file_round_trips_and_seed_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(SealKey::load(dir.path()).expect("load"), None);
        let seed: SealSeed = hex::encode([9u8; 32]).parse().expect("seed");
        let mut key = seed.first_key();
        key.evolve();
        key.store(dir.path()).expect("store");
        assert_eq!(SealKey::load(dir.path()).expect("load"), Some(key));
        assert!("abc".parse::<SealSeed>().is_err());
        assert_eq!(format!("{seed:?}"), "SealSeed(..)");
    }
}
