//! The embedded secret store: credentials the gateway injects, encrypted at rest.
//!
//! Layout under the state directory: `secrets/key` (32 random bytes) and `secrets/store.json`
//! (per secret: a random 24-byte nonce and the XChaCha20-Poly1305 ciphertext of the value, the
//! secret's name bound as associated data so entries cannot be swapped). Both files are
//! root-only (0600 in a 0700 directory) and replaced atomically.
//!
//! What encryption at rest protects: a copy of `store.json` without the key file (a backup, a
//! disk image or a log bundle that took the store but not the key) reveals nothing, and tampering
//! with it is detected. What it does not: root on the running host reads the key file, or the
//! daemon's memory, and so every secret. The key file is the secret; keep it out of backups.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use serde::{Deserialize, Serialize};

use crate::policy::tools::valid_secret_name;

pub mod vault;

/// Largest secret value accepted.
pub const MAX_SECRET_LEN: usize = 16 * 1024;
/// Shortest secret value accepted: the gateway refuses requests containing any secret's value,
/// so a value of a few bytes would refuse half of all requests.
pub const MIN_SECRET_LEN: usize = 8;

/// Secret store errors.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// I/O on the store or key file.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The key file has the wrong size.
    #[error("{} is not a 32-byte key", .0.display())]
    BadKey(PathBuf),
    /// The store file is not valid JSON of the expected shape.
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A secret did not decrypt: wrong key, or the store was altered.
    #[error(
        "secret {0:?} does not decrypt with the key file (wrong key, or the store was altered)"
    )]
    Decrypt(String),
    /// The name is not acceptable.
    #[error("invalid secret name {0:?}: use 1 to 64 letters, digits, '-', '_' and '.'")]
    BadName(String),
    /// The value is not acceptable.
    #[error("invalid secret value: {0}")]
    BadValue(&'static str),
    /// Randomness was unavailable.
    #[error("no randomness for a key or nonce: {0}")]
    Random(String),
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize, Default)]
struct StoreFile {
    version: u32,
    secrets: BTreeMap<String, Sealed>,
}

/// The store, decrypted in the daemon's memory.
pub struct SecretStore {
    dir: PathBuf,
    cipher: XChaCha20Poly1305,
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("dir", &self.dir)
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SecretError {
    let path = path.to_owned();
    move |source| SecretError::Io { what, path, source }
}

/// Writes `bytes` to `path` atomically, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    f.write_all(bytes).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("cannot replace", path))
}

