//! Small wrappers over what the kernel exposes outside BPF: mounts, file identities, kernel
//! version.

pub mod audit;
pub mod identity;
pub mod kernel;
pub mod mounts;
