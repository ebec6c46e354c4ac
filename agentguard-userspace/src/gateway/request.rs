//! One request: judge it, forward it with the credential, stream the answer back.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use agentguard_common::verdict::ToolVerdict;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client as LegacyClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::{Ctx, Finish, body::BoxError, body::Logged, dynamic, lock, mcp, scan};
use crate::{
    audit::record::ToolCall,
    policy::tools::{Inject, Tool, path_is_plain},
};

/// The upstream client: HTTP/1.1, TLS by rustls with the webpki roots.
pub type Client = LegacyClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What the agent gets back.
pub type GwBody = BoxBody<Bytes, BoxError>;

/// Builds the upstream client.
pub fn client() -> Client {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    LegacyClient::builder(TokioExecutor::new()).build(https)
}

/// Headers that describe one hop, never forwarded either way.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

fn text(status: StatusCode, msg: &str) -> Response<GwBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("agentguard gateway: {msg}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A refusal: logged now, answered with `status`.
fn refuse(finish: Finish, status: StatusCode, verdict: ToolVerdict, msg: &str) -> Response<GwBody> {
    let r = text(status, msg);
    finish.done(status.as_u16(), 0, verdict);
    r
}

/// An MCP refusal: a JSON-RPC error body, logged with `verdict`.
fn refuse_json(
    finish: Finish,
    status: StatusCode,
    verdict: ToolVerdict,
    body: Bytes,
) -> Response<GwBody> {
    let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    finish.done(status.as_u16(), 0, verdict);
    r
}

/// Strips hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// Answers one request; never fails (every outcome is a response).
pub async fn handle(
    ctx: Ctx,
    cgroup: Option<u64>,
    req: Request<Incoming>,
) -> Result<Response<GwBody>, Infallible> {
    let start = Instant::now();
    let path = req.uri().path().to_owned();
    let (tool_name, sub) = match path.strip_prefix("/tools/") {
        Some(rest) => match rest.split_once('/') {
            Some((t, s)) => (t.to_owned(), format!("/{s}")),
            None => (rest.to_owned(), "/".to_owned()),
        },
        None => (String::new(), path.clone()),
    };
    let caller = cgroup.and_then(|id| {
        ctx.shared
            .lock_state()
            .instances
            .get(&id)
            .map(|i| (i.agent.clone(), i.name.clone(), i.root_instance))
    });
    let finish = Finish {
        shared: ctx.shared.clone(),
        record: ToolCall {
            agent: caller.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
            instance: caller.as_ref().map(|c| c.1.clone()).unwrap_or_default(),
            cgroup_id: cgroup.unwrap_or(0),
            tool: tool_name.clone(),
            method: req.method().as_str().to_owned(),
            path: sub.clone(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration_us: 0,
            lease: String::new(),
            verdict: 0,
        },
        mcp: String::new(),
        start,
    };
    let Some((agent, _, budget_owner)) = caller else {
        return Ok(refuse(
            finish,
            StatusCode::FORBIDDEN,
            ToolVerdict::Denied,
            "the caller is not an agentguard agent instance",
        ));
    };
    if tool_name.is_empty() {
        return Ok(refuse(
            finish,
            StatusCode::NOT_FOUND,
            ToolVerdict::NotFound,
            "tools are at /tools/NAME/PATH",
        ));
    }
    let (tool, granted) = {
        let st = ctx.shared.lock_state();
        (
            st.policy.tool(&tool_name).cloned(),
            st.policy
                .agent(&agent)
                .is_some_and(|a| a.tools.iter().any(|t| t.value == tool_name)),
        )
    };
    let Some(tool) = tool else {
        return Ok(refuse(
            finish,
            StatusCode::NOT_FOUND,
            ToolVerdict::NotFound,
            &format!("no tool {tool_name:?}"),
        ));
    };
    if !granted {
        return Ok(refuse(
            finish,
            StatusCode::FORBIDDEN,
            ToolVerdict::Denied,
            &format!("agent {agent:?} may not use tool {tool_name:?}"),
        ));
    }
    if !tool.allows_method(req.method().as_str()) {
        return Ok(refuse(
            finish,
            StatusCode::FORBIDDEN,
            ToolVerdict::Denied,
            &format!(
                "method {} is not allowed for tool {tool_name:?}",
                req.method()
            ),
        ));
    }
    if !path_is_plain(&sub) || !tool.allows_path(&sub) {
        return Ok(refuse(
            finish,
            StatusCode::FORBIDDEN,
            ToolVerdict::Denied,
            &format!("path {sub:?} is not allowed for tool {tool_name:?}"),
        ));
    }
    let query = req.uri().query().map(str::to_owned);
    if let (Some(q), Some((_, Inject::Query { param, .. }))) = (&query, &tool.credential) {
        let clash = q
            .split('&')
            .any(|kv| kv.split('=').next().is_some_and(|k| k == param));
        if clash {
            return Ok(refuse(
                finish,
                StatusCode::FORBIDDEN,
                ToolVerdict::Denied,
                &format!("the query parameter {param:?} is the gateway's to set"),
            ));
        }
    }
    if let Some(rate) = tool.rate
        && let Err(wait) =
            lock(&ctx.shared.gateway.buckets).take(budget_owner, &tool.name, rate, Instant::now())
    {
        let mut r = refuse(
            finish,
            StatusCode::TOO_MANY_REQUESTS,
            ToolVerdict::Throttled,
            &format!(
                "over the rate of tool {tool_name:?} ({rate} per instance, shared with its sub-agents)"
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after(wait)));
        return Ok(r);
    }
    let caller = Caller {
        cgroup: cgroup.unwrap_or(0),
        budget_owner,
    };
    forward(ctx, caller, tool, sub, query, req, finish).await
}

/// Who calls: the instance (leases are its own) and the top-level instance whose budgets it
/// spends. Budgets belong to the instance tree, so an agent cannot multiply a tool's `rate` by
/// starting sub-agents, nor reset it by restarting one.
#[derive(Clone, Copy, Debug)]
struct Caller {
    cgroup: u64,
    budget_owner: u64,
}

/// The judged request, forwarded.
async fn forward(
    ctx: Ctx,
    Caller {
        cgroup,
        budget_owner,
    }: Caller,
    tool: Tool,
    sub: String,
    query: Option<String>,
    req: Request<Incoming>,
    mut finish: Finish,
) -> Result<Response<GwBody>, Infallible> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > tool.max_body) {
        return Ok(refuse(
            finish,
            StatusCode::PAYLOAD_TOO_LARGE,
            ToolVerdict::TooLarge,
            &format!("the body is over max_body ({} bytes)", tool.max_body),
        ));
    }
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(tool.max_body).unwrap_or(usize::MAX);
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(refuse(
                finish,
                StatusCode::PAYLOAD_TOO_LARGE,
                ToolVerdict::TooLarge,
                &format!("the body is over max_body ({} bytes)", tool.max_body),
            ));
        }
        Err(_) => {
            return Ok(refuse(
                finish,
                StatusCode::BAD_REQUEST,
                ToolVerdict::Denied,
                "the request body could not be read",
            ));
        }
    };
    finish.record.bytes_in = body.len() as u64;
    // The tool's own credential first: from Vault it becomes known (and searched for) only
    // once fetched. A Vault dynamic secret is issued for the instance's lease, below, once
    // the request passed every check (a credential not yet issued cannot be in the request).
    let dynamic_secret = tool
        .credential
        .as_ref()
        .is_some_and(|(secret, _)| ctx.shared.is_dynamic(secret));
    let value = match &tool.credential {
        None => None,
        Some(_) if dynamic_secret => None,
        Some((secret, _)) => match ctx.shared.secret_value(secret).await {
            Ok(Some(v)) => Some(v),
            Ok(None) => {
                return Ok(refuse(
                    finish,
                    StatusCode::SERVICE_UNAVAILABLE,
                    ToolVerdict::NoCredential,
                    &format!("the credential of tool {:?} is not set", tool.name),
                ));
            }
            Err(_) => {
                return Ok(refuse(
                    finish,
                    StatusCode::SERVICE_UNAVAILABLE,
                    ToolVerdict::NoCredential,
                    &format!("the credential of tool {:?} cannot be read", tool.name),
                ));
            }
        },
    };
    let secrets: Arc<Vec<String>> = Arc::new(ctx.shared.known_secret_values());
    let head_carries = parts.uri.to_string().as_bytes().to_vec();
    let smuggled = scan::contains_any_decoded(&head_carries, &secrets)
        || parts
            .headers
            .values()
            .any(|v| scan::contains_any_decoded(v.as_bytes(), &secrets))
        || scan::contains_any_decoded(&body, &secrets);
    if smuggled {
        return Ok(refuse(
            finish,
            StatusCode::FORBIDDEN,
            ToolVerdict::SecretInRequest,
            "the request carries a credential the gateway holds; refused",
        ));
    }
    let body = match (&tool.mcp, &parts.method) {
        (Some(rules), &http::Method::POST) => match mcp::judge(&body, rules, &mut |takes| {
            lock(&ctx.shared.gateway.buckets).take_all(
                budget_owner,
                &tool.name,
                takes,
                Instant::now(),
            )
        }) {
            mcp::Judged::Forward { body, calls } => {
                finish.mcp = calls;
                body
            }
            mcp::Judged::Refuse {
                body,
                calls,
                malformed,
            } => {
                finish.mcp = calls;
                let status = if malformed {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::FORBIDDEN
                };
                return Ok(refuse_json(finish, status, ToolVerdict::Denied, body));
            }
            mcp::Judged::Throttled { body, calls, wait } => {
                finish.mcp = calls;
                let mut r = refuse_json(
                    finish,
                    StatusCode::TOO_MANY_REQUESTS,
                    ToolVerdict::Throttled,
                    body,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after(wait)));
                return Ok(r);
            }
        },
        _ => body,
    };
    let mut secrets = secrets;
    let credential = match (&tool.credential, value) {
        (Some((secret, inject)), _) if dynamic_secret => {
            let holder = dynamic::Holder {
                cgroup_id: cgroup,
                agent: &finish.record.agent,
                instance: &finish.record.instance,
                key: &tool.name,
            };
            let leases = &ctx.shared.gateway.leases;
            match dynamic::leased(&ctx.shared, leases, &holder, secret, tool.lease_ttl, |l| l).await
            {
                Ok((lease, value)) => {
                    finish.record.lease = lease.id;
                    // The response is searched for this credential too, new as it may be.
                    if !secrets.contains(&value) {
                        let mut more = (*secrets).clone();
                        more.push(value.clone());
                        secrets = Arc::new(more);
                    }
                    Some((inject.clone(), inject.render(&value)))
                }
                Err(e) => {
                    return Ok(refuse(
                        finish,
                        StatusCode::SERVICE_UNAVAILABLE,
                        ToolVerdict::NoCredential,
                        &format!(
                            "the credential of tool {:?} cannot be issued by Vault: {e}",
                            tool.name
                        ),
                    ));
                }
            }
        }
        (Some((_, inject)), Some(value)) => {
            let (lease, new) = lock(&ctx.shared.gateway.leases).get_or_take(
                cgroup,
                &tool.name,
                tool.lease_ttl,
                Instant::now(),
                None,
            );
            if new {
                tracing::info!(lease = %lease.id, tool = %tool.name, instance = %finish.record.instance, "gateway lease taken");
            }
            finish.record.lease = lease.id;
            Some((inject.clone(), inject.render(&value)))
        }
        _ => None,
    };
    let mut uri = format!("{}{sub}", tool.url);
    if let Some(q) = &query {
        uri.push('?');
        uri.push_str(q);
    }
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    match &credential {
        Some((Inject::Header { name, .. }, rendered)) => {
            let (Ok(n), Ok(mut v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(rendered),
            ) else {
                return Ok(refuse(
                    finish,
                    StatusCode::SERVICE_UNAVAILABLE,
                    ToolVerdict::NoCredential,
                    "the credential cannot be put in a header",
                ));
            };
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        Some((Inject::Query { param, .. }, rendered)) => {
            uri.push(if query.is_some() { '&' } else { '?' });
            uri.push_str(param);
            uri.push('=');
            uri.extend(utf8_percent_encode(rendered, NON_ALPHANUMERIC));
        }
        None => {}
    }
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.headers_mut() = headers;
    match uri.parse() {
        Ok(u) => *out.uri_mut() = u,
        Err(_) => {
            return Ok(refuse(
                finish,
                StatusCode::BAD_REQUEST,
                ToolVerdict::Denied,
                "the request does not make a valid upstream URL",
            ));
        }
    }
    let resp = match ctx.client.request(out).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(tool = %tool.name, error = %e, "gateway: upstream request failed");
            return Ok(refuse(
                finish,
                StatusCode::BAD_GATEWAY,
                ToolVerdict::UpstreamError,
                &format!("the upstream of tool {:?} failed", tool.name),
            ));
        }
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let leaking: Vec<HeaderName> = parts
        .headers
        .iter()
        .filter(|(_, v)| scan::contains_any(v.as_bytes(), &secrets))
        .map(|(n, _)| n.clone())
        .collect();
    for n in leaking {
        parts.headers.remove(n);
    }
    let status = parts.status.as_u16();
    let body = Logged::new(body, finish, status, secrets).boxed();
    Ok(Response::from_parts(parts, body))
}

/// `Retry-After` for a wait, whole seconds rounded up (at least 1).
fn retry_after(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_retry_after_rounds_up() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("gw"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
        assert_eq!(retry_after(Duration::from_millis(5100)), 6);
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
    }
}
