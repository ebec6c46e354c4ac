//! The name cache: which addresses of which names are valid at a given time, when each name
//! is looked up next, and how two snapshots differ. Pure: time is an argument.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    time::Instant,
};

use super::{Answer, LookupError, Timing};

/// Addresses per name, as compile takes them (`Resolved::names`).
pub type Addresses = BTreeMap<String, Vec<IpAddr>>;

/// One tracked name.
#[derive(Clone, Debug)]
struct Entry {
    /// The valid addresses; `Some(t)` for one missing from the answers since `t` (in grace).
    addrs: BTreeMap<IpAddr, Option<Instant>>,
    /// When the name is looked up next.
    next_lookup: Instant,
    /// Failed lookups since the last answer, for the backoff.
    failures: u32,
    /// Why the latest lookup failed, when it did.
    failure: Option<LookupError>,
}

impl Entry {
    /// When the grace of an address missing since `since` ends (`None`: never, on overflow).
    fn grace_end(since: Instant, timing: &Timing) -> Option<Instant> {
        since.checked_add(timing.grace())
    }

    fn is_valid(missing_since: Option<Instant>, now: Instant, timing: &Timing) -> bool {
        missing_since.is_none_or(|t| Self::grace_end(t, timing).is_none_or(|end| now < end))
    }

    /// Starts the grace of every address not in `present`.
    fn mark_missing(&mut self, present: &BTreeSet<IpAddr>, now: Instant) {
        for (addr, missing_since) in &mut self.addrs {
            if !present.contains(addr) && missing_since.is_none() {
                *missing_since = Some(now);
            }
        }
    }
}

/// Every name the policy in force uses, with its addresses and schedule.
#[derive(Clone, Debug)]
pub struct NameCache {
    timing: Timing,
    entries: BTreeMap<String, Entry>,
}

impl NameCache {
    /// An empty cache.
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            entries: BTreeMap::new(),
        }
    }

    /// The timing rules.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Starts tracking `name` (its lookup is due at `now`); a tracked name is left as it is.
    pub fn track(&mut self, name: &str, now: Instant) {
        if !self.entries.contains_key(name) {
            self.entries.insert(
                name.to_owned(),
                Entry {
                    addrs: BTreeMap::new(),
                    next_lookup: now,
                    failures: 0,
                    failure: None,
                },
            );
        }
    }

    /// Stops tracking every name not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<String>) {
        self.entries.retain(|name, _| keep.contains(name));
    }

    /// Whether `name` is tracked.
    pub fn is_tracked(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Records the outcome of a lookup of `name` that ended at `now`. Untracked names (dropped
    /// by a policy apply while the lookup ran) are ignored.
    pub fn record(&mut self, name: &str, outcome: Result<Answer, LookupError>, now: Instant) {
        let timing = self.timing;
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        match outcome {
            Ok(answer) if !answer.addrs.is_empty() => {
                let present: BTreeSet<IpAddr> = answer.addrs.iter().copied().collect();
                entry.mark_missing(&present, now);
                for addr in present {
                    entry.addrs.insert(addr, None);
                }
                entry.failures = 0;
                entry.failure = None;
                entry.next_lookup = now + timing.refresh_after(answer.ttl);
            }
            outcome => {
                // A failed lookup proves nothing about the addresses either way: they get the
                // same grace as addresses missing from an answer, then the name allows nothing.
                entry.mark_missing(&BTreeSet::new(), now);
                entry.failures = entry.failures.saturating_add(1);
                entry.failure = Some(outcome.err().unwrap_or(LookupError::NoAddresses));
                entry.next_lookup = now + timing.retry_after(entry.failures);
            }
        }
        self.expire(now);
    }

    /// Forgets the addresses whose grace has ended at `now`.
    pub fn expire(&mut self, now: Instant) {
        let timing = self.timing;
        for entry in self.entries.values_mut() {
            entry
                .addrs
                .retain(|_, missing_since| Entry::is_valid(*missing_since, now, &timing));
        }
    }

    /// The tracked names whose lookup is due at `now`.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.next_lookup <= now)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The next time a lookup falls due or an address's grace ends; `None` with no names.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let timing = self.timing;
        self.entries
            .values()
            .flat_map(|e| {
                let grace_ends = e
                    .addrs
                    .values()
                    .filter_map(move |since| since.and_then(|t| Entry::grace_end(t, &timing)));
                std::iter::once(e.next_lookup).chain(grace_ends)
            })
            .min()
    }

    /// The addresses of `name` valid at `now`, sorted (empty when unknown).
    pub fn valid(&self, name: &str, now: Instant) -> Vec<IpAddr> {
        self.entries.get(name).map_or_else(Vec::new, |e| {
            e.addrs
                .iter()
                .filter(|(_, since)| Entry::is_valid(**since, now, &self.timing))
                .map(|(addr, _)| *addr)
                .collect()
        })
    }

    /// The valid addresses of each of `names` at `now` (an unknown name has none).
    pub fn addresses<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
        now: Instant,
    ) -> Addresses {
        names
            .into_iter()
            .map(|name| (name.clone(), self.valid(name, now)))
            .collect()
    }

    /// Why the latest lookup of `name` failed, if it did.
    pub fn failure(&self, name: &str) -> Option<&LookupError> {
        self.entries.get(name)?.failure.as_ref()
    }
}

