//! `[tools.NAME]`: the tool registry the gateway serves (see [`crate::gateway`]).
//!
//! A tool is an upstream HTTP API, the secret injected into every request forwarded to it, and
//! the request-level rules (methods, path prefixes, a per-instance rate, a body limit). Agents
//! name the tools they may call in `tools = [...]`; a sub-agent's list is a subset of its
//! parent's.

use std::{fmt, time::Duration};

use toml::Spanned;

use super::{Diagnostic, Location, Source, schema::RawTool, throttle::Rate};

/// Default largest request body.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
/// Largest `max_body` accepted: the gateway holds a body in memory to inspect it.
pub const MAX_MAX_BODY: u64 = 64 * 1024 * 1024;
/// Default lease lifetime.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15 * 60);
/// The placeholder a template must contain.
pub const SECRET_PLACEHOLDER: &str = "{secret}";

/// Where the credential goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inject {
    /// A request header, set (replacing whatever the agent sent under that name).
    Header {
        /// Header name, lower case.
        name: String,
        /// Value with `{secret}` in it.
        template: String,
    },
    /// A query parameter, appended (a parameter of that name from the agent is refused).
    Query {
        /// Parameter name.
        param: String,
        /// Value with `{secret}` in it.
        template: String,
    },
}

impl Inject {
    /// The rendered value for a secret.
    pub fn render(&self, secret: &str) -> String {
        match self {
            Self::Header { template, .. } | Self::Query { template, .. } => {
                template.replace(SECRET_PLACEHOLDER, secret)
            }
        }
    }
}

impl fmt::Display for Inject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header { name, template } => write!(f, "header:{name}: {template}"),
            Self::Query { param, template } => write!(f, "query:{param}={template}"),
        }
    }
}

/// JSON-RPC methods an MCP tool allows when `mcp_methods` is not given: the session's
/// lifecycle, `ping`, listing tools and calling the ones `mcp_tools` names.
pub const DEFAULT_MCP_METHODS: [&str; 6] = [
    "initialize",
    "notifications/initialized",
    "notifications/cancelled",
    "ping",
    "tools/list",
    "tools/call",
];

/// An MCP tool `tools/call` may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpTool {
    /// Its name (exact, case-sensitive).
    pub name: String,
    /// Calls per instance, on top of the tool's `rate` (which counts HTTP requests).
    pub rate: Option<Rate>,
}

/// What an MCP tool's calls may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpRules {
    /// JSON-RPC methods allowed (exact, case-sensitive).
    pub methods: Vec<String>,
    /// Tools `tools/call` may name.
    pub tools: Vec<McpTool>,
}

impl McpRules {
    /// The MCP tool `name`, if allowed.
    pub fn tool(&self, name: &str) -> Option<&McpTool> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// Whether an MCP method or tool name is acceptable.
fn valid_mcp_name(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && !v.chars().any(char::is_control)
}

/// A validated tool.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// Name (`[tools.NAME]`).
    pub name: String,
    /// Upstream scheme, authority and base path (no trailing `/`), e.g. `https://api.example/v2`.
    pub url: String,
    /// The secret and where it goes; `None` forwards without a credential.
    pub credential: Option<(String, Inject)>,
    /// Allowed methods, upper case.
    pub methods: Vec<String>,
    /// Allowed path prefixes, each starting with `/`, matched on whole segments.
    pub paths: Vec<String>,
    /// Requests per instance.
    pub rate: Option<Rate>,
    /// Largest request body in bytes.
    pub max_body: u64,
    /// Lease lifetime.
    pub lease_ttl: Duration,
    /// For `protocol = "mcp"`: the JSON-RPC rules.
    pub mcp: Option<McpRules>,
    /// Where it was declared.
    pub at: Location,
}

impl Tool {
    /// Whether `method` is allowed.
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    /// Whether `path` (already checked by [`path_is_plain`]) is under an allowed prefix: equal
    /// to it, or below it on a segment boundary (`/v1/quotes` allows `/v1/quotes/7`, never
    /// `/v1/quotesX`).
    pub fn allows_path(&self, path: &str) -> bool {
        self.paths.iter().any(|p| {
            path == p
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| p.ends_with('/') || rest.starts_with('/'))
        })
    }
}

