//! One function per control request.

use std::{path::PathBuf, sync::Arc, time::Duration};

use agentguard_common::agent::ThrottleScope;

use super::{
    Shared, apply, identity,
    operator::{self, Op},
    state::Breach,
};
use crate::{
    audit::{
        prune::Retention,
        record::{Actor, Body},
    },
    cgroup::{self, Instance},
    control::{
        peer::Peer,
        proto::{
            AgentStatus, Identity, InstanceStatus, LandlockSpec, Reply, Request, Response, Sandbox,
            Selector, StatusReport,
        },
    },
    ebpf::backends::FileBackend,
    gateway::checkout,
    policy::{Agent, Mode},
};

/// Answers one request from an administrator.
pub async fn handle(shared: &Arc<Shared>, peer: &Peer, req: Request) -> Response {
    let by = Actor::Peer {
        uid: peer.uid,
        pid: peer.pid,
        exe: peer.exe(),
    };
    let result = match req {
        Request::Ping => Ok(Reply::Pong {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backends: shared.backends.to_string(),
        }),
        Request::Run {
            agent,
            parent,
            user,
        } => launch(
            shared,
            by,
            &agent,
            parent.as_deref(),
            peer.pid,
            How::Run(user.as_deref()),
        )
        .map(|(instance, sandbox, _)| Reply::Launched {
            instance: instance.name,
            sandbox: Box::new(sandbox),
        }),
        Request::Tag { agent, pid, parent } => {
            launch(shared, by, &agent, parent.as_deref(), pid, How::Tag).map(
                |(instance, _, warnings)| Reply::Tagged {
                    instance: instance.name,
                    warnings,
                },
            )
        }
        Request::Freeze { target, timeout_ms } => {
            operate(shared, Op::Freeze, &target, timeout_ms, by).await
        }
        Request::Thaw { target, timeout_ms } => {
            operate(shared, Op::Thaw, &target, timeout_ms, by).await
        }
        Request::Kill { target, timeout_ms } => {
            operate(shared, Op::Kill, &target, timeout_ms, by).await
        }
        Request::Status => Ok(Reply::Status(status(shared))),
        Request::PolicyApply { origin, text } => apply::apply_text(shared, &origin, &text, by)
            .await
            .map(|a| Reply::Applied {
                digest: a.digest,
                generation: a.generation,
                rules: a.rules,
                warnings: a.warnings,
            })
            .map_err(|e| e.to_string()),
        Request::Shutdown { unload } => {
            shared.request_shutdown(unload);
            Ok(Reply::ShuttingDown)
        }
        Request::SecretSet { name, value } => shared
            .write_secrets()
            .set(&name, &value.0)
            .map(|replaced| {
                tracing::info!(secret = %name, replaced, "secret stored");
                Reply::SecretStored { replaced }
            })
            .map_err(|e| e.to_string()),
        Request::SecretList => Ok(Reply::Secrets {
            names: shared.read_secrets().names(),
        }),
        Request::SecretRm { name } => shared
            .write_secrets()
            .remove(&name)
            .map(|existed| Reply::SecretRemoved { existed })
            .map_err(|e| e.to_string()),
        Request::Denials { since_ns } => Ok(Reply::Denials {
            denials: shared.recent_denials(None, since_ns.unwrap_or(0)),
        }),
        Request::LogPrune {
            keep_days,
            keep_bytes,
        } => prune_log(shared, keep_days, keep_bytes, by),
        Request::CredentialCheckout { .. } | Request::CredentialReturn { .. } => Err(
            "credentials are checked out by processes inside agent instances, over the agent socket".to_owned(),
        ),
    };
    match result {
        Ok(reply) => Response::Ok(reply),
        Err(message) => Response::Error(message),
    }
}

/// `agentguard log prune` while the daemon holds the log.
fn prune_log(
    shared: &Shared,
    keep_days: Option<u64>,
    keep_bytes: Option<u64>,
    by: Actor,
) -> Result<Reply, String> {
    let keep = match (keep_days, keep_bytes) {
        (Some(d), None) => Retention::Days(d),
        (None, Some(b)) => Retention::Bytes(b),
        _ => return Err("give exactly one of keep_days and keep_bytes".to_owned()),
    };
    let pruned = shared
        .lock_log()
        .prune(keep, by)
        .map_err(|e| format!("cannot prune the log: {e}"))?;
    Ok(match pruned {
        Some(p) => Reply::Pruned {
            segments: p.segments,
            bytes: p.bytes,
            first_kept_seq: Some(p.first_kept_seq),
        },
        None => Reply::Pruned {
            segments: 0,
            bytes: 0,
            first_kept_seq: None,
        },
    })
}

