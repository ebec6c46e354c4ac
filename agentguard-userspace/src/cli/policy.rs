//! `agentguard policy check FILE` and `agentguard policy apply FILE`.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use agentguard::{
    control::proto::{Reply, Request},
    dns::{self, cache::Addresses},
    policy::{self, Policy, PolicyError, compile, resolve, suggest},
};
use anyhow::{Context, bail};
use clap::Subcommand;

use super::SocketArg;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate a policy without touching the kernel (exit 0 valid, 1 invalid). DNS
    /// names are looked up; one that does not resolve is a warning, not an error.
    Check {
        /// The policy file.
        file: PathBuf,
        /// Also print every agent's rules with presets and built-ins expanded (as `show
        /// --expanded`).
        #[arg(long, short)]
        verbose: bool,
    },
    /// Print a policy's agents and rules; with --expanded, presets, `@system-runtime`, the
    /// implicit device files and the private temp directory as this host expands them.
    Show {
        /// The policy file.
        file: PathBuf,
        /// Expand presets and built-ins.
        #[arg(long)]
        expanded: bool,
        /// The daemon's --tmp-dir, to show private temp rules as it will grant them.
        #[arg(long, value_name = "DIR", default_value = agentguard::daemon::private_tmp::DEFAULT_ROOT)]
        tmp_dir: PathBuf,
    },
    /// Validate a policy and make the daemon apply it atomically.
    Apply {
        /// The policy file.
        file: PathBuf,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Learn mode: print POLICY with AGENT's lists extended so that what the log shows it was
    /// refused (or, in audit mode, would have been refused) is allowed, one commented entry
    /// per suggestion with how often it was seen. Review it before applying.
    Suggest {
        /// The agent (full name: `buyer`, `buyer/search`).
        #[arg(long, value_name = "NAME")]
        agent: String,
        /// The policy in force, to merge with.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Only refusals from this time on: a duration ago (`10m`) or an RFC 3339 time.
        #[arg(long, value_name = "TIME", value_parser = super::log::parse_time)]
        since: Option<u64>,
        /// Only refusals up to this time (same forms as --since).
        #[arg(long, value_name = "TIME", value_parser = super::log::parse_time)]
        until: Option<u64>,
        /// Also switch the agent to `mode = "enforce"` (after an audit run).
        #[arg(long)]
        enforce: bool,
        #[command(flatten)]
        state: super::log::StateDirArg,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { file, verbose } => check(&file, verbose),
        PolicyCommand::Show {
            file,
            expanded,
            tmp_dir,
        } => show(&file, expanded, &tmp_dir),
        PolicyCommand::Apply { file, socket } => apply(&file, &socket),
        PolicyCommand::Suggest {
            agent,
            policy,
            since,
            until,
            enforce,
            state,
        } => suggest(&agent, &policy, since, until, enforce, &state),
    }
}

fn suggest(
    agent: &str,
    policy_file: &std::path::Path,
    since_ns: Option<u64>,
    until_ns: Option<u64>,
    enforce: bool,
    state: &super::log::StateDirArg,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(policy_file)
        .with_context(|| format!("cannot read {}", policy_file.display()))?;
    let dir = state.log_dir();
    if agentguard::audit::files::read_log_header(&dir)?.is_none() {
        return Err(agentguard::audit::AuditError::NoLog(dir).into());
    }
    let filter = agentguard::audit::show::Filter {
        agent: Some(agent.to_owned()),
        verdict: None,
        since_ns,
        until_ns,
        ..agentguard::audit::show::Filter::default()
    };
    let mut seen = suggest::Seen::default();
    let mut tail = agentguard::audit::follow::Tail::new(&dir);
    loop {
        let batch = tail.poll()?;
        for w in &batch.warnings {
            eprintln!("warning: {w}");
        }
        for r in batch.records.iter().filter(|r| filter.matches(r)) {
            if let agentguard::audit::record::Body::Action(a) = &r.body {
                seen.add(agent, a);
            }
        }
        if !batch.more {
            break;
        }
    }
    let out = suggest::merge(
        &policy_file.display().to_string(),
        &text,
        agent,
        &seen,
        enforce,
    )?;
    print!("{out}");
    for (what, n) in &seen.other {
        eprintln!("note: {n} refusal(s) of {what} that no list entry allows");
    }
    Ok(ExitCode::SUCCESS)
}