/// Whether a request path is plain enough to judge by prefix: no `.`/`..` segments, no empty
/// segments, no percent-encoded `.`, `/` or `\` (which an upstream may decode into a traversal
/// after the prefix check passed), no backslashes.
pub fn path_is_plain(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') || path.contains("//") {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return false;
    }
    !path.split('/').any(|seg| seg == "." || seg == "..")
}

/// Tool names follow agent names' rules.
fn valid_tool_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Secret names: what `agentguard secret set` accepts.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.')
}

/// Parses `"64KiB"`, `"1MiB"`, `"512"` (bytes), `"10KB"`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses `"30s"`, `"15min"`, `"1h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "s" => n,
        "min" | "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Parses an `inject` value.
fn parse_inject(s: &str) -> Result<Inject, String> {
    let count = s.matches(SECRET_PLACEHOLDER).count();
    if count != 1 {
        return Err(format!(
            "the template must contain {SECRET_PLACEHOLDER} exactly once"
        ));
    }
    if let Some(rest) = s.strip_prefix("header:") {
        let (name, template) = rest
            .split_once(':')
            .ok_or("expected header:NAME: TEMPLATE")?;
        let name = name.trim();
        let hn = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        if matches!(
            hn.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            return Err(format!("header {name:?} cannot carry a credential"));
        }
        let template = template.trim().to_owned();
        if http::HeaderValue::from_str(&template.replace(SECRET_PLACEHOLDER, "x")).is_err() {
            return Err("the header template has characters a header value cannot".into());
        }
        Ok(Inject::Header {
            name: hn.as_str().to_owned(),
            template,
        })
    } else if let Some(rest) = s.strip_prefix("query:") {
        let (param, template) = rest
            .split_once('=')
            .ok_or("expected query:PARAM=TEMPLATE")?;
        let param = param.trim();
        if param.is_empty()
            || !param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!("invalid query parameter name {param:?}"));
        }
        Ok(Inject::Query {
            param: param.to_owned(),
            template: template.trim().to_owned(),
        })
    } else {
        Err("expected \"header:NAME: TEMPLATE\" or \"query:PARAM=TEMPLATE\"".into())
    }
}

/// Parses an upstream URL into `scheme://authority[/base]` without a trailing `/`.
fn parse_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.trim().parse().map_err(|e| format!("invalid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("the URL must start with http:// or https://".into()),
    }
    let Some(auth) = uri.authority() else {
        return Err("the URL has no host".into());
    };
    if auth.as_str().contains('@') {
        return Err("put credentials in a secret, not in the URL".into());
    }
    if uri.query().is_some() {
        return Err("the URL must not have a query".into());
    }
    let base = uri.path().trim_end_matches('/');
    Ok(format!(
        "{}://{}{base}",
        uri.scheme_str().unwrap_or("https"),
        auth
    ))
}

/// `protocol`, `mcp_methods` and `mcp_tools`: the MCP rules, or `None` for a plain HTTP tool.
fn mcp_rules(
    field: &str,
    t: &RawTool,
    err: &mut impl FnMut(std::ops::Range<usize>, String, String),
) -> Option<McpRules> {
    // `None` for an unknown protocol: reported once, not again for every mcp_ entry.
    let is_mcp = match &t.protocol {
        None => Some(false),
        Some(p) => match p.get_ref().as_str() {
            "http" => Some(false),
            "mcp" => Some(true),
            other => {
                err(
                    p.span(),
                    format!("{field}.protocol"),
                    format!("unknown protocol {other:?}: \"http\" or \"mcp\""),
                );
                None
            }
        },
    };
    let mut methods = Vec::new();
    for (i, e) in t.mcp_methods.iter().enumerate() {
        let f = format!("{field}.mcp_methods[{i}]");
        let v = e.get_ref();
        if is_mcp == Some(false) {
            err(e.span(), f, "mcp_methods needs protocol = \"mcp\"".into());
        } else if !valid_mcp_name(v) {
            err(e.span(), f, format!("invalid name {v:?}"));
        } else if methods.contains(v) {
            err(e.span(), f, format!("duplicate {v:?}"));
        } else {
            methods.push(v.clone());
        }
    }
    if t.mcp_methods.is_empty() {
        methods = DEFAULT_MCP_METHODS.map(str::to_owned).to_vec();
    }
    let mut tools: Vec<McpTool> = Vec::new();
    for (i, e) in t.mcp_tools.iter().enumerate() {
        let f = format!("{field}.mcp_tools[{i}]");
        let v = e.get_ref().name();
        if is_mcp == Some(false) {
            err(e.span(), f, "mcp_tools needs protocol = \"mcp\"".into());
            continue;
        }
        if !valid_mcp_name(v) {
            err(e.span(), f, format!("invalid name {v:?}"));
            continue;
        }
        if tools.iter().any(|t| t.name == v) {
            err(e.span(), f, format!("duplicate {v:?}"));
            continue;
        }
        let rate = match e.get_ref().rate().map(str::parse::<Rate>) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(m)) => {
                err(
                    e.span(),
                    format!("{f}.rate"),
                    format!(
                        "invalid rate {:?}: {m}",
                        e.get_ref().rate().unwrap_or_default()
                    ),
                );
                continue;
            }
        };
        tools.push(McpTool {
            name: v.to_owned(),
            rate,
        });
    }
    (is_mcp == Some(true)).then_some(McpRules { methods, tools })
}

