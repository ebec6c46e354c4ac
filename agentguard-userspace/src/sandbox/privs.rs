//! Taking root powers away from an agent before exec: no_new_privs, capabilities (bounding,
//! ambient, inheritable, permitted, effective), securebits, the user switch, and inherited fds.

use std::{collections::HashSet, ffi::CString};

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Group, Uid, User, setgroups, setresgid, setresuid};
use rustix::{
    io::Errno,
    thread::{CapabilitiesSecureBits, set_capabilities_secure_bits},
};

/// Errors dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    /// `--user` names no such user or group.
    #[error("unknown {kind} {name:?}")]
    Unknown {
        /// `user` or `group`.
        kind: &'static str,
        /// As given.
        name: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A capability operation failed.
    #[error("capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
}

fn sys(what: &'static str) -> impl Fn(nix::Error) -> PrivError {
    move |e| PrivError::Sys {
        what,
        source: e.into(),
    }
}

/// The identity to switch to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserSpec {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Name, for messages.
    pub name: String,
}

/// Resolves `USER[:GROUP]` (names or numbers).
pub fn resolve_user(spec: &str) -> Result<UserSpec, PrivError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let unknown = |kind, name: &str| PrivError::Unknown {
        kind,
        name: name.to_owned(),
    };
    let entry = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        Err(_) => User::from_name(user).ok().flatten(),
    };
    let (uid, default_gid, name) = match (entry, user.parse::<u32>()) {
        (Some(u), _) => (u.uid.as_raw(), u.gid.as_raw(), u.name),
        (None, Ok(uid)) => (uid, uid, user.to_owned()),
        (None, Err(_)) => return Err(unknown("user", user)),
    };
    let gid = match group {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| unknown("group", g))?
                .gid
                .as_raw(),
        },
    };
    let groups = CString::new(name.clone())
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, Gid::from_raw(gid)).ok())
        .map(|g| g.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_else(|| vec![gid]);
    Ok(UserSpec {
        uid,
        gid,
        groups,
        name,
    })
}

/// Securebits: never grant capabilities for being root, never fix them up on uid changes
/// (we set them explicitly), and lock both.
const SECUREBITS: CapabilitiesSecureBits = CapabilitiesSecureBits::NO_ROOT
    .union(CapabilitiesSecureBits::NO_ROOT_LOCKED)
    .union(CapabilitiesSecureBits::NO_SETUID_FIXUP)
    .union(CapabilitiesSecureBits::NO_SETUID_FIXUP_LOCKED);

/// Drops everything but `keep`, switches to `user` when given, and sets no_new_privs.
/// Must run single-threaded (credentials are per thread until exec).
pub fn drop_privileges(user: Option<&UserSpec>, keep: &[Capability]) -> Result<(), PrivError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    match set_capabilities_secure_bits(SECUREBITS) {
        // Without CAP_SETPCAP (not root) there is nothing to lock: the launcher had no powers.
        Ok(()) | Err(Errno::PERM) => {}
        Err(e) => {
            return Err(PrivError::Sys {
                what: "prctl(PR_SET_SECUREBITS)",
                source: e.into(),
            });
        }
    }
    // Narrowing the bounding set needs CAP_SETPCAP; a launcher without it (an agent starting a
    // sub-agent) already had its bounding set narrowed when it was started.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        let bounding = caps::read(None, CapSet::Bounding)?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)?;
        }
    }
    if let Some(u) = user {
        let groups: Vec<Gid> = u.groups.iter().copied().map(Gid::from_raw).collect();
        setgroups(&groups).map_err(sys("setgroups"))?;
        let g = Gid::from_raw(u.gid);
        setresgid(g, g, g).map_err(sys("setresgid"))?;
        let id = Uid::from_raw(u.uid);
        setresuid(id, id, id).map_err(sys("setresuid"))?;
    }
    let permitted: HashSet<Capability> = caps::read(None, CapSet::Permitted)?
        .intersection(&keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &permitted)?;
    caps::set(None, CapSet::Inheritable, &permitted)?;
    caps::set(None, CapSet::Permitted, &permitted)?;
    caps::clear(None, CapSet::Ambient)?;
    for cap in &permitted {
        // Ambient capabilities survive exec of an ordinary binary by a non-root user.
        caps::raise(None, CapSet::Ambient, *cap)?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    Ok(())
}

/// Marks every fd above stderr close-on-exec: the agent inherits stdin, stdout and stderr only.
pub fn close_inherited_fds() -> Result<(), PrivError> {
    // Raw because neither rustix 1 nor nix 0.30 wraps close_range.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on our own descriptors.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(PrivError::Sys {
            what: "close_range",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_users_and_groups() -> Result<(), PrivError> {
        let root = resolve_user("root")?;
        assert_eq!((root.uid, root.gid), (0, 0));
        let nobody = resolve_user("nobody:nogroup")?;
        assert_eq!(nobody.uid, 65534);
        assert_eq!(resolve_user("12345")?.uid, 12345);
        assert!(matches!(
            resolve_user("no-such-user-xyz"),
            Err(PrivError::Unknown { kind: "user", .. })
        ));
        assert!(matches!(
            resolve_user("root:no-such-group-xyz"),
            Err(PrivError::Unknown { kind: "group", .. })
        ));
        Ok(())
    }
}
