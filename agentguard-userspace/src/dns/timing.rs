//! When a name is looked up again: TTL clamping and retry backoff.

use std::time::Duration;

/// Default shortest time between two lookups of a name. Answers with TTL 0 or 1 (some load
/// balancers use them) would otherwise make the daemon recompile the policy constantly.
pub const DEFAULT_FLOOR: Duration = Duration::from_secs(5);
/// Default longest time between two lookups of a name, and the re-check interval of names
/// without a TTL (the hosts file): a change is noticed within this time at the latest.
pub const DEFAULT_CEILING: Duration = Duration::from_secs(60 * 60);
/// Default time an address stays valid after it disappeared from a name's answers.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5 * 60);
/// Longest wait between two retries of a name that does not resolve.
pub const RETRY_MAX: Duration = Duration::from_secs(5 * 60);
/// How long one lookup may take before it counts as failed (the resolver's own timeouts and
/// retries happen within it).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// The timing rules of the name cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    floor: Duration,
    ceiling: Duration,
    grace: Duration,
    deadline: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self::new(DEFAULT_CEILING, DEFAULT_GRACE)
    }
}

impl Timing {
    /// The default floor with this ceiling and grace. A ceiling below the floor lowers the
    /// floor to it (tests use a ceiling of a second or two).
    pub fn new(ceiling: Duration, grace: Duration) -> Self {
        let ceiling = ceiling.max(Duration::from_secs(1));
        Self {
            floor: DEFAULT_FLOOR.min(ceiling),
            ceiling,
            grace,
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// The shortest time between two lookups of a name.
    pub fn floor(&self) -> Duration {
        self.floor
    }

    /// The longest time between two lookups of a name.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// How long an address stays valid after it disappeared from the answers.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// How long one lookup may take.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// When to look a name up again after an answer with `ttl` (`None`: no TTL, the ceiling).
    pub fn refresh_after(&self, ttl: Option<Duration>) -> Duration {
        ttl.unwrap_or(self.ceiling).clamp(self.floor, self.ceiling)
    }

    /// When to retry a name after its `failures`-th consecutive failed lookup: the floor,
    /// doubling each time, at most [`RETRY_MAX`] and the ceiling.
    pub fn retry_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        let max = RETRY_MAX.min(self.ceiling).max(self.floor);
        self.floor.saturating_mul(1 << doublings).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn ttls_are_clamped_to_floor_and_ceiling() {
        let t = Timing::default();
        assert_eq!(t.refresh_after(Some(S(0))), S(5));
        assert_eq!(t.refresh_after(Some(S(300))), S(300));
        assert_eq!(t.refresh_after(Some(S(86_400))), S(3600));
        assert_eq!(t.refresh_after(None), S(3600), "no TTL: the ceiling");
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let t = Timing::default();
        let delays: Vec<u64> = (1..=9).map(|n| t.retry_after(n).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(t.retry_after(u32::MAX), S(300));
    }

    #[test]
    fn a_short_ceiling_lowers_the_floor_and_the_retry_cap() {
        let t = Timing::new(S(2), S(3));
        assert_eq!((t.floor(), t.ceiling(), t.grace()), (S(2), S(2), S(3)));
        assert_eq!(t.refresh_after(Some(S(60))), S(2));
        assert_eq!(t.retry_after(5), S(2));
        assert_eq!(Timing::new(S(0), S(0)).ceiling(), S(1), "never a busy loop");
    }
}