impl SecretStore {
    /// Opens (creating the key on first use) the store under `state_dir/secrets`.
    pub fn open(state_dir: &Path) -> Result<Self, SecretError> {
        let dir = state_dir.join("secrets");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("cannot create", &dir))?;
        // An existing directory keeps its mode through create: tighten it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io("cannot restrict", &dir))?;
        let key_path = dir.join("key");
        let key = match fs::read(&key_path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k).map_err(|e| SecretError::Random(e.to_string()))?;
                write_private(&key_path, &k)?;
                k
            }
            Err(e) => return Err(io("cannot read", &key_path)(e)),
        };
        let cipher = XChaCha20Poly1305::new_from_slice(&key)
            .map_err(|_| SecretError::BadKey(key_path.clone()))?;
        let mut store = Self {
            dir,
            cipher,
            values: BTreeMap::new(),
        };
        store.load()?;
        Ok(store)
    }

    fn store_path(&self) -> PathBuf {
        self.dir.join("store.json")
    }

    fn load(&mut self) -> Result<(), SecretError> {
        let path = self.store_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot read", &path)(e)),
        };
        let file: StoreFile = serde_json::from_str(&text).map_err(|e| SecretError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        for (name, sealed) in file.secrets {
            let nonce = hex::decode(&sealed.nonce)
                .ok()
                .filter(|n| n.len() == 24)
                .ok_or_else(|| SecretError::Decrypt(name.clone()))?;
            let ct =
                hex::decode(&sealed.ciphertext).map_err(|_| SecretError::Decrypt(name.clone()))?;
            let plain = self
                .cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: name.as_bytes(),
                    },
                )
                .map_err(|_| SecretError::Decrypt(name.clone()))?;
            let value = String::from_utf8(plain).map_err(|_| SecretError::Decrypt(name.clone()))?;
            self.values.insert(name, value);
        }
        Ok(())
    }

    fn save(&self) -> Result<(), SecretError> {
        let mut file = StoreFile {
            version: 1,
            ..StoreFile::default()
        };
        for (name, value) in &self.values {
            let mut nonce = [0u8; 24];
            getrandom::fill(&mut nonce).map_err(|e| SecretError::Random(e.to_string()))?;
            let ct = self
                .cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: value.as_bytes(),
                        aad: name.as_bytes(),
                    },
                )
                .map_err(|_| SecretError::Random("encryption failed".into()))?;
            file.secrets.insert(
                name.clone(),
                Sealed {
                    nonce: hex::encode(nonce),
                    ciphertext: hex::encode(ct),
                },
            );
        }
        let text = serde_json::to_vec_pretty(&file).map_err(|e| SecretError::Corrupt {
            path: self.store_path(),
            reason: e.to_string(),
        })?;
        write_private(&self.store_path(), &text)
    }

    /// Stores (or replaces) a secret; returns whether one was replaced.
    pub fn set(&mut self, name: &str, value: &str) -> Result<bool, SecretError> {
        if !valid_secret_name(name) {
            return Err(SecretError::BadName(name.to_owned()));
        }
        check_value(value)?;
        let old = self.values.insert(name.to_owned(), value.to_owned());
        if let Err(e) = self.save() {
            // Keep memory and disk in agreement.
            match old {
                Some(v) => self.values.insert(name.to_owned(), v),
                None => self.values.remove(name),
            };
            return Err(e);
        }
        Ok(old.is_some())
    }

    /// Removes a secret; returns whether it existed.
    pub fn remove(&mut self, name: &str) -> Result<bool, SecretError> {
        let Some(old) = self.values.remove(name) else {
            return Ok(false);
        };
        if let Err(e) = self.save() {
            self.values.insert(name.to_owned(), old);
            return Err(e);
        }
        Ok(true)
    }

    /// Secret names.
    pub fn names(&self) -> Vec<String> {
        self.values.keys().cloned().collect()
    }

    /// A secret's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Every value, for the gateway's refusal of requests that carry one.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.values().map(String::as_str)
    }
}

/// What a value must be: injectable into a header or a query unchanged, long enough to search
/// for.
pub fn check_value(value: &str) -> Result<(), SecretError> {
    if value.len() < MIN_SECRET_LEN {
        return Err(SecretError::BadValue("shorter than 8 bytes"));
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(SecretError::BadValue("longer than 16 KiB"));
    }
    if value.chars().any(char::is_control) {
        return Err(SecretError::BadValue(
            "contains control characters (a trailing newline is stripped by `secret set`)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_a_reopen_and_are_not_on_disk_in_clear() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut s = SecretStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !s.set("k1", "s3cr3t-value-123")
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(
            s.set("k1", "s3cr3t-value-456")
                .unwrap_or_else(|e| panic!("{e}"))
        );
        let s2 = SecretStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s2.get("k1"), Some("s3cr3t-value-456"));
        let disk = fs::read_to_string(dir.path().join("secrets/store.json"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!disk.contains("s3cr3t"));
        let mode = |p: &str| {
            fs::metadata(dir.path().join(p))
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(mode("secrets"), 0o700);
        assert_eq!(mode("secrets/key"), 0o600);
        assert_eq!(mode("secrets/store.json"), 0o600);
        assert!(s.remove("k1").unwrap_or_else(|e| panic!("{e}")));
        assert!(
            SecretStore::open(dir.path())
                .unwrap_or_else(|e| panic!("{e}"))
                .names()
                .is_empty()
        );
    }

    #[test]
    fn a_swapped_or_altered_entry_does_not_decrypt() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut s = SecretStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        s.set("a", "value-of-a-123")
            .unwrap_or_else(|e| panic!("{e}"));
        s.set("b", "value-of-b-456")
            .unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("secrets/store.json");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let a = v["secrets"]["a"].clone();
        v["secrets"]["a"] = v["secrets"]["b"].clone();
        v["secrets"]["b"] = a;
        fs::write(&path, v.to_string()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            SecretStore::open(dir.path()),
            Err(SecretError::Decrypt(_))
        ));
    }

    #[test]
    fn bad_names_and_values_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut s = SecretStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.set("../x", "long-enough-value").is_err());
        assert!(s.set("x", "short").is_err());
        assert!(s.set("x", "long-enough\nvalue").is_err());
    }
}
