//! Built-in baselines: `@system-runtime`, the read baseline that lets ordinary programs start
//! under default deny, and the device files every agent with file rules gets without listing
//! them. Kept minimal on purpose; docs/policy.md lists both and says why each entry is there.

/// Path prefixes `@system-runtime` grants for reading.
pub const SYSTEM_RUNTIME: &[&str] = &[
    // The dynamic loader, libc and every other shared library (incl. Python's stdlib under
    // /usr/lib/python3*); /lib and /lib64 are symlinks into /usr on merged-/usr systems.
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    // The loader's cache and preload list.
    "/etc/ld.so.cache",
    "/etc/ld.so.preload",
    // Locale and time zone data.
    "/usr/share/locale",
    "/usr/share/zoneinfo",
    "/etc/localtime",
    // CPU topology (glibc and language runtimes size thread pools from it).
    "/sys/devices/system/cpu",
];

/// Device files every agent with file rules may read, without listing them: shells, package
/// managers, test runners and TLS libraries open them unconditionally, and none of them gives
/// access to anything but itself. `/dev/tty` opens only the caller's own controlling terminal
/// (the kernel answers ENXIO without one, and `agentguard run` starts agents without one).
/// `/dev/fd/N` and `/dev/std{in,out,err}` need no rule: they are symlinks through
/// `/proc/self/fd`, and what they reopen is judged where it really is (a pipe or socket always
/// passes, a file by the rules).
pub const DEVICES_READ: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// Device files every agent with file rules may write: the sinks (`curl -o /dev/null`, `> /dev/null
/// 2>&1`) and the caller's own terminal.
pub const DEVICES_WRITE: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"];

/// The token that names the baseline in `read = [...]`.
pub const TOKEN: &str = "@system-runtime";

/// The token for the agent's own `/proc/<pid>` entries (also part of `@system-runtime`).
pub const PROC_SELF: &str = "/proc/self";

/// Whether `path` is a built-in entry that a host may lack (and is then not granted).
pub fn is_builtin(path: &std::path::Path) -> bool {
    SYSTEM_RUNTIME
        .iter()
        .chain(DEVICES_READ)
        .any(|b| path.as_os_str() == *b)
}