/// Validates every `[tools.NAME]`.
pub fn validate(
    src: &Source<'_>,
    raw: &std::collections::BTreeMap<Spanned<String>, Spanned<RawTool>>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Tool> {
    let mut out = Vec::new();
    for (name, tool) in raw {
        let field = format!("tools.{}", name.get_ref());
        let mut err = |span: std::ops::Range<usize>, f: String, m: String| {
            diags.push(src.diag(span, f, m));
        };
        if !valid_tool_name(name.get_ref()) {
            err(
                name.span(),
                field.clone(),
                format!(
                    "invalid tool name {:?}: use 1 to 32 characters a-z, 0-9, '-' and '_', starting with a letter",
                    name.get_ref()
                ),
            );
        }
        let t = tool.get_ref();
        let url = match &t.url {
            None => {
                err(
                    tool.span(),
                    format!("{field}.url"),
                    "a tool needs url = \"https://...\"".into(),
                );
                None
            }
            Some(u) => parse_url(u.get_ref())
                .map_err(|m| err(u.span(), format!("{field}.url"), m))
                .ok(),
        };
        let credential = match (&t.credential, &t.inject) {
            (None, None) => Some(None),
            (Some(c), Some(i)) => {
                let name_ok = valid_secret_name(c.get_ref());
                if !name_ok {
                    err(
                        c.span(),
                        format!("{field}.credential"),
                        format!(
                            "invalid secret name {:?}: use letters, digits, '-', '_' and '.'",
                            c.get_ref()
                        ),
                    );
                }
                match parse_inject(i.get_ref()) {
                    Ok(inj) if name_ok => Some(Some((c.get_ref().clone(), inj))),
                    Ok(_) => None,
                    Err(m) => {
                        err(i.span(), format!("{field}.inject"), m);
                        None
                    }
                }
            }
            (Some(c), None) => {
                err(
                    c.span(),
                    format!("{field}.inject"),
                    "a credential needs inject = \"header:...\" or \"query:...\"".into(),
                );
                None
            }
            (None, Some(i)) => {
                err(
                    i.span(),
                    format!("{field}.credential"),
                    "inject needs credential = \"SECRET-NAME\"".into(),
                );
                None
            }
        };
        let mut methods = Vec::new();
        for (i, m) in t.methods.iter().enumerate() {
            let up = m.get_ref().trim().to_ascii_uppercase();
            if http::Method::from_bytes(up.as_bytes()).is_err() || up.is_empty() {
                err(
                    m.span(),
                    format!("{field}.methods[{i}]"),
                    format!("invalid method {:?}", m.get_ref()),
                );
            } else if methods.contains(&up) {
                err(
                    m.span(),
                    format!("{field}.methods[{i}]"),
                    format!("duplicate method {up}"),
                );
            } else {
                methods.push(up);
            }
        }
        if t.methods.is_empty() {
            methods = vec!["GET".to_owned(), "HEAD".to_owned()];
        }
        let mut paths = Vec::new();
        for (i, p) in t.paths.iter().enumerate() {
            let text = p.get_ref().trim();
            if !path_is_plain(text) {
                err(
                    p.span(),
                    format!("{field}.paths[{i}]"),
                    format!(
                        "invalid path prefix {text:?}: start with '/', no '.', '..' or empty segments, no percent-encoded '.', '/' or '\\'"
                    ),
                );
            } else if paths.iter().any(|q| q == text) {
                err(
                    p.span(),
                    format!("{field}.paths[{i}]"),
                    format!("duplicate path {text:?}"),
                );
            } else {
                paths.push(text.to_owned());
            }
        }
        if t.paths.is_empty() {
            err(
                tool.span(),
                format!("{field}.paths"),
                "a tool needs paths = [\"/PREFIX\", ...] (use [\"/\"] to allow every path)".into(),
            );
        }
        let rate = t.rate.as_ref().and_then(|r| {
            r.get_ref()
                .parse::<Rate>()
                .map_err(|e| {
                    err(
                        r.span(),
                        format!("{field}.rate"),
                        format!("invalid rate {:?}: {e}", r.get_ref()),
                    );
                })
                .ok()
        });
        let max_body = match &t.max_body {
            None => DEFAULT_MAX_BODY,
            Some(b) => match parse_size(b.get_ref()) {
                Some(n) if n <= MAX_MAX_BODY => n,
                _ => {
                    err(
                        b.span(),
                        format!("{field}.max_body"),
                        format!(
                            "invalid size {:?}: a number with B, KiB, MiB, KB or MB, at most 64MiB",
                            b.get_ref()
                        ),
                    );
                    DEFAULT_MAX_BODY
                }
            },
        };
        let lease_ttl = match &t.lease_ttl {
            None => DEFAULT_LEASE_TTL,
            Some(d) => parse_duration(d.get_ref()).unwrap_or_else(|| {
                err(
                    d.span(),
                    format!("{field}.lease_ttl"),
                    format!(
                        "invalid duration {:?}: e.g. \"30s\", \"15min\", \"1h\"",
                        d.get_ref()
                    ),
                );
                DEFAULT_LEASE_TTL
            }),
        };
        let mcp = mcp_rules(&field, t, &mut err);
        if mcp.is_some() && t.methods.is_empty() {
            // Streamable HTTP: POST carries calls, GET opens the server's stream, DELETE ends
            // the session.
            methods = vec!["POST".to_owned(), "GET".to_owned(), "DELETE".to_owned()];
        }
        let (line, column) = src.locate(name.span().start);
        if let (Some(url), Some(credential)) = (url, credential) {
            out.push(Tool {
                name: name.get_ref().clone(),
                url,
                credential,
                methods,
                paths,
                rate,
                max_body,
                lease_ttl,
                mcp,
                at: Location {
                    line,
                    column,
                    field,
                },
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_on_segment_boundaries_and_reject_traversal() {
        let t = Tool {
            name: "t".into(),
            url: "http://x".into(),
            credential: None,
            methods: vec!["GET".into()],
            paths: vec!["/v1/quotes".into(), "/open/".into()],
            rate: None,
            max_body: 1,
            lease_ttl: DEFAULT_LEASE_TTL,
            mcp: None,
            at: Location {
                line: 1,
                column: 1,
                field: "tools.t".into(),
            },
        };
        assert!(t.allows_path("/v1/quotes"));
        assert!(t.allows_path("/v1/quotes/7"));
        assert!(!t.allows_path("/v1/quotesX"));
        assert!(!t.allows_path("/v1/orders"));
        assert!(t.allows_path("/open/anything"));
        for bad in [
            "/v1/quotes/../orders",
            "/v1/quotes/%2e%2e/orders",
            "/v1/quotes%2F..%2Forders",
            "/v1//quotes",
            "/v1/quotes/.",
            "v1",
            "/a\\b",
        ] {
            assert!(!path_is_plain(bad), "{bad}");
        }
        assert!(path_is_plain("/v1/quotes/7"));
    }

    #[test]
    fn sizes_durations_and_injections_parse() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1GiB"), None);
        assert_eq!(parse_duration("15min"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(
            parse_inject("header:Authorization: Bearer {secret}"),
            Ok(Inject::Header {
                name: "authorization".into(),
                template: "Bearer {secret}".into()
            })
        );
        assert_eq!(
            parse_inject("query:api_key={secret}"),
            Ok(Inject::Query {
                param: "api_key".into(),
                template: "{secret}".into()
            })
        );
        assert!(parse_inject("header:Authorization: Bearer").is_err());
        assert!(parse_inject("header:Host: {secret}").is_err());
        assert!(parse_inject("cookie:x={secret}").is_err());
        assert_eq!(
            parse_url("https://api.example.com/v2/").as_deref(),
            Ok("https://api.example.com/v2")
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("https://user:pw@x").is_err());
    }
}
