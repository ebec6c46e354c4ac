//! An optional HashiCorp Vault / OpenBao backend: secrets read from a KV version 2 engine.
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

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
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
    /// The value is not usable (see [`check_value`]).
    #[error("Vault's value for {0:?} is not a usable secret: {1}")]
    Value(String, String),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

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
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch(name))
            .await
            .map_err(|_| VaultError::Request(format!("no answer within {FETCH_TIMEOUT:?}")))?;
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

    async fn fetch(&self, name: &str) -> Result<Option<String>, VaultError> {
        let token =
            std::fs::read_to_string(&self.cfg.token_file).map_err(|source| VaultError::Token {
                path: self.cfg.token_file.clone(),
                source,
            })?;
        let url = format!(
            "{}/v1/{}/data/{}{name}",
            self.cfg.addr, self.cfg.mount, self.cfg.prefix
        );
        let mut token = http::HeaderValue::from_str(token.trim())
            .map_err(|_| VaultError::Request("the token is not a valid header value".into()))?;
        token.set_sensitive(true);
        let req = Request::get(url)
            .header("x-vault-token", token)
            .body(Empty::new())
            .map_err(|e| VaultError::Request(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| VaultError::Request(e.to_string()))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(VaultError::Status(status));
        }
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| VaultError::Request(e.to_string()))?
            .to_bytes();
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
}
