//! Prometheus metrics (`agentguard daemon --metrics-listen ADDR`, `GET /metrics`).
//!
//! Label cardinality is bounded by the policy, never by what agents do: agent names (declared
//! in the policy, sub-agents as `parent/sub`), action kinds and verdicts (fixed sets). Instance
//! numbers, pids, uids and targets are never labels; they are in the log.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::watch;

use crate::audit::{
    names,
    record::{Body, OperatorAction},
    segment,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    agent: String,
    action: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    agent: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The daemon's metrics, updated as records are logged.
pub struct Metrics {
    registry: Registry,
    actions: Family<ActionLabels, Counter>,
    refusals: Family<AgentLabels, Counter>,
    budget_breaches: Family<AgentLabels, Counter>,
    escalations: Family<OperationLabels, Counter>,
    operations: Family<OperationLabels, Histogram, fn() -> Histogram>,
    lost: Family<SourceLabels, Counter>,
    policy_generation: Gauge,
    policy_applies: Counter,
    policy_apply_seconds: Histogram,
    log_bytes: Gauge,
    log_segments: Gauge,
    log_dir: PathBuf,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The agent an instance path (`buyer/3`, `buyer/3/search/1`) belongs to: the instance
/// numbers dropped, so the label stays one of the policy's names.
fn agent_of(instance: &str) -> String {
    instance
        .split('/')
        .filter(|part| !part.bytes().all(|b| b.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join("/")
}

impl Metrics {
    /// Metrics for a daemon whose log is in `log_dir`.
    pub fn new(log_dir: PathBuf) -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("agentguard"),
            actions: Family::default(),
            refusals: Family::default(),
            budget_breaches: Family::default(),
            escalations: Family::default(),
            operations: Family::new_with_constructor(latency_histogram),
            lost: Family::default(),
            policy_generation: Gauge::default(),
            policy_applies: Counter::default(),
            policy_apply_seconds: latency_histogram(),
            log_bytes: Gauge::default(),
            log_segments: Gauge::default(),
            log_dir,
        };
        let r = &mut m.registry;
        r.register(
            "actions",
            "Actions judged, by agent, action kind and verdict",
            m.actions.clone(),
        );
        r.register(
            "refusals",
            "Actions refused (denied, killed or throttled), by agent",
            m.refusals.clone(),
        );
        r.register(
            "budget_breaches",
            "Actions over a budget (throttled), by agent",
            m.budget_breaches.clone(),
        );
        r.register(
            "escalations",
            "Freezes and kills carried out because of a budget, by agent",
            m.escalations.clone(),
        );
        r.register(
            "operation_seconds",
            "Time freeze, thaw and kill took until the kernel reported them done, by agent",
            m.operations.clone(),
        );
        r.register(
            "lost_events",
            "Kernel events that never reached the log, by source",
            m.lost.clone(),
        );
        r.register(
            "policy_generation",
            "Map generation of the policy in force",
            m.policy_generation.clone(),
        );
        r.register(
            "policy_applies",
            "Policies applied since the daemon started",
            m.policy_applies.clone(),
        );
        r.register(
            "policy_apply_seconds",
            "Time to validate, compile and write a policy",
            m.policy_apply_seconds.clone(),
        );
        r.register(
            "log_bytes",
            "Bytes in the log's segment files",
            m.log_bytes.clone(),
        );
        r.register(
            "log_segments",
            "Segment files of the log",
            m.log_segments.clone(),
        );
        m
    }

    /// Accounts for one record about to be logged.
    pub fn observe(&self, body: &Body) {
        match body {
            Body::Action(a) => self.count_actions(&a.agent, a.kind, a.verdict, 1),
            Body::Freeze(op) => self.operation("freeze", op),
            Body::Thaw(op) => self.operation("thaw", op),
            Body::Kill(op) => self.operation("kill", op),
            Body::Lost { dropped, .. } => {
                self.lost_by("ring", *dropped);
            }
            Body::LostEvents {
                source,
                allowed,
                refusals,
                ..
            } => self.lost_by(source, allowed.saturating_add(*refusals)),
            Body::PolicyApplied { generation, .. } => {
                self.policy_generation.set(i64::from(*generation));
                self.policy_applies.inc();
            }
            _ => {}
        }
    }

    /// Adds what an [`ActionTally`] counted since the last fold, and zeroes it: one update of
    /// the shared counters per label set and batch, instead of per record.
    pub fn fold(&self, tally: &mut ActionTally) {
        for ((kind, verdict), agents) in &mut tally.counts {
            for (agent, n) in agents.iter_mut().filter(|(_, n)| **n > 0) {
                self.count_actions(agent, *kind, *verdict, std::mem::take(n));
            }
        }
    }

    fn count_actions(&self, agent: &str, kind: u16, verdict: u8, n: u64) {
        let verdict = names::verdict(verdict);
        self.actions
            .get_or_create(&ActionLabels {
                agent: agent.to_owned(),
                action: names::event_kind(kind).into_owned(),
                verdict: verdict.clone().into_owned(),
            })
            .inc_by(n);
        if matches!(&*verdict, "denied" | "killed" | "throttled") {
            let agent = AgentLabels {
                agent: agent.to_owned(),
            };
            self.refusals.get_or_create(&agent).inc_by(n);
            if verdict == "throttled" {
                self.budget_breaches.get_or_create(&agent).inc_by(n);
            }
        }
    }

    fn lost_by(&self, source: &str, n: u64) {
        // Sources are the daemon's own fixed names.
        self.lost
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .inc_by(n);
    }

    fn operation(&self, name: &str, op: &OperatorAction) {
        let seconds = Duration::from_millis(op.took_ms).as_secs_f64();
        let mut agents: Vec<String> = op.instances.iter().map(|i| agent_of(i)).collect();
        agents.sort();
        agents.dedup();
        for agent in agents {
            let labels = OperationLabels {
                agent,
                operation: name.to_owned(),
            };
            self.operations.get_or_create(&labels).observe(seconds);
            if op.budget.is_some() {
                self.escalations.get_or_create(&labels).inc();
            }
        }
    }

    /// Records how long a policy apply took.
    pub fn policy_applied_in(&self, took: Duration) {
        self.policy_apply_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition, with the log's size measured now.
    fn render(&self) -> Result<String, std::fmt::Error> {
        if let Ok(segments) = segment::list(&self.log_dir) {
            let bytes: u64 = segments
                .iter()
                .filter_map(|s| std::fs::metadata(&s.path).ok())
                .map(|m| m.len())
                .sum();
            self.log_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            self.log_segments
                .set(i64::try_from(segments.len()).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Action counts of one thread, between folds into [`Metrics`]: counting a record is a hash
/// lookup on the agent name, with no lock and (after an agent's first action) no allocation.
/// Agents are the policy's names, so the table stays small.
#[derive(Debug, Default)]
pub struct ActionTally {
    counts: HashMap<(u16, u8), HashMap<Box<str>, u64>>,
}

impl ActionTally {
    /// Counts one action.
    pub fn add(&mut self, agent: &str, kind: u16, verdict: u8) {
        let agents = self.counts.entry((kind, verdict)).or_default();
        match agents.get_mut(agent) {
            Some(n) => *n += 1,
            None => {
                agents.insert(agent.into(), 1);
            }
        }
    }
}

/// Binds the metrics listener (before READY, so a bad address fails the start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until shutdown; one connection's failure never stops the server.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&metrics, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            // A slow or idle scraper is dropped rather than held forever.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

fn respond(metrics: &Metrics, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "GET /metrics\n".to_owned(),
        );
    }
    match metrics.render() {
        Ok(text) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "encoding failed\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Actor;

    #[test]
    fn a_folded_tally_counts_like_observe() {
        let by_observe = Metrics::new(PathBuf::from("/nonexistent"));
        let by_tally = Metrics::new(PathBuf::from("/nonexistent"));
        let mut tally = ActionTally::default();
        for i in 0..10 {
            let body = crate::audit::testutil::action(i);
            by_observe.observe(&body);
            if let Body::Action(a) = &body {
                tally.add(&a.agent, a.kind, a.verdict);
            }
            if i == 4 {
                by_tally.fold(&mut tally);
            }
        }
        by_tally.fold(&mut tally);
        by_tally.fold(&mut tally);
        // The same samples (label sets may come out in another order).
        let lines = |text: &str| {
            let mut l: Vec<String> = text.lines().map(str::to_owned).collect();
            l.sort();
            l
        };
        let text = by_tally.render().expect("render");
        assert_eq!(lines(&text), lines(&by_observe.render().expect("render")));
        assert!(
            text.contains(r#"agentguard_refusals_total{agent="buyer"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn instance_paths_become_agent_names() {
        assert_eq!(agent_of("buyer/3"), "buyer");
        assert_eq!(agent_of("buyer/3/search/12"), "buyer/search");
    }

    #[test]
    fn freezes_are_timed_and_escalations_counted_by_agent() {
        let m = Metrics::new(PathBuf::from("/nonexistent"));
        m.observe(&Body::Freeze(OperatorAction {
            target: "buyer".into(),
            instances: vec!["buyer/1".into(), "buyer/2".into()],
            by: Actor::Daemon {
                reason: "budget".into(),
            },
            budget: Some("connect".into()),
            took_ms: 3,
            ok: true,
            error: None,
        }));
        let text = m.render().expect("render");
        assert!(
            text.contains(r#"agentguard_escalations_total{agent="buyer",operation="freeze"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"agentguard_operation_seconds_count{agent="buyer",operation="freeze"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("buyer/1"), "no instance labels: {text}");
    }
}
