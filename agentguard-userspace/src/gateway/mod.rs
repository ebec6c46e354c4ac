//! The tool gateway: a loopback HTTP server in the daemon through which agents call the tools
//! (`[tools.NAME]`) their policy grants, with credentials they never see.
//!
//! `$AGENTGUARD_GATEWAY/tools/NAME/PATH` is forwarded to the tool's `url` + `PATH` with the
//! credential injected, once the caller is known from the kernel ([`identity`]), the tool is
//! granted to its agent, the method and path are allowed, the instance's budget has room, the
//! body fits, and nothing in the request carries a secret's value ([`scan`]). Every request is
//! a chained `tool-call` record. HTTP is hyper's (server and client), TLS rustls'.

mod body;
pub mod checkout;
pub mod dynamic;
pub mod identity;
pub mod lease;
pub mod mcp;
pub mod rate;
mod request;
pub mod scan;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use agentguard_common::verdict::ToolVerdict;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use crate::{
    audit::record::{Body, ToolCall},
    daemon::Shared,
};

/// Connections the gateway serves at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Time a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Leases and budgets, shared with the kill switch (which revokes leases).
#[derive(Debug, Default)]
pub struct GatewayState {
    leases: Mutex<lease::Leases>,
    buckets: Mutex<rate::Buckets>,
    checkouts: Mutex<checkout::Checkouts>,
    /// Woken when a lease holding a Vault dynamic credential ended (see [`dynamic::run`]).
    dynamic_ended: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GatewayState {
    /// Ends the leases and credential checkouts of these instances (frozen, killed or ended):
    /// their next request, if any, takes a new lease. Returns the checkouts ended, for the
    /// caller to log (with no lock of its own held).
    pub fn revoke(&self, cgroup_ids: &[u64], why: &str) -> Vec<checkout::Ended> {
        let ended = lock(&self.leases).revoke(cgroup_ids, why);
        if !ended.is_empty() {
            tracing::info!(leases = ?ended, why, "gateway leases revoked");
        }
        let checkouts = lock(&self.checkouts).revoke(cgroup_ids, why);
        // Their Vault dynamic credentials, if any, are revoked at Vault now.
        self.dynamic_ended.notify_one();
        checkouts
    }

    /// Drops expired leases and checkouts (their Vault credentials are then revoked).
    fn sweep(&self, now: Instant) {
        lock(&self.leases).sweep(now);
        lock(&self.checkouts).sweep(now);
    }

    /// Ends every lease's and checkout's Vault credential (at shutdown).
    fn end_all(&self, why: &str) {
        lock(&self.leases).end_all(why);
        lock(&self.checkouts).end_all(why);
    }

    /// The Vault credentials whose leases ended, to revoke.
    fn drain_dynamic_ended(&self) -> Vec<lease::DynamicEnded> {
        let mut ended = lock(&self.leases).drain_ended();
        ended.extend(lock(&self.checkouts).drain_ended());
        ended
    }

    /// Wakes the revoker after a lease ended outside [`GatewayState::revoke`].
    pub(crate) fn wake_revoker(&self) {
        self.dynamic_ended.notify_one();
    }

    /// The values of every Vault dynamic credential not yet revoked: the gateway refuses
    /// requests that carry any of them, whichever instance holds it.
    pub fn dynamic_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        lock(&self.leases).dynamic_values(&mut out);
        lock(&self.checkouts).dynamic_values(&mut out);
        out
    }

    /// Forgets everything about instances that ended; returns the checkouts ended.
    pub fn forget(&self, cgroup_ids: &[u64]) -> Vec<checkout::Ended> {
        lock(&self.buckets).forget(cgroup_ids);
        self.revoke(cgroup_ids, "instance ended")
    }

    /// The credential checkouts.
    fn checkouts(&self) -> MutexGuard<'_, checkout::Checkouts> {
        lock(&self.checkouts)
    }
}

/// The log record of one request, written once when its response is complete.
pub struct Finish {
    shared: Arc<Shared>,
    record: ToolCall,
    /// An MCP tool's calls (empty for other tools): the record is then an `McpCall`.
    mcp: String,
    start: Instant,
}

impl Finish {
    /// Logs the record.
    pub fn done(mut self, status: u16, bytes_out: u64, verdict: ToolVerdict) {
        self.record.status = status;
        self.record.bytes_out = bytes_out;
        self.record.verdict = verdict as u8;
        self.record.duration_us =
            u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.shared.log(if self.mcp.is_empty() {
            Body::ToolCall(self.record)
        } else {
            Body::McpCall {
                call: self.record,
                mcp: self.mcp,
            }
        });
    }
}

/// What one request handler needs.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    client: request::Client,
}

/// Serves the gateway until shutdown.
pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let ctx = Ctx {
        shared,
        client: request::client(),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // The caller's identity, from the kernel, before a byte of the request is read.
        let cgroup = stream
            .local_addr()
            .and_then(|local| identity::peer_cgroup(local, peer))
            .unwrap_or_else(|e| {
                tracing::warn!(%peer, error = %e, "gateway: cannot identify the caller; treating it as no agent");
                None
            });
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| request::handle(ctx.clone(), cgroup, req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "gateway connection ended with an error");
            }
        });
    }
}
