//! Validation: raw TOML structs -> [`Policy`], or every problem found, each naming its field.

use std::{
    collections::{HashMap, HashSet},
    path::{Component, Path, PathBuf},
    str::FromStr,
};

use agentguard_common::{
    agent::{OnExceed, ThrottleKind, ThrottleScope},
    rules::PATH_KEY_LEN,
};
use toml::Spanned;

use super::{
    Agent, Diagnostic, Located, Location, Mode, PathRule, Policy, Source, agent_id,
    net::{NetEntry, NetTarget, net_within},
    presets, runtime,
    schema::{OnExceedRaw, RawAgent, RawPolicy, RawPreset, RawThrottle, Scope},
    throttle::{DEFAULT_BURST, Limit, Rate},
    unix::{self, UnixAddr},
};

/// Longest path a rule may name: the kernel key holds [`PATH_KEY_LEN`] bytes including the
/// trailing `/` a prefix is stored with, and lookups need one byte more.
pub const MAX_RULE_PATH: usize = PATH_KEY_LEN - 2;

/// Validates a parsed policy file, expanding presets on the running host.
pub fn validate(src: &Source<'_>, raw: &RawPolicy) -> Result<Policy, Vec<Diagnostic>> {
    validate_on(src, raw, &presets::SystemHost)
}

/// [`validate`] with presets expanded on `host`.
pub fn validate_on(
    src: &Source<'_>,
    raw: &RawPolicy,
    host: &dyn presets::Host,
) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let tools = super::tools::validate(src, &raw.tools, &mut diags);
    let mut v = Validator {
        src,
        host,
        diags,
        agents: Vec::new(),
        tool_names: raw.tools.keys().map(|k| k.get_ref().clone()).collect(),
    };
    for (name, agent) in &raw.agents {
        v.agent(name, agent, None);
    }
    v.check_ids();
    if v.diags.is_empty() {
        Ok(Policy {
            agents: v.agents,
            tools,
            digest: *blake3::hash(src.text.as_bytes()).as_bytes(),
            origin: src.name.to_owned(),
        })
    } else {
        Err(v.diags)
    }
}

struct Validator<'a> {
    src: &'a Source<'a>,
    host: &'a dyn presets::Host,
    diags: Vec<Diagnostic>,
    agents: Vec<Agent>,
    /// Every declared tool name (valid or not, so a bad tool is reported once, at the tool).
    tool_names: HashSet<String>,
}

