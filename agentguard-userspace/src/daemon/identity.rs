//! Who an agent instance runs as. uid 0 only when the policy says `user = "root"`; otherwise
//! a named user (policy `user` or `run --user`), or by default a dynamic uid that no other
//! process on the host holds, like systemd's `DynamicUser`.

use std::collections::HashSet;

use crate::{
    control::proto::Identity,
    policy::{Agent, is_root_name},
    sandbox::privs,
};

/// First uid of agentguard's dynamic range. Above the ranges distributions, systemd
/// (61184-65519) and the usual subordinate-id allocations (100000 + 65536 n) use, below 2^31
/// (software that stores uids in a signed int).
pub const DYNAMIC_UID_BASE: u32 = 0x7e00_0000;
/// Size of the dynamic range: at most this many instances run at once with dynamic uids.
pub const DYNAMIC_UID_COUNT: u32 = 0x1_0000;

/// The identity for a new instance of `agent`. `requested` is `run --user`; `sub_agent` is a
/// launch from inside the parent instance (which cannot switch users); `allocated` are the
/// dynamic uids given to live instances.
pub fn choose(
    agent: &Agent,
    requested: Option<&str>,
    sub_agent: bool,
    allocated: &HashSet<u32>,
) -> Result<Identity, String> {
    if sub_agent {
        return match requested {
            Some(_) => Err("a sub-agent runs as its parent's user; --user is not accepted".into()),
            None => Ok(Identity::Inherited),
        };
    }
    let named = |spec: &str| -> Result<Identity, String> {
        let user = privs::resolve_user(spec).map_err(|e| e.to_string())?;
        if user.uid != 0 {
            return Ok(Identity::User(user));
        }
        if agent.runs_as_root() {
            Ok(Identity::Root)
        } else {
            Err(format!(
                "agent {:?} may not run as root: uid 0 passes file permission checks host-wide and can undo its own confinement; run it as another user (--user, or `user` in the policy) or, knowingly, set user = \"root\" in its policy",
                agent.name
            ))
        }
    };
    match (requested, &agent.user) {
        (Some(spec), _) => named(spec),
        (None, Some(user)) if is_root_name(&user.value) => Ok(Identity::Root),
        (None, Some(user)) => named(&user.value),
        (None, None) => dynamic_uid(allocated).map(|uid| Identity::Dynamic { uid }),
    }
}

/// A uid of the dynamic range held by no live instance and by no process on the host (the
/// latter covers instances adopted after a daemon restart).
fn dynamic_uid(allocated: &HashSet<u32>) -> Result<u32, String> {
    let mut seed = [0u8; 4];
    getrandom::fill(&mut seed).map_err(|e| format!("cannot pick a dynamic uid: {e}"))?;
    let start = u32::from_le_bytes(seed) % DYNAMIC_UID_COUNT;
    let in_use = uids_in_use();
    (0..DYNAMIC_UID_COUNT)
        .map(|i| DYNAMIC_UID_BASE + (start + i) % DYNAMIC_UID_COUNT)
        .find(|uid| !allocated.contains(uid) && !in_use.contains(uid))
        .ok_or_else(|| {
            format!("all {DYNAMIC_UID_COUNT} dynamic uids are in use; no new instance can start")
        })
}

/// Every real, effective, saved and filesystem uid of the processes on the host.
fn uids_in_use() -> HashSet<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return HashSet::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| p.status().ok())
        .flat_map(|s| [s.ruid, s.euid, s.suid, s.fuid])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    fn agent(policy: &str) -> Agent {
        let p = policy::parse("test.toml", policy).unwrap_or_else(|e| panic!("{e}"));
        p.agents[0].clone()
    }

    #[test]
    fn root_needs_the_policy_to_say_so() {
        let plain = agent("[agents.a]\n");
        let err = choose(&plain, Some("root"), false, &HashSet::new())
            .expect_err("root without the policy opt-in");
        assert!(err.contains("may not run as root"), "{err}");
        assert!(choose(&plain, Some("0"), false, &HashSet::new()).is_err());
        let root = agent("[agents.a]\nuser = \"root\"\n");
        assert_eq!(
            choose(&root, None, false, &HashSet::new()),
            Ok(Identity::Root)
        );
        assert_eq!(
            choose(&root, Some("root"), false, &HashSet::new()),
            Ok(Identity::Root)
        );
    }

    #[test]
    fn no_user_means_a_fresh_dynamic_uid() {
        let plain = agent("[agents.a]\n");
        let mut taken = HashSet::new();
        for _ in 0..64 {
            let Ok(Identity::Dynamic { uid }) = choose(&plain, None, false, &taken) else {
                panic!("expected a dynamic uid");
            };
            assert!((DYNAMIC_UID_BASE..DYNAMIC_UID_BASE + DYNAMIC_UID_COUNT).contains(&uid));
            assert!(taken.insert(uid), "uid {uid} handed out twice");
        }
    }

    #[test]
    fn named_users_and_sub_agents() {
        let svc = agent("[agents.a]\nuser = \"nobody\"\n");
        let Ok(Identity::User(u)) = choose(&svc, None, false, &HashSet::new()) else {
            panic!("expected the policy's user");
        };
        assert_eq!(u.uid, 65534);
        assert_eq!(
            choose(&svc, None, true, &HashSet::new()),
            Ok(Identity::Inherited)
        );
        assert!(choose(&svc, Some("nobody"), true, &HashSet::new()).is_err());
    }
}
