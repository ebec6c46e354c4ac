//! Parts added as modules of their own (e.g. a gateway part): each is one file that defines an
//! [`Extra`] and one line in [`EXTRAS`]. Its JSON goes under `parts.NAME` in `results.json`
//! (and in the summary), its markdown after the core parts' tables, and `--only NAME` selects
//! it like a core part.

use anyhow::Result;
use serde_json::Value;

use super::{daemon::Env, loopback::Loopback};

/// What a part gets: the binaries and work directory, the loopback servers, the run's size.
pub struct Ctx<'a> {
    pub env: &'a Env,
    #[expect(
        dead_code,
        reason = "for parts that use the loopback destinations; the gateway part runs its own upstream"
    )]
    pub net: &'a Loopback,
    pub quick: bool,
    pub reps: usize,
}

/// A part of the bench outside the core three.
pub struct Extra {
    /// Its `--only` name and its key under `parts` in `results.json`.
    pub name: &'static str,
    /// Measures; every sample and summary it wants kept goes into the returned JSON.
    pub measure: fn(&Ctx<'_>) -> Result<Value>,
    /// Its tables, from what `measure` returned.
    pub markdown: fn(&Value) -> String,
}

/// Every extra part, in the order they run and are reported.
pub const EXTRAS: &[Extra] = &[super::gateway::PART];

#[cfg(test)]
mod tests {
    use super::EXTRAS;

    #[test]
    fn extra_names_are_unique_and_not_core_names() {
        let mut names: Vec<&str> = super::super::CORE_PARTS.to_vec();
        names.extend(EXTRAS.iter().map(|e| e.name));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a part name is used twice");
    }
}