/// Answers one request on the agent socket from a process inside `caller`: it may start a
/// declared sub-agent of its own agent, nested in its own instance, and nothing else.
pub async fn handle_agent(
    shared: &Arc<Shared>,
    peer: &Peer,
    caller: &Instance,
    req: Request,
) -> Response {
    let by = Actor::Agent {
        instance: caller.name.clone(),
        pid: peer.pid,
    };
    let result = match req {
        Request::Ping => Ok(Reply::Pong {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backends: shared.backends.to_string(),
        }),
        Request::Run {
            agent,
            parent: None,
            user: None,
        } => {
            let own_sub = agent
                .strip_prefix(&format!("{}/", caller.agent))
                .is_some_and(|sub| !sub.is_empty() && !sub.contains('/'));
            if own_sub {
                launch(shared, by, &agent, Some(&caller.name), peer.pid, How::SubAgent)
                    .map(|(instance, sandbox, _)| Reply::Launched { instance: instance.name, sandbox: Box::new(sandbox) })
            } else {
                Err(format!(
                    "agent {:?} may only start its own sub-agents ({}/NAME), not {agent:?}",
                    caller.agent, caller.agent
                ))
            }
        }
        // Identity is the caller's cgroup: its own instance and its sub-agents, nobody else's.
        Request::Denials { since_ns } => Ok(Reply::Denials {
            denials: shared.recent_denials(Some(&caller.name), since_ns.unwrap_or(0)),
        }),
        // The caller is its cgroup: only its own agent's grants, only its own instance's lease.
        Request::CredentialCheckout { name } => checkout::checkout(shared, peer, caller, &name).await,
        Request::CredentialReturn { name } => checkout::give_back(shared, peer, caller, &name),
        Request::Run { .. } => Err("a sub-agent always nests in the caller's own instance; --parent is not accepted here".to_owned()),
        _ => Err("the agent socket only starts sub-agents, lists its own recent refusals (`agentguard denials`) and checks out granted credentials; everything else needs the administrator socket".to_owned()),
    };
    match result {
        Ok(reply) => Response::Ok(reply),
        Err(message) => Response::Error(message),
    }
}

/// How a process enters an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How<'a> {
    /// `agentguard run` by an administrator, with its `--user`.
    Run(Option<&'a str>),
    /// `agentguard tag` of a running process.
    Tag,
    /// `agentguard run` of a sub-agent by a process inside its parent's instance.
    SubAgent,
}