/// Agent and sub-agent names: what fits in a cgroup directory name and a CLI argument, and never
/// all digits (instances are numbered).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Validator<'_> {
    fn error<T>(&mut self, at: &Spanned<T>, field: impl Into<String>, msg: impl Into<String>) {
        self.diags.push(self.src.diag(at.span(), field, msg));
    }

    fn location<T>(&self, at: &Spanned<T>, field: String) -> Location {
        let (line, column) = self.src.locate(at.span().start);
        Location {
            line,
            column,
            field,
        }
    }

    fn agent(&mut self, name: &Spanned<String>, raw: &Spanned<RawAgent>, parent: Option<usize>) {
        let (full, field) = match parent {
            Some(p) => (
                format!("{}/{}", self.agents[p].name, name.get_ref()),
                format!(
                    "{}.sub.{}",
                    agent_field(&self.agents[p].name),
                    name.get_ref()
                ),
            ),
            None => (name.get_ref().clone(), format!("agents.{}", name.get_ref())),
        };
        if !valid_name(name.get_ref()) {
            self.error(
                name,
                field.clone(),
                format!(
                    "invalid agent name {:?}: use 1 to 32 characters a-z, 0-9, '-' and '_', starting with a letter",
                    name.get_ref()
                ),
            );
        }
        let r = raw.get_ref();
        let parent_agent = parent.map(|p| self.agents[p].clone());
        let mode = r.mode.as_ref().map_or_else(
            || parent_agent.as_ref().map_or(Mode::Enforce, |p| p.mode),
            |m| *m.get_ref(),
        );
        let mut exec = self.exec(&field, &r.exec);
        let mut read = self.paths(&field, "read", &r.read);
        let write = self.paths(&field, "write", &r.write);
        let presets = self.presets(&field, &r.presets, &mut exec, &mut read);
        let private_tmp = match (&r.private_tmp, &parent_agent) {
            (Some(b), _) => *b.get_ref(),
            (None, Some(p)) => p.private_tmp,
            (None, None) => true,
        };
        let mut agent = Agent {
            id: agent_id(&full),
            name: full,
            parent: parent_agent.as_ref().map(|p| p.name.clone()),
            mode,
            log_allowed: r.log_allowed.as_ref().is_none_or(|b| *b.get_ref()),
            dns: r.dns.as_ref().is_some_and(|b| *b.get_ref()),
            connect: self.connect(&field, &r.connect),
            unix: self.unix(&field, &r.connect),
            exec,
            read,
            write,
            presets,
            private_tmp,
            capabilities: self.capabilities(&field, &r.capabilities),
            user: self.user(&field, r.user.as_ref(), parent.is_some()),
            allow_syscalls: self.allow_syscalls(&field, &r.allow_syscalls),
            limits: r
                .throttle
                .as_ref()
                .map(|t| self.throttle(&format!("{field}.throttle"), t))
                .unwrap_or_default(),
            max_instances: r
                .max_instances
                .as_ref()
                .and_then(|m| self.max_instances(&field, m)),
            tools: self.tools(&field, &r.tools),
            credentials: self.credentials(&field, &r.credentials),
            credential_ttl: self.credential_ttl(
                &field,
                r.credential_ttl.as_ref(),
                parent_agent.as_ref(),
            ),
        };
        if agent.restricts_files() {
            // Every process opens these; they reach nothing but themselves (see runtime.rs).
            let at = Location {
                field: format!("{field}.<devices>"),
                ..self.location(name, String::new())
            };
            for (list, paths) in [
                (&mut agent.read, runtime::DEVICES_READ),
                (&mut agent.write, runtime::DEVICES_WRITE),
            ] {
                for p in paths {
                    let rule = PathRule::Prefix(PathBuf::from(p));
                    if !list.iter().any(|r| r.value == rule) {
                        list.push(Located {
                            value: rule,
                            at: at.clone(),
                        });
                    }
                }
            }
        }
        if let Some(p) = &parent_agent {
            self.within_parent(&field, r, &agent, p);
        }
        self.agents.push(agent);
        let me = self.agents.len() - 1;
        for (sub_name, sub) in &r.sub {
            self.agent(sub_name, sub, Some(me));
        }
    }

    fn tools(&mut self, field: &str, entries: &[Spanned<String>]) -> Vec<Located<String>> {
        let mut out: Vec<Located<String>> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let f = format!("{field}.tools[{i}]");
            let name = e.get_ref().trim();
            if !self.tool_names.contains(name) {
                let mut known: Vec<&str> = self.tool_names.iter().map(String::as_str).collect();
                known.sort_unstable();
                self.error(
                    e,
                    f,
                    format!(
                        "unknown tool {name:?} (declared with [tools.NAME]: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            } else if out.iter().any(|o| o.value == name) {
                self.error(e, f, format!("duplicate tool {name:?}"));
            } else {
                out.push(Located {
                    value: name.to_owned(),
                    at: self.location(e, f),
                });
            }
        }
        out
    }

    fn credentials(&mut self, field: &str, entries: &[Spanned<String>]) -> Vec<Located<String>> {
        let mut out: Vec<Located<String>> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let f = format!("{field}.credentials[{i}]");
            let name = e.get_ref().trim();
            if !super::tools::valid_secret_name(name) {
                self.error(
                    e,
                    f,
                    format!("invalid secret name {name:?}: use 1 to 64 letters, digits, '-', '_' and '.'"),
                );
            } else if out.iter().any(|o| o.value == name) {
                self.error(e, f, format!("duplicate credential {name:?}"));
            } else {
                out.push(Located {
                    value: name.to_owned(),
                    at: self.location(e, f),
                });
            }
        }
        out
    }

    /// `credential_ttl`: given, or the parent's, or the default.
    fn credential_ttl(
        &mut self,
        field: &str,
        raw: Option<&Spanned<String>>,
        parent: Option<&Agent>,
    ) -> std::time::Duration {
        let inherited = parent.map_or(super::tools::DEFAULT_LEASE_TTL, |p| p.credential_ttl);
        let Some(d) = raw else {
            return inherited;
        };
        match super::tools::parse_duration(d.get_ref()) {
            None => {
                self.error(
                    d,
                    format!("{field}.credential_ttl"),
                    format!(
                        "invalid duration {:?}: e.g. \"30s\", \"15min\", \"1h\"",
                        d.get_ref()
                    ),
                );
                inherited
            }
            Some(ttl) if parent.is_some() && ttl > inherited => {
                self.error(
                    d,
                    format!("{field}.credential_ttl"),
                    format!(
                        "a sub-agent's credential_ttl cannot be longer than its parent's ({}s)",
                        inherited.as_secs()
                    ),
                );
                inherited
            }
            Some(ttl) => ttl,
        }
    }

    fn max_instances(&mut self, field: &str, m: &Spanned<i64>) -> Option<u32> {
        let limit = agentguard_common::maps::MAX_CGROUPS;
        match u32::try_from(*m.get_ref()) {
            Ok(n) if (1..=limit).contains(&n) => Some(n),
            _ => {
                self.error(
                    m,
                    format!("{field}.max_instances"),
                    format!("must be between 1 and {limit}, not {}", m.get_ref()),
                );
                None
            }
        }
    }

    fn connect(&mut self, field: &str, entries: &[Spanned<String>]) -> Vec<Located<NetEntry>> {
        let mut out: Vec<Located<NetEntry>> = Vec::new();
        let mut seen = HashSet::new();
        for (i, e) in entries.iter().enumerate() {
            if e.get_ref().trim_start().starts_with(unix::PREFIX) {
                continue;
            }
            let f = format!("{field}.connect[{i}]");
            match e.get_ref().parse::<NetEntry>() {
                Ok(entry) if !seen.insert(entry.clone()) => {
                    self.error(e, f, format!("duplicate entry {:?}", e.get_ref()));
                }
                Ok(entry) => out.push(Located {
                    value: entry,
                    at: self.location(e, f),
                }),
                Err(err) => self.error(e, f, format!("invalid entry {:?}: {err}", e.get_ref())),
            }
        }
        out
    }

    /// The `unix:` entries of `connect` (the others are [`Self::connect`]'s).
    fn unix(&mut self, field: &str, entries: &[Spanned<String>]) -> Vec<Located<UnixAddr>> {
        let mut out: Vec<Located<UnixAddr>> = Vec::new();
        let mut seen = HashSet::new();
        for (i, e) in entries.iter().enumerate() {
            let Some(rest) = e.get_ref().trim_start().strip_prefix(unix::PREFIX) else {
                continue;
            };
            let f = format!("{field}.connect[{i}]");
            match rest.parse::<UnixAddr>() {
                Ok(addr) if !seen.insert(addr.clone()) => {
                    self.error(e, f, format!("duplicate entry {:?}", e.get_ref()));
                }
                Ok(addr) => out.push(Located {
                    value: addr,
                    at: self.location(e, f),
                }),
                Err(err) => self.error(e, f, format!("invalid entry {:?}: {err}", e.get_ref())),
            }
        }
        out
    }

    fn exec(&mut self, field: &str, entries: &[Spanned<String>]) -> Vec<Located<PathBuf>> {
        let mut out: Vec<Located<PathBuf>> = Vec::new();
        let mut seen = HashSet::new();
        for (i, e) in entries.iter().enumerate() {
            let f = format!("{field}.exec[{i}]");
            match absolute(e.get_ref()) {
                Ok(p) if !seen.insert(p.clone()) => {
                    self.error(e, f, format!("duplicate entry {:?}", e.get_ref()));
                }
                Ok(p) => out.push(Located {
                    value: p,
                    at: self.location(e, f),
                }),
                Err(msg) => self.error(e, f, msg),
            }
        }
        out
    }

    fn paths(
        &mut self,
        field: &str,
        kind: &str,
        entries: &[Spanned<String>],
    ) -> Vec<Located<PathRule>> {
        let mut out: Vec<Located<PathRule>> = Vec::new();
        let mut seen = HashSet::new();
        for (i, e) in entries.iter().enumerate() {
            let f = format!("{field}.{kind}[{i}]");
            let text = e.get_ref().trim();
            let rules = match path_rules(kind, text) {
                Ok(rules) => rules,
                Err(msg) => {
                    self.error(e, f, msg);
                    continue;
                }
            };
            let at = self.location(e, f.clone());
            for rule in rules {
                if !seen.insert(rule.clone()) {
                    if text != runtime::TOKEN {
                        self.error(e, f.clone(), format!("duplicate entry {text:?}"));
                    }
                    continue;
                }
                out.push(Located {
                    value: rule,
                    at: at.clone(),
                });
            }
        }
        out
    }

    /// Expands `presets = [...]` into `exec` and `read` (entries already there are kept once).
    fn presets(
        &mut self,
        field: &str,
        entries: &[Spanned<RawPreset>],
        exec: &mut Vec<Located<PathBuf>>,
        read: &mut Vec<Located<PathRule>>,
    ) -> Vec<Located<String>> {
        let mut names: Vec<Located<String>> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let f = format!("{field}.presets[{i}]");
            let (name, options) = match e.get_ref() {
                RawPreset::Name(n) => (n.trim().to_owned(), Default::default()),
                RawPreset::WithOptions { name, options } => {
                    (name.trim().to_owned(), options.clone())
                }
            };
            if names.iter().any(|n| n.value == name) {
                self.error(e, f, format!("duplicate preset {name:?}"));
                continue;
            }
            let expansion = match presets::expand(&name, &options, self.host) {
                Ok(x) => x,
                Err(err) => {
                    self.error(e, f, err.to_string());
                    continue;
                }
            };
            let at = self.location(e, f);
            for p in &expansion.exec {
                match absolute(p) {
                    Ok(p) if exec.iter().any(|x| x.value == p) => {}
                    Ok(p) => exec.push(Located {
                        value: p,
                        at: at.clone(),
                    }),
                    Err(msg) => self.error_at(&at, format!("preset {name}: {msg}")),
                }
            }
            for text in &expansion.read {
                match path_rules("read", text) {
                    Ok(rules) => {
                        for rule in rules {
                            if !read.iter().any(|r| r.value == rule) {
                                read.push(Located {
                                    value: rule,
                                    at: at.clone(),
                                });
                            }
                        }
                    }
                    Err(msg) => self.error_at(&at, format!("preset {name}: {msg}")),
                }
            }
            names.push(Located { value: name, at });
        }
        names
    }

    fn user(
        &mut self,
        field: &str,
        user: Option<&Spanned<String>>,
        sub_agent: bool,
    ) -> Option<Located<String>> {
        let user = user?;
        let f = format!("{field}.user");
        let name = user.get_ref().trim();
        if sub_agent {
            self.error(
                user,
                f,
                "a sub-agent runs as its parent's user (the parent has no privilege to switch users)",
            );
            return None;
        }
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        let ok = match name.split_once(':') {
            Some((u, g)) => valid(u) && valid(g),
            None => valid(name),
        };
        if !ok {
            self.error(
                user,
                f,
                format!("invalid user {name:?}: use USER or USER:GROUP (names or numbers)"),
            );
            return None;
        }
        Some(Located {
            value: name.to_owned(),
            at: self.location(user, f),
        })
    }

    fn allow_syscalls(&mut self, field: &str, entries: &[Spanned<String>]) -> Vec<Located<String>> {
        let mut out: Vec<Located<String>> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let f = format!("{field}.allow_syscalls[{i}]");
            let name = e.get_ref().trim();
            if !crate::sandbox::seccomp::is_group(name) {
                self.error(
                    e,
                    f,
                    format!(
                        "unknown syscall group {name:?} (known: {})",
                        crate::sandbox::seccomp::group_names().join(", ")
                    ),
                );
            } else if out.iter().any(|o| o.value == name) {
                self.error(e, f, format!("duplicate syscall group {name:?}"));
            } else {
                out.push(Located {
                    value: name.to_owned(),
                    at: self.location(e, f),
                });
            }
        }
        out
    }

    fn capabilities(
        &mut self,
        field: &str,
        entries: &[Spanned<String>],
    ) -> Vec<Located<caps::Capability>> {
        let mut out: Vec<Located<caps::Capability>> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let f = format!("{field}.capabilities[{i}]");
            let upper = e.get_ref().trim().to_ascii_uppercase();
            let name = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            match caps::Capability::from_str(&name) {
                Ok(c) if out.iter().any(|o| o.value == c) => {
                    self.error(e, f, format!("duplicate capability {name}"));
                }
                Ok(c) => out.push(Located {
                    value: c,
                    at: self.location(e, f),
                }),
                Err(_) => self.error(e, f, format!("unknown capability {:?}", e.get_ref())),
            }
        }
        out
    }

    fn throttle(&mut self, field: &str, raw: &Spanned<RawThrottle>) -> Vec<Limit> {
        let t = raw.get_ref();
        let burst = match &t.burst {
            Some(b) if !b.get_ref().is_finite() || *b.get_ref() <= 0.0 || *b.get_ref() > 1000.0 => {
                self.error(
                    b,
                    format!("{field}.burst"),
                    "burst must be a number greater than 0 and at most 1000",
                );
                DEFAULT_BURST
            }
            Some(b) => *b.get_ref(),
            None => DEFAULT_BURST,
        };
        let scope = match t.scope.as_ref().map(|s| *s.get_ref()) {
            Some(Scope::Agent) => ThrottleScope::Agent,
            Some(Scope::Process) | None => ThrottleScope::Process,
        };
        let on_exceed = match t.on_exceed.as_ref().map(|s| *s.get_ref()) {
            Some(OnExceedRaw::Freeze) => OnExceed::Freeze,
            Some(OnExceedRaw::Kill) => OnExceed::Kill,
            Some(OnExceedRaw::Deny) | None => OnExceed::Deny,
        };
        let mut limits: Vec<Limit> = Vec::new();
        let own = [
            (ThrottleKind::Connect, &t.connect),
            (ThrottleKind::Exec, &t.exec),
            (ThrottleKind::Open, &t.open),
        ];
        for (kind, rate) in own {
            let f = format!("{field}.{}", kind.name());
            limits.extend(
                rate.as_ref()
                    .and_then(|r| self.limit(r, f, kind, scope, burst, on_exceed)),
            );
        }
        if let Some(agent) = &t.agent {
            let a = agent.get_ref();
            for (kind, rate) in [
                (ThrottleKind::Connect, &a.connect),
                (ThrottleKind::Exec, &a.exec),
                (ThrottleKind::Open, &a.open),
            ] {
                let Some(rate) = rate else { continue };
                let f = format!("{field}.agent.{}", kind.name());
                if limits
                    .iter()
                    .any(|l| l.kind == kind && l.scope == ThrottleScope::Agent)
                {
                    self.error(
                        rate,
                        f,
                        "already limited for the whole agent by scope = \"agent\"",
                    );
                    continue;
                }
                limits.extend(self.limit(rate, f, kind, ThrottleScope::Agent, burst, on_exceed));
            }
        }
        limits
    }

    fn error_at(&mut self, at: &Location, msg: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.src.name.to_owned(),
            line: at.line,
            column: at.column,
            field: at.field.clone(),
            message: msg.into(),
        });
    }

    fn limit(
        &mut self,
        rate: &Spanned<String>,
        field: String,
        kind: ThrottleKind,
        scope: ThrottleScope,
        burst: f64,
        on_exceed: OnExceed,
    ) -> Option<Limit> {
        match rate.get_ref().parse::<Rate>() {
            #[expect(clippy::cast_precision_loss, reason = "counts are at most 1e9")]
            Ok(r) if burst * r.count as f64 >= 1.0 => Some(Limit {
                kind,
                scope,
                rate: r,
                burst,
                on_exceed,
            }),
            Ok(_) => {
                self.error(
                    rate,
                    field,
                    "burst * count must be at least 1 (the bucket must hold one action)",
                );
                None
            }
            Err(e) => {
                self.error(
                    rate,
                    field,
                    format!("invalid rate {:?}: {e}", rate.get_ref()),
                );
                None
            }
        }
    }

    /// A sub-agent may never be allowed anything its parent is not.
    fn within_parent(&mut self, field: &str, raw: &RawAgent, sub: &Agent, parent: &Agent) {
        let pname = &parent.name;
        if parent.mode == Mode::Enforce
            && sub.mode == Mode::Audit
            && let Some(m) = &raw.mode
        {
            self.error(
                m,
                format!("{field}.mode"),
                format!("a sub-agent of enforcing agent {pname:?} cannot be in audit mode"),
            );
        }
        if sub.private_tmp
            && !parent.private_tmp
            && let Some(t) = &raw.private_tmp
        {
            self.error(
                t,
                format!("{field}.private_tmp"),
                format!("parent agent {pname:?} has no private temp directory to share"),
            );
        }
        if sub.dns
            && !parent.dns
            && let Some(d) = &raw.dns
        {
            self.error(
                d,
                format!("{field}.dns"),
                format!("parent agent {pname:?} does not allow dns"),
            );
        }
        for entry in &sub.connect {
            let covered = parent.connect.iter().any(|p| {
                p.value.port == entry.value.port
                    && match (&entry.value.target, &p.value.target) {
                        (NetTarget::Net(n), NetTarget::Net(pn)) => net_within(n, pn),
                        (NetTarget::Name(n), NetTarget::Name(pn)) => n == pn,
                        _ => false,
                    }
            });
            if !covered {
                self.error_at(
                    &entry.at,
                    format!("{} is not allowed to parent agent {pname:?}", entry.value),
                );
            }
        }
        // Exact matching: a sub-agent's AF_UNIX address must be one of its parent's (the
        // kernel checks every ancestor too).
        for entry in &sub.unix {
            if !parent.unix.iter().any(|p| p.value == entry.value) {
                self.error_at(
                    &entry.at,
                    format!("{} is not allowed to parent agent {pname:?}", entry.value),
                );
            }
        }
        if parent.restricts_files() {
            for e in &sub.exec {
                if !parent.exec.iter().any(|p| p.value == e.value) {
                    self.error_at(
                        &e.at,
                        format!(
                            "{} is not in the exec list of parent agent {pname:?}",
                            e.value.display()
                        ),
                    );
                }
            }
            for (rules, parent_rules, kind) in [
                (&sub.read, &parent.read, "read"),
                (&sub.write, &parent.write, "write"),
            ] {
                for rule in rules {
                    let covered = parent_rules.iter().any(|p| match (&rule.value, &p.value) {
                        (PathRule::ProcSelf, PathRule::ProcSelf) => true,
                        (PathRule::Prefix(s), PathRule::Prefix(pp)) => s.starts_with(pp),
                        _ => false,
                    });
                    if !covered {
                        self.error_at(
                            &rule.at,
                            format!(
                                "{} is not within the {kind} rules of parent agent {pname:?}",
                                rule.value
                            ),
                        );
                    }
                }
            }
        }
        for c in &sub.capabilities {
            if !parent.capabilities.iter().any(|p| p.value == c.value) {
                self.error_at(
                    &c.at,
                    format!("{} is not granted to parent agent {pname:?}", c.value),
                );
            }
        }
        for t in &sub.tools {
            if !parent.tools.iter().any(|p| p.value == t.value) {
                self.error_at(
                    &t.at,
                    format!(
                        "tool {:?} is not granted to parent agent {pname:?}",
                        t.value
                    ),
                );
            }
        }
        for c in &sub.credentials {
            if !parent.credentials.iter().any(|p| p.value == c.value) {
                self.error_at(
                    &c.at,
                    format!(
                        "credential {:?} is not granted to parent agent {pname:?}",
                        c.value
                    ),
                );
            }
        }
        for g in &sub.allow_syscalls {
            if !parent.allow_syscalls.iter().any(|p| p.value == g.value) {
                self.error_at(
                    &g.at,
                    format!(
                        "syscall group {:?} is not granted to parent agent {pname:?}",
                        g.value
                    ),
                );
            }
        }
    }

    fn check_ids(&mut self) {
        let mut seen: HashMap<u32, &str> = HashMap::new();
        let mut clashes = Vec::new();
        for a in &self.agents {
            if let Some(other) = seen.insert(a.id, &a.name) {
                clashes.push(format!(
                    "agents {other:?} and {:?} hash to the same id; rename one",
                    a.name
                ));
            }
        }
        for message in clashes {
            self.diags.push(self.src.diag(0..0, "agents", message));
        }
    }
}

