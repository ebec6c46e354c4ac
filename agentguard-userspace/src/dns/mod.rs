//! DNS names in `connect` entries: looked up by the daemon, kept current on their TTL.
//!
//! The kernel matches addresses, so a rule `api.example.com:443` is compiled into one entry per
//! address the name has (see [`crate::policy::compile`]). This module finds those addresses and
//! says when they change:
//!
//! - a name is looked up at start-up and on every policy apply, then again when its answer's
//!   TTL runs out, clamped to [`Timing::floor`] and [`Timing::ceiling`] (defaults 5 s and 1 h);
//!   names from the hosts file have no TTL and are looked up every ceiling;
//! - an address that disappears from the answers (or whose name stops resolving) stays valid
//!   for [`Timing::grace`] (default 5 min), so agents that resolved it a moment ago are not cut
//!   off by DNS rotation;
//! - a name that does not resolve is retried with exponential backoff from the floor up to
//!   [`RETRY_MAX`] (never longer than the ceiling).
//!
//! [`cache`] holds that logic, pure: time is an argument, so it is tested with a fake clock.
//! [`resolver`] is the thin adapter to the system's resolver (hosts file, then DNS through
//! hickory with `/etc/resolv.conf`), behind the [`Resolve`] trait so a fake can stand in.

pub mod cache;
pub mod lookup;
pub mod names;
pub mod resolver;
pub mod timing;

use std::{net::IpAddr, time::Duration};

pub use cache::NameCache;
pub use lookup::{look_up_all, resolve_once};
pub use resolver::SystemResolver;
pub use timing::{RETRY_MAX, Timing};

/// What a lookup of a name found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The A and AAAA addresses (never empty: no address is [`LookupError::NoAddresses`]).
    pub addrs: Vec<IpAddr>,
    /// How long the answer may be cached; `None` when the source has no TTL (the hosts file).
    pub ttl: Option<Duration>,
}

/// Why a name has no addresses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN) or has neither A nor AAAA records.
    #[error("no A or AAAA records")]
    NoAddresses,
    /// The resolvers did not answer within the deadline.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The resolver failed otherwise (unreadable configuration, refused, server failure...).
    #[error("{0}")]
    Resolver(String),
}

/// Looks names up. The daemon uses [`SystemResolver`]; tests use a scripted fake.
pub trait Resolve: Send + Sync + 'static {
    /// The A and AAAA addresses of `name` and the TTL of the answer.
    fn lookup(&self, name: &str) -> impl Future<Output = Result<Answer, LookupError>> + Send;
}