/// Creates an instance of `agent`, registers it with the kernel, then moves `pid` into it: the
/// process is judged from the moment it is in the cgroup.
fn launch(
    shared: &Arc<Shared>,
    by: Actor,
    agent: &str,
    parent: Option<&str>,
    pid: u32,
    how: How<'_>,
) -> Result<(Instance, Sandbox, Vec<String>), String> {
    let tagged = how == How::Tag;
    let mut st = shared.lock_state();
    let Some(a) = st.policy.agent(agent).cloned() else {
        let known: Vec<&str> = st.policy.agents.iter().map(|a| a.name.as_str()).collect();
        return Err(format!(
            "unknown agent {agent:?} (the policy declares: {})",
            known.join(", ")
        ));
    };
    let files = file_enforcement(shared, &a, tagged);
    if a.restricts_files() && shared.backends.file == FileBackend::Unenforced {
        return Err(format!(
            "agent {agent:?} has exec/read/write rules but nothing on this host can enforce file rules (no BPF LSM, no Landlock); refusing to start it"
        ));
    }
    // Only a sub-agent launch moves a process that already is an agent (out of its parent's
    // instance, one level down).
    if how != How::SubAgent && st.hierarchy.contains_pid(pid).map_err(|e| e.to_string())? {
        return Err(format!(
            "process {pid} already belongs to an agent instance"
        ));
    }
    if let Some(max) = a.max_instances {
        // Counted under the state lock that also registers the new instance, so two racing
        // launches cannot both take the last place.
        let running = st.instances.values().filter(|i| i.agent == a.name).count();
        if running >= max as usize {
            return Err(format!(
                "agent {agent:?} already runs {running} instance(s), its policy's max_instances = {max}; refusing to start another"
            ));
        }
    }
    let parent_instance = match &a.parent {
        None => None,
        Some(pname) => Some(match parent {
            Some(p) => st
                .instances
                .values()
                .find(|i| i.name == p && &i.agent == pname)
                .cloned()
                .ok_or_else(|| format!("{p:?} is not a running instance of {pname:?}"))?,
            None => st.newest_instance(pname).cloned().ok_or_else(|| {
                format!("sub-agent {agent:?} needs a running instance of {pname:?} to nest in")
            })?,
        }),
    };
    let identity = match how {
        How::Run(user) => {
            let allocated = st.dynamic_uids.values().copied().collect();
            identity::choose(&a, user, false, &allocated)?
        }
        How::SubAgent => identity::choose(&a, None, true, &Default::default())?,
        // A tagged process keeps whatever identity it has.
        How::Tag => Identity::Inherited,
    };
    let inst = st
        .hierarchy
        .create_instance(agent, parent_instance.as_ref())
        .map_err(|e| e.to_string())?;
    if let Identity::Dynamic { uid } = identity {
        st.dynamic_uids.insert(inst.id, uid);
    }
    // The private temp directory exists before the process can run in the instance. A tagged
    // process keeps its environment (no TMPDIR to give it), so it gets none.
    let tmp_dir = match (a.private_tmp, how) {
        (false, _) | (true, How::Tag) => Ok(None),
        (true, How::SubAgent) => Ok(Some(shared.private_tmp.top_dir(&inst))),
        // A sub-agent started by an administrator does not share its parent instance's user,
        // so it gets a directory of its own.
        (true, How::Run(_)) => shared.private_tmp.create(&inst, &identity).map_err(|e| {
            format!(
                "cannot create the private temp directory of {} under {}: {e}",
                inst.name,
                shared.private_tmp.root().display()
            )
        }),
    };
    let tmp_dir = match tmp_dir {
        Ok(t) => t,
        Err(e) => {
            st.unregister(inst.id);
            let _ = st.hierarchy.remove(&inst);
            return Err(e);
        }
    };
    let entered = st
        .register(&inst, tagged)
        .map_err(|e| e.to_string())
        .and_then(|()| st.hierarchy.move_pid(&inst, pid).map_err(|e| e.to_string()));
    if let Err(e) = entered {
        st.unregister(inst.id);
        let _ = st.hierarchy.remove(&inst);
        if matches!(how, How::Run(_)) {
            shared.private_tmp.remove(&inst);
        }
        return Err(format!("cannot start an instance of {agent:?}: {e}"));
    }
    st.note_first_pid(pid, inst.id);
    drop(st);
    let mut warnings = Vec::new();
    if tagged {
        warnings.push("sockets the process opened before it was tagged keep their original cgroup and are not judged; prefer `agentguard run`".to_owned());
        if a.restricts_files() && shared.backends.file == FileBackend::Landlock {
            warnings.push("file rules are NOT enforced for a tagged process on this host (Landlock can only be applied by `agentguard run`); exec and network rules are".to_owned());
        }
    }
    shared.log(Body::InstanceStart {
        agent: agent.to_owned(),
        instance: inst.name.clone(),
        cgroup_id: inst.id,
        pid,
        how: match how {
            How::Run(_) => "run",
            How::Tag => "tag",
            How::SubAgent => "sub-agent",
        }
        .to_owned(),
        by,
        files,
    });
    let _ = shared.new_instances.send(inst.clone());
    Ok((inst, sandbox(shared, &a, identity, tmp_dir), warnings))
}

fn file_enforcement(shared: &Shared, a: &Agent, tagged: bool) -> String {
    match (a.restricts_files(), shared.backends.file, tagged) {
        (false, _, _) => "unrestricted (no exec/read/write rules)".to_owned(),
        (true, FileBackend::BpfLsm, _) => "bpf-lsm".to_owned(),
        (true, FileBackend::Landlock, false) => "landlock".to_owned(),
        (true, FileBackend::Landlock, true) => {
            "none: tagged process, file rules not enforced (no Landlock)".to_owned()
        }
        (true, FileBackend::Unenforced, _) => "none: no backend".to_owned(),
    }
}

/// What `run` applies to itself before exec.
fn sandbox(shared: &Shared, a: &Agent, identity: Identity, tmp_dir: Option<PathBuf>) -> Sandbox {
    let landlock = (a.restricts_files() && shared.backends.file == FileBackend::Landlock)
        .then(|| LandlockSpec::of_agent(a, tmp_dir.as_deref()));
    Sandbox {
        landlock,
        capabilities: a.capabilities.iter().map(|c| c.value.to_string()).collect(),
        identity,
        allow_syscalls: a.allow_syscalls.iter().map(|g| g.value.clone()).collect(),
        tmp_dir,
        exec_allowed: if a.restricts_files() && a.mode == Mode::Enforce {
            a.exec.iter().map(|e| e.value.clone()).collect()
        } else {
            Vec::new()
        },
        gateway: shared
            .gateway_addr
            .filter(|_| !a.tools.is_empty())
            .map(|addr| format!("http://{addr}")),
    }
}

