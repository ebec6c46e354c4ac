//! Budgets: `"N/s"`-style rates turned into token bucket parameters.

use std::{fmt, str::FromStr};

use agentguard_common::agent::{OnExceed, Throttle, ThrottleKind, ThrottleScope};

/// A rate: `count` actions per `per_ns` nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Actions per interval.
    pub count: u64,
    /// The interval in nanoseconds.
    pub per_ns: u64,
    /// The unit as written (`s`, `min`, `h`), for display.
    pub unit: &'static str,
}

/// Why a rate string is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Not of the form `N/UNIT`.
    #[error("expected COUNT/UNIT, e.g. \"10/s\", \"30/min\" or \"100/h\"")]
    Form,
    /// The count is not a positive integer.
    #[error("count must be a whole number from 1 to 1000000000")]
    Count,
    /// Unknown unit.
    #[error("unknown unit {0:?}: use s, min or h")]
    Unit(String),
}

const SECOND: u64 = 1_000_000_000;

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, unit) = s.trim().split_once('/').ok_or(RateError::Form)?;
        let count = count
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|c| (1..=1_000_000_000).contains(c))
            .ok_or(RateError::Count)?;
        let (per_ns, unit) = match unit.trim() {
            "s" | "sec" | "second" => (SECOND, "s"),
            "m" | "min" | "minute" => (60 * SECOND, "min"),
            "h" | "hour" => (3600 * SECOND, "h"),
            other => return Err(RateError::Unit(other.to_owned())),
        };
        Ok(Self {
            count,
            per_ns,
            unit,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit)
    }
}

/// Bucket size as a multiple of the per-interval rate when `burst` is not given: a fresh bucket
/// holds exactly one interval's worth of actions.
pub const DEFAULT_BURST: f64 = 1.0;

/// One budget of an agent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// What it counts.
    pub kind: ThrottleKind,
    /// Whose actions.
    pub scope: ThrottleScope,
    /// The rate.
    pub rate: Rate,
    /// Bucket size as a multiple of `rate.count`.
    pub burst: f64,
    /// What happens over budget.
    pub on_exceed: OnExceed,
}

impl Limit {
    /// The kernel's token bucket parameters.
    pub fn to_kernel(&self) -> Throttle {
        let cost_ns = (self.rate.per_ns / self.rate.count).max(1);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "validated: burst * count >= 1 and the product fits easily in u64 ns"
        )]
        let burst_ns = ((self.rate.per_ns as f64) * self.burst) as u64;
        Throttle {
            cost_ns,
            burst_ns: burst_ns.max(cost_ns),
            on_exceed: self.on_exceed as u8,
            _pad: [0; 7],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(
            "10/s".parse::<Rate>().map(|r| (r.count, r.per_ns)),
            Ok((10, SECOND))
        );
        assert_eq!("30/min".parse::<Rate>().map(|r| r.per_ns), Ok(60 * SECOND));
        assert_eq!(
            "2 / h".parse::<Rate>().map(|r| r.to_string()),
            Ok("2/h".to_owned())
        );
        assert_eq!("10".parse::<Rate>(), Err(RateError::Form));
        assert_eq!("0/s".parse::<Rate>(), Err(RateError::Count));
        assert_eq!("x/s".parse::<Rate>(), Err(RateError::Count));
        assert_eq!("1/day".parse::<Rate>(), Err(RateError::Unit("day".into())));
    }

    #[test]
    fn bucket_parameters() {
        let l = Limit {
            kind: ThrottleKind::Connect,
            scope: ThrottleScope::Process,
            rate: Rate {
                count: 5,
                per_ns: SECOND,
                unit: "s",
            },
            burst: 2.0,
            on_exceed: OnExceed::Freeze,
        };
        let t = l.to_kernel();
        assert_eq!(t.cost_ns, SECOND / 5);
        assert_eq!(t.burst_ns, 2 * SECOND);
        // A fresh bucket admits burst * count actions.
        assert_eq!(t.burst_ns / t.cost_ns, 10);
        assert_eq!(t.on_exceed, OnExceed::Freeze as u8);
    }
}
