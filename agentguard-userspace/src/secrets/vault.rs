//! An optional HashiCorp Vault / OpenBao backend: secrets read from a KV version 2 engine, and
//! dynamic secrets (a fresh credential per lease, revoked at Vault when the lease ends).
//!
//! `GET {addr}/v1/{mount}/data/{prefix}{NAME}` with `X-Vault-Token: <token file>`; the value is
//! `data.data.{field}` of the answer. The token file is read on every fetch, so a token renewed
//! or replaced by an agent of Vault's (vault agent, a cron job) is picked up without a restart.
//! https goes through rustls with the webpki roots, as the gateway's upstreams do.
//!
//! Values are cached for `cache_ttl` so that not every tool request costs a Vault round trip,
//! and so that the gateway's search for secret values in requests knows them. A value never
//! fetched is not searched for: with Vault the search covers the secrets in use, not every
//! secret Vault holds.
//!
//! A dynamic secret (`--vault-dynamic NAME=PATH[#FIELD]`) is never cached or shared: every
//! [`Vault::issue`] is `GET {addr}/v1/{PATH}` (e.g. `database/creds/ROLE`), a credential of its
//! own with Vault's `lease_id` and `lease_duration`, for one agentguard lease alone; ending that
//! lease calls [`Vault::revoke`] (`PUT {addr}/v1/sys/leases/revoke`).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::check_value;
use crate::policy::tools::valid_secret_name;

/// Largest Vault answer read.
const MAX_ANSWER: usize = 1024 * 1024;
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to read secrets from Vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultConfig {
    /// `http(s)://host:port`, no trailing `/`.
    pub addr: String,
    /// File holding the token.
    pub token_file: PathBuf,
    /// KV v2 mount (default `secret`).
    pub mount: String,
    /// Prefix below the mount, e.g. `agentguard/` (default empty).
    pub prefix: String,
    /// Field of the secret's data holding the value (default `value`).
    pub field: String,
    /// How long a fetched value is used before it is fetched again.
    pub cache_ttl: Duration,
    /// Dynamic secrets by name (`--vault-dynamic`).
    pub dynamic: BTreeMap<String, Dynamic>,
}

/// Where a dynamic secret is issued: `GET /v1/{path}`, the value at `data.{field}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dynamic {
    /// Below `/v1/`, e.g. `database/creds/readonly`.
    pub path: String,
    /// Field of the answer's `data` holding the value (default [`DEFAULT_DYNAMIC_FIELD`]).
    pub field: String,
}

/// The field of a dynamic secret's answer used when `#FIELD` is not given: the database,
/// RabbitMQ and most credential engines answer `data.username` and `data.password`, and the
/// password is what must stay out of the agent's hands.
pub const DEFAULT_DYNAMIC_FIELD: &str = "password";

/// A credential Vault issued for one lease.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The value (never logged).
    pub value: String,
    /// Vault's lease id (`database/creds/ROLE/<uuid>`): no credential by itself, it names the
    /// lease to revoke, and matches Vault's own audit log.
    pub lease_id: String,
    /// Vault's `lease_duration`; zero when Vault gave none.
    pub lease_duration: Duration,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("lease_id", &self.lease_id)
            .field("lease_duration", &self.lease_duration)
            .finish_non_exhaustive()
    }
}

/// Vault failures.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The token file could not be read.
    #[error("cannot read the Vault token file {}: {source}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request failed or took too long.
    #[error("Vault request failed: {0}")]
    Request(String),
    /// Vault answered with an error status.
    #[error("Vault answered {0}")]
    Status(StatusCode),
    /// The answer is not a KV v2 secret with the field.
    #[error("Vault's answer for {name:?} has no string field {field:?} under data.data")]
    Shape {
        /// Secret name.
        name: String,
        /// The field.
        field: String,
    },
    /// A dynamic secret's answer carries no lease, so it could never be revoked.
    #[error("Vault's answer for {0:?} has no lease_id: {1} does not issue dynamic secrets")]
    NoLease(String, String),
    /// The value is not usable (see [`check_value`]).
    #[error("Vault's value for {0:?} is not a usable secret: {1}")]
    Value(String, String),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The backend.
pub struct Vault {
    cfg: VaultConfig,
    client: HttpsClient,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("cfg", &self.cfg).finish()
    }
}

impl Vault {
    /// A backend for `cfg` (nothing is contacted yet).
    pub fn new(cfg: VaultConfig) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            cfg,
            client: Client::builder(TokioExecutor::new()).build(https),
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every value fetched and still cached, for the gateway's search for secrets in requests.
    pub fn cached_values(&self) -> Vec<String> {
        self.cache().values().map(|(v, _)| v.clone()).collect()
    }