/// `AgentStatus::runs_as`: weakenings in capitals, so `status` shows them at a glance.
fn runs_as(a: &Agent) -> String {
    let user = match (&a.parent, &a.user) {
        (Some(_), _) => "parent's user".to_owned(),
        (None, Some(_)) if a.runs_as_root() => "ROOT (policy opt-in)".to_owned(),
        (None, Some(u)) => format!("user {}", u.value),
        (None, None) => "dynamic uid".to_owned(),
    };
    if a.allow_syscalls.is_empty() {
        return user;
    }
    let groups: Vec<&str> = a.allow_syscalls.iter().map(|g| g.value.as_str()).collect();
    format!("{user}; SYSCALLS GRANTED: {}", groups.join(", "))
}

async fn operate(
    shared: &Arc<Shared>,
    op: Op,
    target: &Selector,
    timeout_ms: u64,
    by: Actor,
) -> Result<Reply, String> {
    let instances = operator::select(shared, target)?;
    if op == Op::Thaw {
        // A thawed instance is escalated again on its next breach, not on one from before.
        let (_, now) = crate::audit::now();
        let mut st = shared.lock_state();
        let thawed: Vec<u64> = st
            .instances
            .values()
            .filter(|s| instances.iter().any(|i| s.path.starts_with(&i.path)))
            .map(|s| s.id)
            .collect();
        for id in thawed {
            st.breaches.insert(id, Breach::ThawedAt(now));
        }
    }
    let out = operator::run(
        shared,
        op,
        target.to_string(),
        instances,
        Duration::from_millis(timeout_ms),
        by,
        None,
    )
    .await;
    if out.errors.is_empty() {
        Ok(Reply::Done {
            instances: out.instances,
            took_ms: u64::try_from(out.took.as_millis()).unwrap_or(u64::MAX),
        })
    } else {
        Err(out.errors.join("\n"))
    }
}

fn status(shared: &Shared) -> StatusReport {
    let open_budget_tracepoints = shared.lock_programs().open_hooks_attached();
    let st = shared.lock_state();
    let lost_events = st.maps.lost_total().unwrap_or(0);
    let agents = st
        .policy
        .agents
        .iter()
        .map(|a| AgentStatus {
            name: a.name.clone(),
            mode: match a.mode {
                Mode::Enforce => "enforce",
                Mode::Audit => "audit",
            }
            .to_owned(),
            runs_as: runs_as(a),
            budgets: a
                .limits
                .iter()
                .map(|l| {
                    let scope = match l.scope {
                        ThrottleScope::Process => "per process",
                        ThrottleScope::Agent => "per instance",
                    };
                    format!(
                        "{} {} {scope} (burst {}, on exceed {})",
                        l.kind.name(),
                        l.rate,
                        l.burst,
                        l.on_exceed.name()
                    )
                    .to_lowercase()
                })
                .collect(),
            instances: st
                .instances
                .values()
                .filter(|i| i.agent == a.name)
                .map(|i| {
                    let c = st.maps.counters(i.id);
                    let frozen = std::fs::read_to_string(i.path.join("cgroup.events"))
                        .is_ok_and(|e| e.lines().any(|l| l.trim() == "frozen 1"));
                    InstanceStatus {
                        name: i.name.clone(),
                        cgroup_id: i.id,
                        state: if frozen { "frozen" } else { "running" }.to_owned(),
                        pids: cgroup::procs(&i.path).unwrap_or_default(),
                        allowed: c.allowed,
                        denied: c.denied,
                        throttled: c.throttled,
                        audit_denied: c.audit_denied,
                        budget_use: a
                            .limits
                            .iter()
                            .filter(|l| l.scope == ThrottleScope::Agent)
                            .filter_map(|l| {
                                st.maps
                                    .budget_left(i.id, l.kind, &l.to_kernel())
                                    .map(|left| {
                                        format!(
                                            "{} (instance): {left} of {} left",
                                            l.kind.name(),
                                            budget_size(l)
                                        )
                                    })
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backends: shared.backends.to_string(),
        policy_digest: st.policy.digest_hex(),
        policy_origin: st.policy.origin.clone(),
        agents,
        lost_events,
        open_budget_tracepoints,
    }
}

fn budget_size(l: &crate::policy::throttle::Limit) -> u64 {
    let t = l.to_kernel();
    t.burst_ns / t.cost_ns.max(1)
}
