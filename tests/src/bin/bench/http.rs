//! The gateway part's two ends: an upstream HTTP server (run untagged, outside every agent) and
//! a keep-alive HTTP client that times each request (run as an agent, either straight to the
//! upstream or through the tool gateway). Both are hyper on a single-threaded tokio runtime.

use std::{
    convert::Infallible,
    io::{Read as _, Write as _},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, Response, StatusCode, Uri, body::Incoming, client::conn::http1 as client_http1,
    header, server::conn::http1 as server_http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, net::TcpStream, runtime::Runtime, task::JoinSet};

/// The response header saying whether the request carried the credential the upstream was
/// started with (`Authorization: Bearer VALUE`): `present` or `absent`.
const CREDENTIAL_HEADER: &str = "x-bench-credential";

/// Requests each connection sends before timing starts (connect, the gateway's first lease,
/// the upstream pool's connection), as a share of the timed ones.
fn warm_up(n: u64) -> u64 {
    (n / 20).clamp(2, 50)
}

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")
}

/// `http-serve VALUE`: listens on a free loopback port, prints `{"addr": ...}`, and answers
/// every request, once its body is read whole, with 200 and the body's length in bytes, plus
/// [`CREDENTIAL_HEADER`]. Ends when its standard input is closed (xtask is done with it).
pub fn serve(credential: &str) -> Result<Value> {
    let expected = format!("Bearer {credential}");
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", json!({ "addr": addr.to_string() }))?;
            out.flush().context("stdout")?;
        }
        // Standard input closing is the signal to end; read on a thread of its own.
        let (done_tx, mut done) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = [0_u8; 64];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            let _ = done_tx.send(());
        });
        let expected: Arc<str> = expected.into();
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => r.context("accept")?,
                _ = &mut done => break,
            };
            let _ = stream.set_nodelay(true);
            let expected = Arc::clone(&expected);
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(Arc::clone(&expected), req));
                let _ = server_http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        Ok(json!({ "served": addr.to_string() }))
    })
}

async fn answer(
    expected: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let credential = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let (status, text) = match req.into_body().collect().await {
        Ok(body) => (StatusCode::OK, body.to_bytes().len().to_string()),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CREDENTIAL_HEADER,
        header::HeaderValue::from_static(if credential { "present" } else { "absent" }),
    );
    Ok(r)
}

/// What the upstream must have seen for every request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Through the gateway: it injected the credential.
    Present,
    /// Direct: the agent holds none.
    Absent,
}

impl Credential {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "present" => Ok(Self::Present),
            "absent" => Ok(Self::Absent),
            _ => bail!("{text:?} is neither `present` nor `absent`"),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Present => "present",
            Self::Absent => "absent",
        }
    }
}

/// One client run.
pub struct Load {
    /// `http://ADDR/PATH`, or `gateway/PATH` for `$AGENTGUARD_GATEWAY/PATH`.
    pub url: String,
    /// Timed requests over all connections.
    pub requests: u64,
    /// Bytes of every request's POST body.
    pub body: usize,
    /// Keep-alive connections, each with one request in flight at a time.
    pub connections: u64,
    pub credential: Credential,
}

/// `http URL N BYTES CONNECTIONS present|absent`: after a warm-up, `N` POSTs of `BYTES` bytes
/// over `CONNECTIONS` keep-alive connections; prints the time of each request (from writing it
/// to the last byte of the answer) and the run's wall time. Fails on the first answer that is
/// not 200 with the body's length and the expected credential header: a refused or broken
/// request never counts as a fast one.
pub fn client(load: &Load) -> Result<Value> {
    let url = match load.url.strip_prefix("gateway/") {
        Some(path) => {
            let base = std::env::var("AGENTGUARD_GATEWAY")
                .context("AGENTGUARD_GATEWAY is not set (is this agent granted a tool?)")?;
            format!("{}/{path}", base.trim_end_matches('/'))
        }
        None => load.url.clone(),
    };
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    let authority = uri
        .authority()
        .with_context(|| format!("{url:?} has no host:port"))?
        .to_string();
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("{authority:?} is not ADDR:PORT"))?;
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), ToString::to_string);
    // No `%` or `+` in it: the gateway searches such a body a second time, percent-decoded.
    let body = Bytes::from(
        (0..load.body)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
            .collect::<Vec<u8>>(),
    );
    let target = Arc::new(Target {
        authority,
        path,
        body,
        credential: load.credential,
    });
    let rt = runtime()?;
    rt.block_on(async move {
        let mut senders = Vec::new();
        for _ in 0..load.connections {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            stream.set_nodelay(true)?;
            let (sender, conn) = client_http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
            tokio::spawn(conn);
            senders.push(sender);
        }
        let warm = warm_up(load.requests / load.connections.max(1));
        for sender in &mut senders {
            for _ in 0..warm {
                target.once(sender).await?;
            }
        }
        let left = Arc::new(AtomicU64::new(load.requests));
        let start = Instant::now();
        let mut workers = JoinSet::new();
        for mut sender in senders {
            let target = Arc::clone(&target);
            let left = Arc::clone(&left);
            workers.spawn(async move {
                let mut us = Vec::new();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    us.push(target.once(&mut sender).await?);
                }
                anyhow::Ok(us)
            });
        }
        let mut latency_us = Vec::new();
        while let Some(r) = workers.join_next().await {
            latency_us.extend(r.context("a client task panicked")??);
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(json!({
            "cgroup": super::hold::own_cgroup(),
            "url": url,
            "requests": latency_us.len(),
            "connections": load.connections,
            "body_bytes": load.body,
            "warm_up_per_connection": warm,
            "secs": secs,
            "latency_us": latency_us,
        }))
    })
}

/// Where and what each request sends.
struct Target {
    authority: String,
    path: String,
    body: Bytes,
    credential: Credential,
}

impl Target {
    /// One request, checked; returns its time in µs.
    async fn once(&self, sender: &mut client_http1::SendRequest<Full<Bytes>>) -> Result<f64> {
        let req = Request::post(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .body(Full::new(self.body.clone()))?;
        let start = Instant::now();
        sender.ready().await.context("the connection closed")?;
        let resp = sender.send_request(req).await.context("request failed")?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        let took = start.elapsed().as_secs_f64() * 1e6;
        let text = String::from_utf8_lossy(&body);
        if !parts.status.is_success() {
            bail!(
                "{} {} answered {}: {}",
                self.authority,
                self.path,
                parts.status,
                text.trim()
            );
        }
        if text != self.body.len().to_string() {
            bail!(
                "the upstream saw a body of {text:?} bytes, {} were sent",
                self.body.len()
            );
        }
        let seen = parts
            .headers
            .get(CREDENTIAL_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if seen.as_deref() != Some(self.credential.as_str()) {
            bail!(
                "the upstream reports the credential {seen:?}, expected {:?}",
                self.credential.as_str()
            );
        }
        Ok(took)
    }
}