fn check(file: &std::path::Path, verbose: bool) -> anyhow::Result<ExitCode> {
    let result = policy::load(file).and_then(|p| {
        resolve::binaries(&p)
            .map(|b| (p, b))
            .map_err(PolicyError::Invalid)
    });
    match result {
        Ok((p, binaries)) => {
            let (names, warnings) = look_up_names(&p)?;
            let resolved = resolve::Resolved {
                binaries,
                names,
                resolvers: resolve::system_resolvers(),
                private_tmp: Some(PathBuf::from(agentguard::daemon::private_tmp::DEFAULT_ROOT)),
                agent_socket: None,
                gateway: None,
            };
            let compiled = compile::compile(&p, 0, &resolved);
            println!(
                "{}: ok ({} agent(s), {} rule(s), blake3 {})",
                file.display(),
                p.agents.len(),
                compiled.rules.len(),
                p.digest_hex()
            );
            for (name, addrs) in resolved.names.iter().filter(|(_, a)| !a.is_empty()) {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                println!("  {name}: {}", addrs.join(", "));
            }
            for w in p.weakenings().into_iter().chain(warnings) {
                eprintln!("warning: {w}");
            }
            if verbose {
                print!("{}", expanded(&p, &resolved, true));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ PolicyError::Invalid(_)) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn show(file: &std::path::Path, full: bool, tmp_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    match policy::load(file) {
        Ok(p) => {
            let resolved = resolve::Resolved {
                private_tmp: Some(tmp_dir.to_owned()),
                ..resolve::Resolved::default()
            };
            print!("{}", expanded(&p, &resolved, full));
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ PolicyError::Invalid(_)) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// Every agent's rules, one per line, each with where it comes from: the field it was written
/// in, the preset it came from, `@system-runtime`, or a built-in (`<devices>`, private temp).
/// Without `full`, only what the file says in so many words.
fn expanded(p: &Policy, resolved: &resolve::Resolved, full: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for a in &p.agents {
        let _ = writeln!(out, "[agents.{}]", a.name.replace('/', ".sub."));
        let mut presets: Vec<String> = a.presets.iter().map(|n| n.value.clone()).collect();
        if presets.is_empty() {
            presets.push("none".to_owned());
        }
        let _ = writeln!(out, "  presets: {}", presets.join(", "));
        let source = |field: &str| -> String {
            match a.presets.iter().find(|n| n.at.field == field) {
                Some(n) => n.value.clone(),
                None if field.ends_with(".<devices>") => "built-in: device files".to_owned(),
                None => field.rsplit('.').next().unwrap_or(field).to_owned(),
            }
        };
        let explicit = |field: &str| {
            !field.ends_with(".<devices>") && !a.presets.iter().any(|n| n.at.field == field)
        };
        for e in a.exec.iter().filter(|e| full || explicit(&e.at.field)) {
            let _ = writeln!(
                out,
                "  exec  {}  ({})",
                e.value.display(),
                source(&e.at.field)
            );
        }
        let tmp = compile::private_tmp_rule(a, resolved);
        for (kind, rules) in [("read ", &a.read), ("write", &a.write)] {
            for r in rules.iter().filter(|r| full || explicit(&r.at.field)) {
                let _ = writeln!(out, "  {kind} {}  ({})", r.value, source(&r.at.field));
            }
            if full && let Some(t) = &tmp {
                let _ = writeln!(
                    out,
                    "  {kind} {t}  (built-in: private temp; each instance gets {t}/N, mode 0700)"
                );
            }
        }
        let _ = writeln!(
            out,
            "  private temp: {}",
            if a.private_tmp { "yes (TMPDIR)" } else { "no" }
        );
    }
    out
}

/// The addresses of the policy's DNS names as the daemon would see them now, and warnings for
/// those that do not resolve.
fn look_up_names(p: &Policy) -> anyhow::Result<(Addresses, Vec<String>)> {
    if dns::names::policy_names(p).is_empty() {
        return Ok(Default::default());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the DNS client")?;
    let resolver = Arc::new(dns::SystemResolver::default());
    Ok(runtime.block_on(dns::resolve_once(&resolver, p, dns::Timing::default())))
}

fn apply(file: &std::path::Path, socket: &SocketArg) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let reply = socket.connect()?.call(&Request::PolicyApply {
        origin: file.display().to_string(),
        text,
    })?;
    let Reply::Applied {
        digest,
        generation,
        rules,
        warnings,
    } = reply
    else {
        bail!("unexpected reply from the daemon: {reply:?}");
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "applied {} (generation {generation}, {rules} rules, blake3 {digest})",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}