    /// The value of `name`: cached, or fetched. `Ok(None)`: Vault has no such secret.
    pub async fn get(&self, name: &str) -> Result<Option<String>, VaultError> {
        if !valid_secret_name(name) {
            return Ok(None);
        }
        let now = Instant::now();
        if let Some((v, at)) = self.cache().get(name)
            && now.saturating_duration_since(*at) < self.cfg.cache_ttl
        {
            return Ok(Some(v.clone()));
        }
        let fetched = self.fetch(name).await;
        match fetched {
            Ok(Some(v)) => {
                self.cache().insert(name.to_owned(), (v.clone(), now));
                Ok(Some(v))
            }
            Ok(None) => {
                self.cache().remove(name);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `name` is a dynamic secret (`--vault-dynamic`).
    pub fn is_dynamic(&self, name: &str) -> bool {
        self.cfg.dynamic.contains_key(name)
    }

    /// A fresh credential for dynamic secret `name`, for one lease alone (never cached).
    pub async fn issue(&self, name: &str) -> Result<Issued, VaultError> {
        let Some(dynamic) = self.cfg.dynamic.get(name) else {
            return Err(VaultError::Request(format!(
                "{name:?} is not a dynamic secret"
            )));
        };
        let req = self.request(http::Method::GET, &dynamic.path, Bytes::new())?;
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            return Err(VaultError::Status(status));
        }
        parse_issued(name, &dynamic.field, &body).and_then(|i| {
            if i.lease_id.is_empty() {
                Err(VaultError::NoLease(name.to_owned(), dynamic.path.clone()))
            } else {
                Ok(i)
            }
        })
    }

    /// Revokes a lease [`Vault::issue`] took: the credential stops working at its source.
    pub async fn revoke(&self, lease_id: &str) -> Result<(), VaultError> {
        let body = serde_json::json!({ "lease_id": lease_id }).to_string();
        let req = self.request(http::Method::PUT, "sys/leases/revoke", Bytes::from(body))?;
        let (status, _) = self.send(req).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(VaultError::Status(status))
        }
    }

    /// A request to `{addr}/v1/{path}` carrying the token file's token.
    fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, VaultError> {
        let token =
            std::fs::read_to_string(&self.cfg.token_file).map_err(|source| VaultError::Token {
                path: self.cfg.token_file.clone(),
                source,
            })?;
        let mut token = http::HeaderValue::from_str(token.trim())
            .map_err(|_| VaultError::Request("the token is not a valid header value".into()))?;
        token.set_sensitive(true);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}/v1/{path}", self.cfg.addr))
            .header("x-vault-token", token);
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        req.body(Full::new(body))
            .map_err(|e| VaultError::Request(e.to_string()))
    }

    /// Sends `req` and reads the answer within [`FETCH_TIMEOUT`]: the status and (for a
    /// success) the body, at most [`MAX_ANSWER`] bytes.
    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), VaultError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.exchange(req))
            .await
            .map_err(|_| VaultError::Request(format!("no answer within {FETCH_TIMEOUT:?}")))?
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), VaultError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| VaultError::Request(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Ok((status, Bytes::new()));
        }
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| VaultError::Request(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    async fn fetch(&self, name: &str) -> Result<Option<String>, VaultError> {
        let path = format!("{}/data/{}{name}", self.cfg.mount, self.cfg.prefix);
        let req = self.request(http::Method::GET, &path, Bytes::new())?;
        let (status, body) = self.send(req).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(VaultError::Status(status));
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| VaultError::Shape {
                name: name.to_owned(),
                field: self.cfg.field.clone(),
            })?;
        let value = answer["data"]["data"][&self.cfg.field]
            .as_str()
            .ok_or_else(|| VaultError::Shape {
                name: name.to_owned(),
                field: self.cfg.field.clone(),
            })?;
        check_value(value).map_err(|e| VaultError::Value(name.to_owned(), e.to_string()))?;
        Ok(Some(value.to_owned()))
    }
}

/// A dynamic secret's answer: `data.{field}`, `lease_id`, `lease_duration`.
fn parse_issued(name: &str, field: &str, body: &[u8]) -> Result<Issued, VaultError> {
    let shape = || VaultError::Shape {
        name: name.to_owned(),
        field: field.to_owned(),
    };
    let answer: serde_json::Value = serde_json::from_slice(body).map_err(|_| shape())?;
    let value = answer["data"][field].as_str().ok_or_else(shape)?;
    check_value(value).map_err(|e| VaultError::Value(name.to_owned(), e.to_string()))?;
    Ok(Issued {
        value: value.to_owned(),
        lease_id: answer["lease_id"].as_str().unwrap_or_default().to_owned(),
        lease_duration: Duration::from_secs(answer["lease_duration"].as_u64().unwrap_or(0)),
    })
}