/// The rules one `read`/`write` entry stands for.
fn path_rules(kind: &str, text: &str) -> Result<Vec<PathRule>, String> {
    if text == runtime::TOKEN {
        if kind != "read" {
            return Err(format!(
                "{} is a read baseline; it cannot be granted for {kind}",
                runtime::TOKEN
            ));
        }
        return Ok(runtime::SYSTEM_RUNTIME
            .iter()
            .map(|p| PathRule::Prefix(PathBuf::from(p)))
            .chain([PathRule::ProcSelf])
            .collect());
    }
    if text.starts_with('@') {
        return Err(format!(
            "unknown baseline {text:?}; the only one is {} (presets such as @python go in `presets = [...]`)",
            runtime::TOKEN
        ));
    }
    if text == runtime::PROC_SELF || text == "/proc/thread-self" {
        return Ok(vec![PathRule::ProcSelf]);
    }
    let p = absolute(text)?;
    if is_proc_pid(&p) {
        return Err(
            "a numbered /proc entry names another process; use /proc/self for the agent's own"
                .to_owned(),
        );
    }
    Ok(vec![PathRule::Prefix(p)])
}

/// The dotted field path of an agent by full name (`buyer/search` -> `agents.buyer.sub.search`).
fn agent_field(full: &str) -> String {
    format!("agents.{}", full.replace('/', ".sub."))
}

/// An absolute, normalised path: no `.`/`..` components, no trailing `/`, not too long.
fn absolute(text: &str) -> Result<PathBuf, String> {
    let text = text.trim();
    if !text.starts_with('/') {
        return Err(format!("{text:?} is not an absolute path"));
    }
    let p = Path::new(text);
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "{text:?} contains . or .. components; write the path it means"
        ));
    }
    let normal: PathBuf = p.components().collect();
    if normal.as_os_str().len() > MAX_RULE_PATH {
        return Err(format!("{text:?} is longer than {MAX_RULE_PATH} bytes"));
    }
    Ok(normal)
}

fn is_proc_pid(p: &Path) -> bool {
    let mut c = p.components().skip(1);
    matches!(c.next(), Some(Component::Normal(s)) if s == "proc")
        && matches!(c.next(), Some(Component::Normal(s)) if s.to_str().is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit())))
}
