//! `@system-runtime`: the built-in read baseline that lets ordinary programs start under default
//! deny. Kept minimal on purpose; docs/policy.md lists it and says why each entry is there.

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
    // Device nodes every runtime expects.
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    // CPU topology (glibc and language runtimes size thread pools from it).
    "/sys/devices/system/cpu",
];

/// The token that names the baseline in `read = [...]`.
pub const TOKEN: &str = "@system-runtime";

/// The token for the agent's own `/proc/<pid>` entries (also part of `@system-runtime`).
pub const PROC_SELF: &str = "/proc/self";