/// Parses one `--vault-dynamic NAME=PATH[#FIELD]`.
pub fn parse_dynamic(s: &str) -> Result<(String, Dynamic), String> {
    let Some((name, rest)) = s.split_once('=') else {
        return Err(format!(
            "{s:?}: use NAME=MOUNT/creds/ROLE[#FIELD], e.g. db=database/creds/readonly#password"
        ));
    };
    if !valid_secret_name(name) {
        return Err(format!(
            "{s:?}: secret name {name:?}: use 1 to 64 letters, digits, '-', '_' and '.'"
        ));
    }
    let (path, field) = match rest.split_once('#') {
        Some((p, f)) => (p, f),
        None => (rest, DEFAULT_DYNAMIC_FIELD),
    };
    let path = path.trim_matches('/');
    let plain = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if path.split('/').count() < 2 || !path.split('/').all(plain) {
        return Err(format!(
            "{s:?}: the path {path:?} must be MOUNT/creds/ROLE (segments of letters, digits, \
             '-', '_' and '.', below /v1/)"
        ));
    }
    if path.starts_with("sys/") || path.split('/').nth(1) == Some("data") {
        return Err(format!(
            "{s:?}: {path:?} is no dynamic secret engine's path (KV secrets go by --vault-mount)"
        ));
    }
    if field.is_empty() || !plain(field) {
        return Err(format!(
            "{s:?}: the field {field:?} must be a name of letters, digits, '-', '_' and '.'"
        ));
    }
    Ok((
        name.to_owned(),
        Dynamic {
            path: path.to_owned(),
            field: field.to_owned(),
        },
    ))
}

/// Parses `--vault-addr`: `http(s)://host[:port]`, no path, no credentials.
pub fn parse_addr(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "{s:?}: use https://HOST:PORT (or http:// on loopback)"
        ));
    }
    let Some(auth) = uri.authority() else {
        return Err(format!("{s:?} has no host"));
    };
    if auth.as_str().contains('@') {
        return Err(format!("{s:?}: the token goes in --vault-token-file"));
    }
    let loopback = matches!(
        auth.host().trim_start_matches('[').trim_end_matches(']'),
        "localhost" | "127.0.0.1" | "::1"
    );
    if uri.scheme_str() == Some("http") && !loopback {
        return Err(format!(
            "{s:?}: plain http would send the token in clear; use https (http only on loopback)"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{s:?}: give the address only, no path"));
    }
    Ok(format!("{}://{auth}", uri.scheme_str().unwrap_or("https")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_addr("https://vault.example:8200/").as_deref(),
            Ok("https://vault.example:8200")
        );
        assert!(parse_addr("vault:8200").is_err());
        assert!(parse_addr("http://vault.example:8200").is_err());
        assert!(parse_addr("http://127.0.0.1:8200").is_ok());
        assert!(parse_addr("https://t@vault:8200").is_err());
        assert!(parse_addr("https://vault:8200/v1/secret").is_err());
    }

    #[test]
    fn dynamic_flags_parse() {
        let d = |p: &str, f: &str| Dynamic {
            path: p.into(),
            field: f.into(),
        };
        assert_eq!(
            parse_dynamic("db=database/creds/readonly"),
            Ok(("db".into(), d("database/creds/readonly", "password")))
        );
        assert_eq!(
            parse_dynamic("api=/apikeys/creds/market/#value"),
            Ok(("api".into(), d("apikeys/creds/market", "value")))
        );
        for bad in [
            "database/creds/readonly",
            "bad name=database/creds/ro",
            "db=database",
            "db=database/../sys/x",
            "db=database//ro",
            "db=database/creds/ro?x=1",
            "db=database/creds/ro#",
            "db=database/creds/ro#a b",
            "db=sys/leases/lookup",
            "db=secret/data/x",
        ] {
            assert!(parse_dynamic(bad).is_err(), "{bad}");
        }
        assert!(parse_dynamic("db=database").is_err_and(|e| e.contains("MOUNT/creds/ROLE")),);
    }

    #[test]
    fn issued_answers_parse() {
        let db = br#"{"request_id":"r","lease_id":"database/creds/ro/AbC","renewable":true,
            "lease_duration":3600,"data":{"username":"v-token-ro-x1","password":"A1a-pw-0123456"}}"#;
        let i = parse_issued("db", "password", db).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(i.value, "A1a-pw-0123456");
        assert_eq!(i.lease_id, "database/creds/ro/AbC");
        assert_eq!(i.lease_duration, Duration::from_secs(3600));
        assert!(
            !format!("{i:?}").contains("A1a-pw"),
            "Debug shows the value"
        );
        // Another field; an answer without it, a short value, no JSON.
        let user = parse_issued("db", "username", db).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(user.value, "v-token-ro-x1");
        assert!(matches!(
            parse_issued("db", "value", db),
            Err(VaultError::Shape { .. })
        ));
        assert!(matches!(
            parse_issued(
                "db",
                "password",
                br#"{"lease_id":"l","data":{"password":"short"}}"#
            ),
            Err(VaultError::Value(..))
        ));
        assert!(parse_issued("db", "password", b"<html>").is_err());
        // No lease: parsed, refused by issue.
        let kv = parse_issued(
            "db",
            "password",
            br#"{"data":{"password":"long-enough-1"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(kv.lease_id.is_empty());
        assert_eq!(kv.lease_duration, Duration::ZERO);
    }
}
