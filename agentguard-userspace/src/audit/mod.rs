//! The immutable event log.
pub mod record;
