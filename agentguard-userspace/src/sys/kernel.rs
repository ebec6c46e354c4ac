//! The running kernel's version, and the minimum agentguard needs.

/// The oldest kernel agentguard runs on: the oldest the integration tests run on (Debian 12's
/// stock 6.1). The interfaces it needs are older (`cgroup.kill` 5.14, the BPF ring buffer 5.8,
/// `bpf_link` for cgroups 5.7, cgroup v2 freeze 5.2), but nothing older is tested.
pub const MINIMUM: (u32, u32) = (6, 1);

/// Errors reading the kernel version.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// uname's release string was not understood.
    #[error("cannot parse kernel release {0:?}")]
    Parse(String),
    /// The kernel is too old.
    #[error("kernel {found} is too old: agentguard needs Linux {}.{} or newer, the oldest it is tested on", MINIMUM.0, MINIMUM.1)]
    TooOld {
        /// The running release.
        found: String,
    },
}

/// The running kernel's release string (`uname -r`).
pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Parses `major.minor` from a release string such as `6.12.107+deb12-amd64`.
pub fn parse(release: &str) -> Result<(u32, u32), KernelError> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|s| s.parse().ok());
    let minor = it.next().and_then(|s| s.parse().ok());
    match (major, minor) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(KernelError::Parse(release.to_owned())),
    }
}

/// Fails with a clear message on kernels older than [`MINIMUM`].
pub fn check_minimum(release: &str) -> Result<(u32, u32), KernelError> {
    let v = parse(release)?;
    if v < MINIMUM {
        return Err(KernelError::TooOld {
            found: release.to_owned(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_minimum() {
        assert!(check_minimum("6.12.107+deb12-amd64").is_ok());
        assert!(check_minimum("6.1.0-56-amd64").is_ok());
        assert!(matches!(
            check_minimum("5.14.0"),
            Err(KernelError::TooOld { .. })
        ));
        assert!(matches!(
            check_minimum("5.10.0-28-amd64"),
            Err(KernelError::TooOld { .. })
        ));
        assert!(matches!(
            check_minimum("4.19"),
            Err(KernelError::TooOld { .. })
        ));
        assert!(matches!(parse("garbage"), Err(KernelError::Parse(_))));
    }
}
