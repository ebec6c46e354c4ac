//! Freeze, thaw and kill of selected instances, for operators and for budget escalations.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    audit::record::{Actor, Body, OperatorAction},
    cgroup::{self, Instance},
    control::proto::Selector,
};

use super::Shared;

/// Which operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// cgroup.freeze = 1, wait for `frozen 1`.
    Freeze,
    /// cgroup.freeze = 0, wait for `frozen 0`.
    Thaw,
    /// cgroup.kill, wait for `populated 0`.
    Kill,
}

/// The outcome.
#[derive(Debug)]
pub struct Outcome {
    /// Instances acted on.
    pub instances: Vec<String>,
    /// Until the kernel reported the last one done.
    pub took: Duration,
    /// Errors per instance (timeouts name what is left).
    pub errors: Vec<String>,
}

/// The instances a selector names. Sub-agent instances are covered through their parent's
/// cgroup (freeze and kill are hierarchical), so they are only listed when selected directly.
pub fn select(shared: &Shared, target: &Selector) -> Result<Vec<Instance>, String> {
    let st = shared.lock_state();
    let all: Vec<&Instance> = st.instances.values().collect();
    let chosen: Vec<Instance> = match target {
        Selector::All => all
            .into_iter()
            .filter(|i| i.parent.is_none())
            .cloned()
            .collect(),
        Selector::Agent(name) => {
            if st.policy.agent(name).is_none() && !all.iter().any(|i| &i.agent == name) {
                return Err(format!("unknown agent {name:?}"));
            }
            // An instance whose parent instance is also selected is covered by it.
            let ids: Vec<u64> = all
                .iter()
                .filter(|i| &i.agent == name)
                .map(|i| i.id)
                .collect();
            all.into_iter()
                .filter(|i| &i.agent == name && !i.parent.is_some_and(|p| ids.contains(&p)))
                .cloned()
                .collect()
        }
        Selector::Instance(name) => {
            let found: Vec<Instance> = all
                .into_iter()
                .filter(|i| &i.name == name)
                .cloned()
                .collect();
            if found.is_empty() {
                return Err(format!("no running instance {name:?}"));
            }
            found
        }
    };
    Ok(chosen)
}

/// Runs `op` on `instances` (blocking on the kernel's reports), then logs it.
pub async fn run(
    shared: &Arc<Shared>,
    op: Op,
    target: String,
    instances: Vec<Instance>,
    timeout: Duration,
    by: Actor,
    budget: Option<String>,
) -> Outcome {
    let start = Instant::now();
    let paths: Vec<(String, std::path::PathBuf)> = instances
        .iter()
        .map(|i| (i.name.clone(), i.path.clone()))
        .collect();
    let errors = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        for (name, path) in &paths {
            let r = match op {
                Op::Freeze => cgroup::freeze(path, timeout),
                Op::Thaw => cgroup::thaw(path, timeout),
                Op::Kill => cgroup::kill(path, timeout),
            };
            if let Err(e) = r {
                errors.push(format!("{name}: {e}"));
            }
        }
        errors
    })
    .await
    .unwrap_or_else(|e| vec![format!("worker failed: {e}")]);
    let took = start.elapsed();
    if matches!(op, Op::Freeze | Op::Kill) {
        // Leases end with the freeze or kill, for the instances and their sub-agents; a thawed
        // instance's next tool request takes a new lease.
        let ids: Vec<u64> = {
            let st = shared.lock_state();
            st.instances
                .values()
                .filter(|i| instances.iter().any(|t| i.path.starts_with(&t.path)))
                .map(|i| i.id)
                .collect()
        };
        let why = if op == Op::Kill { "kill" } else { "freeze" };
        let revoked = shared.gateway.revoke(&ids, why);
        crate::gateway::checkout::log_revoked(shared, revoked, why);
    }
    let names: Vec<String> = instances.iter().map(|i| i.name.clone()).collect();
    let action = OperatorAction {
        target,
        instances: names.clone(),
        by,
        budget,
        took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        ok: errors.is_empty(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    };
    shared.log(match op {
        Op::Freeze => Body::Freeze(action),
        Op::Thaw => Body::Thaw(action),
        Op::Kill => Body::Kill(action),
    });
    Outcome {
        instances: names,
        took,
        errors,
    }
}