/// How the valid addresses of one name differ between two snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The name.
    pub name: String,
    /// Addresses in the new snapshot only.
    pub added: Vec<IpAddr>,
    /// Addresses in the old snapshot only.
    pub removed: Vec<IpAddr>,
}

/// The names whose addresses differ between `before` and `after`, in name order; a name
/// missing from a snapshot counts as having no addresses.
pub fn changes(before: &Addresses, after: &Addresses) -> Vec<Change> {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let old: BTreeSet<IpAddr> = before.get(name).into_iter().flatten().copied().collect();
            let new: BTreeSet<IpAddr> = after.get(name).into_iter().flatten().copied().collect();
            (old != new).then(|| Change {
                name: name.clone(),
                added: new.difference(&old).copied().collect(),
                removed: old.difference(&new).copied().collect(),
            })
        })
        .collect()
}

/// At most this many addresses are listed per side of a change (round-robin names can have
/// dozens; the log record stays readable).
const LISTED: usize = 8;

impl fmt::Display for Change {
    /// `api.example.com +192.0.2.7 -192.0.2.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for (sign, addrs) in [('+', &self.added), ('-', &self.removed)] {
            for addr in addrs.iter().take(LISTED) {
                write!(f, " {sign}{addr}")?;
            }
            if addrs.len() > LISTED {
                write!(f, " ({sign}{} more)", addrs.len() - LISTED)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const NAME: &str = "api.example.com";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn answer(addrs: &[&str], ttl: Option<u64>) -> Result<Answer, LookupError> {
        Ok(Answer {
            addrs: addrs.iter().map(|a| ip(a)).collect(),
            ttl: ttl.map(S),
        })
    }

    /// A cache tracking [`NAME`] with the default timing, and the fake clock's origin.
    fn cache() -> (NameCache, Instant) {
        let t0 = Instant::now();
        let mut c = NameCache::new(Timing::default());
        c.track(NAME, t0);
        (c, t0)
    }

    #[test]
    fn a_new_name_is_due_at_once_and_then_on_its_clamped_ttl() {
        let (mut c, t0) = cache();
        assert_eq!(c.due(t0), vec![NAME.to_owned()]);
        c.record(NAME, answer(&["192.0.2.1"], Some(60)), t0);
        assert!(c.due(t0 + S(59)).is_empty());
        assert_eq!(c.due(t0 + S(60)), vec![NAME.to_owned()]);
        assert_eq!(c.next_wakeup(), Some(t0 + S(60)));

        c.record(NAME, answer(&["192.0.2.1"], Some(0)), t0 + S(60));
        assert_eq!(c.next_wakeup(), Some(t0 + S(65)), "TTL 0 waits the floor");
        c.record(NAME, answer(&["192.0.2.1"], None), t0 + S(65));
        assert_eq!(
            c.next_wakeup(),
            Some(t0 + S(65) + S(3600)),
            "no TTL (hosts file) waits the ceiling"
        );
    }

    #[test]
    fn a_vanished_address_stays_valid_for_the_grace_period() {
        let (mut c, t0) = cache();
        c.record(NAME, answer(&["192.0.2.1", "2001:db8::1"], Some(30)), t0);
        assert_eq!(c.valid(NAME, t0), vec![ip("192.0.2.1"), ip("2001:db8::1")]);

        let t1 = t0 + S(30);
        c.record(NAME, answer(&["192.0.2.2", "2001:db8::1"], Some(30)), t1);
        assert_eq!(
            c.valid(NAME, t1),
            vec![ip("192.0.2.1"), ip("192.0.2.2"), ip("2001:db8::1")],
            "old and new address both valid during the grace period"
        );
        assert_eq!(c.next_wakeup(), Some(t1 + S(30)));

        // Later answers without it do not restart its grace.
        c.record(
            NAME,
            answer(&["192.0.2.2", "2001:db8::1"], Some(300)),
            t1 + S(30),
        );
        assert_eq!(
            c.next_wakeup(),
            Some(t1 + S(300)),
            "grace ends before the TTL"
        );
        assert!(c.valid(NAME, t1 + S(299)).contains(&ip("192.0.2.1")));
        assert_eq!(
            c.valid(NAME, t1 + S(300)),
            vec![ip("192.0.2.2"), ip("2001:db8::1")]
        );
    }

    #[test]
    fn an_address_that_comes_back_leaves_its_grace() {
        let (mut c, t0) = cache();
        c.record(NAME, answer(&["192.0.2.1"], Some(60)), t0);
        c.record(NAME, answer(&["192.0.2.2"], Some(60)), t0 + S(60));
        c.record(NAME, answer(&["192.0.2.1"], Some(60)), t0 + S(120));
        let later = t0 + S(120) + S(300);
        assert_eq!(c.valid(NAME, later), vec![ip("192.0.2.1")]);
        c.expire(later);
        assert_eq!(c.next_wakeup(), Some(t0 + S(180)));
    }

    #[test]
    fn failures_keep_addresses_for_the_grace_period_and_back_off() {
        let (mut c, t0) = cache();
        c.record(NAME, answer(&["192.0.2.1"], Some(60)), t0);
        let t1 = t0 + S(60);
        c.record(NAME, Err(LookupError::TimedOut(S(10))), t1);
        assert_eq!(c.failure(NAME), Some(&LookupError::TimedOut(S(10))));
        assert_eq!(c.valid(NAME, t1 + S(299)), vec![ip("192.0.2.1")]);
        assert_eq!(c.next_wakeup(), Some(t1 + S(5)));

        let mut t = t1;
        let mut waits = Vec::new();
        for failures in 1..=7 {
            let wait = c.timing().retry_after(failures);
            assert!(c.due(t + wait - S(1)).is_empty());
            assert_eq!(c.due(t + wait), vec![NAME.to_owned()]);
            waits.push(wait.as_secs());
            t += wait;
            c.record(NAME, Err(LookupError::NoAddresses), t);
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300]);
        assert!(t > t1 + S(300));
        assert!(c.valid(NAME, t).is_empty(), "grace over: nothing allowed");

        c.record(NAME, answer(&["192.0.2.9"], Some(60)), t);
        assert_eq!(c.failure(NAME), None);
        assert_eq!(
            c.next_wakeup(),
            Some(t + S(60)),
            "success resets the backoff"
        );
    }

