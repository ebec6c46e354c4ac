//! Looking many names up at once, each within a deadline.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use tokio::task::JoinSet;

use super::{Answer, LookupError, NameCache, Resolve, Timing, cache::Addresses, names};
use crate::policy::Policy;

/// Looks every name up in parallel; each outcome is final within `timing.deadline()`.
pub async fn look_up_all<R: Resolve>(
    resolver: &Arc<R>,
    names: impl IntoIterator<Item = String>,
    timing: &Timing,
) -> Vec<(String, Result<Answer, LookupError>)> {
    let deadline = timing.deadline();
    let mut set = JoinSet::new();
    for name in names {
        let resolver = resolver.clone();
        set.spawn(async move {
            let outcome = tokio::time::timeout(deadline, resolver.lookup(&name))
                .await
                .unwrap_or(Err(LookupError::TimedOut(deadline)));
            (name, outcome)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(done) => out.push(done),
            // A panicking lookup loses its name's outcome; the name stays due and is retried.
            Err(e) => tracing::error!(error = %e, "a DNS lookup task failed"),
        }
    }
    out
}

/// Looks `names` up now (due or not) and records the outcomes in `cache`, tracking new names.
pub async fn refresh<R: Resolve>(
    resolver: &Arc<R>,
    cache: &std::sync::Mutex<NameCache>,
    names: &BTreeSet<String>,
) {
    let timing = {
        let mut c = lock(cache);
        let now = Instant::now();
        for name in names {
            c.track(name, now);
        }
        *c.timing()
    };
    let outcomes = look_up_all(resolver, names.iter().cloned(), &timing).await;
    let mut c = lock(cache);
    let now = Instant::now();
    for (name, outcome) in outcomes {
        c.record(&name, outcome, now);
    }
}

/// Locks a cache; a panic elsewhere leaves it consistent (every update is one call).
pub fn lock(cache: &std::sync::Mutex<NameCache>) -> std::sync::MutexGuard<'_, NameCache> {
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Looks up every name of `policy` once, for `policy check`: their addresses and the warnings
/// about those that do not resolve.
pub async fn resolve_once<R: Resolve>(
    resolver: &Arc<R>,
    policy: &Policy,
    timing: Timing,
) -> (Addresses, Vec<String>) {
    let cache = std::sync::Mutex::new(NameCache::new(timing));
    let wanted = names::policy_names(policy);
    refresh(resolver, &cache, &wanted).await;
    let c = lock(&cache);
    let now = Instant::now();
    (c.addresses(&wanted, now), names::warnings(policy, &c, now))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr, time::Duration};

    use super::*;

    /// Answers from a table; names not in it never answer.
    struct Scripted(BTreeMap<&'static str, Result<Answer, LookupError>>);

    impl Resolve for Scripted {
        async fn lookup(&self, name: &str) -> Result<Answer, LookupError> {
            match self.0.get(name) {
                Some(outcome) => outcome.clone(),
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_name_gets_an_outcome_within_the_deadline() {
        let addr = IpAddr::from([192, 0, 2, 1]);
        let resolver = Arc::new(Scripted(BTreeMap::from([
            (
                "good.example",
                Ok(Answer {
                    addrs: vec![addr],
                    ttl: Some(Duration::from_secs(60)),
                }),
            ),
            ("bad.example", Err(LookupError::NoAddresses)),
        ])));
        let policy = crate::policy::parse(
            "p.toml",
            "[agents.a]\nconnect = [\"good.example:1\", \"bad.example:1\", \"silent.example:1\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (addrs, warnings) = resolve_once(&resolver, &policy, Timing::default()).await;
        assert_eq!(
            addrs,
            BTreeMap::from([
                ("bad.example".to_owned(), vec![]),
                ("good.example".to_owned(), vec![addr]),
                ("silent.example".to_owned(), vec![]),
            ])
        );
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(warnings[1].contains("silent.example does not resolve (no answer within 10s)"));
    }
}
