//! AF_UNIX `connect` entries: `unix:/absolute/path` (a pathname socket) or `unix:@name` (an
//! abstract socket).
//!
//! Entries match **exactly**, never as prefixes: a socket is one endpoint (a daemon's API),
//! not a tree, and a prefix such as `unix:/run/` would quietly admit every socket a host has
//! there, `/run/docker.sock` among them. The kernel compares the bytes of the address, so a
//! pathname entry must be written the way the socket is named: absolute and normalised (no
//! `//`, `.` or `..` components, no trailing `/`).

use std::{fmt, str::FromStr};

use agentguard_common::rules::{UNIX_PATH_LEN, UnixKey};

/// The prefix that makes a `connect` entry an AF_UNIX one.
pub const PREFIX: &str = "unix:";

/// An AF_UNIX address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnixAddr {
    /// A socket in the filesystem, by absolute path.
    Path(String),
    /// A socket in the abstract namespace (Linux), by name (without the leading NUL).
    Abstract(String),
}

/// Why a `unix:` entry is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnixEntryError {
    /// Nothing after `unix:` or `unix:@`.
    #[error("empty address: write unix:/absolute/path or unix:@abstract-name")]
    Empty,
    /// A pathname that does not start with `/`.
    #[error("{0:?} is not an absolute path (relative socket paths cannot be judged)")]
    Relative(String),
    /// A pathname with `//`, `.` or `..` components or a trailing `/`.
    #[error(
        "{0:?} is not a normalised path: entries match the address exactly, write it without //, . or .. components and without a trailing /"
    )]
    NotNormal(String),
    /// Longer than `sun_path`.
    #[error("{0:?} is longer than the {max} bytes of a socket address", max = UNIX_PATH_LEN - 1)]
    TooLong(String),
    /// A NUL byte inside the address.
    #[error("the address contains a NUL character")]
    Nul,
}

impl UnixAddr {
    /// The address in the kernel's encoding (see [`UnixKey`]): the path's bytes, or a NUL
    /// byte followed by the abstract name.
    pub fn key_bytes(&self) -> Vec<u8> {
        match self {
            Self::Path(p) => p.as_bytes().to_vec(),
            Self::Abstract(name) => {
                let mut v = vec![0];
                v.extend_from_slice(name.as_bytes());
                v
            }
        }
    }

    /// The map key of this address for `agent_id` in `generation`.
    pub fn key(&self, agent_id: u32, generation: u8) -> UnixKey {
        let bytes = self.key_bytes();
        let mut key = UnixKey {
            agent_id,
            generation: u32::from(generation),
            ..UnixKey::default()
        };
        // Parsing bounds the length to fewer than UNIX_PATH_LEN bytes.
        let n = bytes.len().min(UNIX_PATH_LEN);
        key.path[..n].copy_from_slice(&bytes[..n]);
        key.len = u32::try_from(n).unwrap_or(0);
        key
    }
}

impl FromStr for UnixAddr {
    type Err = UnixEntryError;

    /// Parses the part after `unix:`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('\0') {
            return Err(UnixEntryError::Nul);
        }
        // Leave room for the terminating NUL of a pathname and the leading NUL of an abstract
        // name: both fit `sun_path` with every kernel and C library.
        if s.len() >= UNIX_PATH_LEN {
            return Err(UnixEntryError::TooLong(s.to_owned()));
        }
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                return Err(UnixEntryError::Empty);
            }
            return Ok(Self::Abstract(name.to_owned()));
        }
        if s.is_empty() {
            return Err(UnixEntryError::Empty);
        }
        if !s.starts_with('/') {
            return Err(UnixEntryError::Relative(s.to_owned()));
        }
        let normal = s.len() > 1
            && !s.ends_with('/')
            && s[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !normal {
            return Err(UnixEntryError::NotNormal(s.to_owned()));
        }
        Ok(Self::Path(s.to_owned()))
    }
}

impl fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(p) => write!(f, "{PREFIX}{p}"),
            Self::Abstract(name) => write!(f, "{PREFIX}@{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pathname_and_abstract() {
        assert_eq!(
            "/run/x.sock".parse::<UnixAddr>(),
            Ok(UnixAddr::Path("/run/x.sock".into()))
        );
        assert_eq!(
            "@abstract-name".parse::<UnixAddr>(),
            Ok(UnixAddr::Abstract("abstract-name".into()))
        );
        assert_eq!(
            UnixAddr::Abstract("a".into()).to_string(),
            "unix:@a".to_owned()
        );
        assert_eq!(UnixAddr::Abstract("ab".into()).key_bytes(), b"\0ab");
        let k = UnixAddr::Path("/r".into()).key(7, 1);
        assert_eq!((k.agent_id, k.generation, k.len), (7, 1, 2));
        assert_eq!(&k.path[..3], b"/r\0");
    }

    #[test]
    fn rejects_what_cannot_match_exactly() {
        let err = |s: &str| s.parse::<UnixAddr>().err();
        assert_eq!(err(""), Some(UnixEntryError::Empty));
        assert_eq!(err("@"), Some(UnixEntryError::Empty));
        assert_eq!(
            err("run/x.sock"),
            Some(UnixEntryError::Relative("run/x.sock".into()))
        );
        for bad in ["/", "/run//x", "/run/./x", "/run/../x", "/run/"] {
            assert!(
                matches!(err(bad), Some(UnixEntryError::NotNormal(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            err(&format!("/{}", "a".repeat(107))),
            Some(UnixEntryError::TooLong(_))
        ));
        assert!(err(&format!("/{}", "a".repeat(106))).is_none());
        assert_eq!(err("@a\0b"), Some(UnixEntryError::Nul));
    }
}
