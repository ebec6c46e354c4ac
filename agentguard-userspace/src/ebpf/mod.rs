//! Everything that touches BPF: the embedded object, kernel offsets, capability probes, loading
//! and pinning programs, and the typed maps the policy writer fills.

pub mod backends;
pub mod batch;
pub mod hook_probe;
pub mod link_update;
pub mod loader;
pub mod maps;
pub mod object;
pub mod offsets;
pub mod open_hooks;
pub mod pins;
pub mod probe;
pub mod programs;
pub mod quiesce;
pub mod sys;