    #[test]
    fn an_empty_answer_counts_as_no_addresses() {
        let (mut c, t0) = cache();
        c.record(NAME, answer(&[], Some(60)), t0);
        assert_eq!(c.failure(NAME), Some(&LookupError::NoAddresses));
        assert_eq!(c.next_wakeup(), Some(t0 + S(5)));
    }

    #[test]
    fn untracked_names_are_ignored_and_retain_drops_names() {
        let (mut c, t0) = cache();
        c.record("other.example.com", answer(&["192.0.2.1"], Some(60)), t0);
        assert!(!c.is_tracked("other.example.com"));
        c.track("other.example.com", t0);
        c.track(NAME, t0 + S(1));
        assert_eq!(
            c.due(t0).len(),
            2,
            "track leaves a tracked name's schedule alone"
        );
        c.retain(&BTreeSet::from(["other.example.com".to_owned()]));
        assert!(!c.is_tracked(NAME));
        assert_eq!(
            c.addresses(&[NAME.to_owned(), "other.example.com".to_owned()], t0),
            BTreeMap::from([
                (NAME.to_owned(), vec![]),
                ("other.example.com".to_owned(), vec![])
            ])
        );
        c.retain(&BTreeSet::new());
        assert_eq!(c.next_wakeup(), None);
    }

    #[test]
    fn changes_list_added_and_removed_addresses_per_name() {
        let snap = |v: &[(&str, &[&str])]| -> Addresses {
            v.iter()
                .map(|(n, a)| ((*n).to_owned(), a.iter().map(|s| ip(s)).collect()))
                .collect()
        };
        let before = snap(&[
            ("a.example", &["192.0.2.1", "192.0.2.2"]),
            ("b.example", &["192.0.2.3"]),
            ("c.example", &[]),
        ]);
        let after = snap(&[
            ("a.example", &["192.0.2.2", "192.0.2.1"]),
            ("b.example", &["192.0.2.4"]),
            ("d.example", &["2001:db8::1"]),
        ]);
        let c = changes(&before, &after);
        let lines: Vec<String> = c.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec!["b.example +192.0.2.4 -192.0.2.3", "d.example +2001:db8::1",],
            "order within a name and empty-vs-missing are no change"
        );
        assert!(changes(&after, &after).is_empty());
    }

    #[test]
    fn long_changes_are_abbreviated() {
        let added: Vec<IpAddr> = (1..=10).map(|i| IpAddr::from([192, 0, 2, i])).collect();
        let c = Change {
            name: "cdn.example".into(),
            added,
            removed: vec![ip("198.51.100.1")],
        };
        let s = c.to_string();
        assert!(s.ends_with("+192.0.2.8 (+2 more) -198.51.100.1"), "{s}");
    }
}
