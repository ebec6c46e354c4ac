//! Kernel -> log: draining the ring buffer and turning raw events into log records.

pub mod convert;
pub mod landlock;
pub mod ring;

pub use convert::{Names, to_action, to_action_ref};
