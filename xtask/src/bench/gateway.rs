//! The tool gateway's cost: the same keep-alive POSTs from an agent instance, straight to a
//! local upstream and through the gateway (`$AGENTGUARD_GATEWAY/tools/upstream/...`, the
//! credential injected), side by side in one run. Requests per second and per-request latency
//! (p50, p99) for a 100-byte and a 1 MiB body, over one and four connections.
//!
//! Both clients are agents of the same policy, started the same way; they differ only in the
//! route. The direct one (`gw-direct`) has the upstream in its `connect` list and no tools; the
//! other (`gw-via`) has the tool and no `connect` entry, as an agent should. Every answer is
//! checked by the client (200, the upstream saw the whole body, the credential present through
//! the gateway and absent directly): a refused or broken request fails the part, it never
//! counts as a fast one.

use std::{collections::BTreeMap, fmt::Write as _, io::Write as _, net::SocketAddr, path::Path};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    daemon::{Daemon, Env},
    extra::{Ctx, Extra},
    generator::{self, As, Running},
    report::{ratio_cell, thousands},
    stats::{Summary, ratios},
};
use crate::cmd;

pub const PART: Extra = Extra {
    name: "gateway",
    measure,
    markdown,
};

/// The tool, its secret, and the secret's value (what the upstream checks for).
const TOOL: &str = "upstream";
const SECRET: &str = "bench-upstream-key";
const VALUE: &str = "bench-credential-5f1c2a9e";
/// The agent that goes through the gateway, and the one that connects directly.
const VIA: &str = "gw-via";
const DIRECT: &str = "gw-direct";

/// Request bodies: name and bytes.
const BODIES: [(&str, usize); 2] = [("100 B", 100), ("1 MiB", 1 << 20)];
/// Keep-alive connections, each with one request in flight.
const CONNECTIONS: [u64; 2] = [1, 4];
const MODES: [Mode; 2] = [Mode::Direct, Mode::Gateway];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    Gateway,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Gateway => "gateway",
        }
    }
}

/// Timed requests per run (after each connection's warm-up).
fn requests(bytes: usize, quick: bool) -> u64 {
    match (bytes > 64 * 1024, quick) {
        (false, false) => 4_000,
        (false, true) => 500,
        (true, false) => 200,
        (true, true) => 30,
    }
}

/// `100 B/c1`: a body and a connection count.
fn case(body: &str, connections: u64) -> String {
    format!("{body}/c{connections}")
}

/// One client run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    pub requests: u64,
    pub secs: f64,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

/// Every run of the part.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Gateway {
    /// Body name -> bytes.
    pub body_bytes: BTreeMap<String, usize>,
    /// Body name -> timed requests per run.
    pub requests: BTreeMap<String, u64>,
    pub connections: Vec<u64>,
    /// Case (`BODY/cN`) -> `direct` | `gateway` -> one run per repetition (the two lists of a
    /// case pair up by index: the same repetition, back to back).
    pub runs: BTreeMap<String, BTreeMap<String, Vec<Run>>>,
    /// Per repetition, the order its runs went in (cases shuffled, and the two routes of a case
    /// back to back in a random order).
    pub order: Vec<Vec<String>>,
}

fn measure(ctx: &Ctx<'_>) -> Result<Value> {
    let env = ctx.env;
    let mut upstream = Running::spawn(env, As::Untagged, &["http-serve", VALUE])?;
    let ready = upstream.next_json()?;
    let addr: SocketAddr = ready["addr"]
        .as_str()
        .with_context(|| format!("the upstream printed no address: {ready}"))?
        .parse()
        .context("the upstream's address")?;
    let policy = env.policy("gateway", &policy(&env.art.generator, addr))?;
    // A port of its own: another daemon on this host may hold the default one.
    let mut daemon = Daemon::start_with(env, &policy, &["--gateway-listen", "127.0.0.1:0"])?;
    set_secret(env)?;
    let mut out = Gateway {
        body_bytes: BODIES.iter().map(|(n, b)| ((*n).to_owned(), *b)).collect(),
        requests: BODIES
            .iter()
            .map(|(n, b)| ((*n).to_owned(), requests(*b, ctx.quick)))
            .collect(),
        connections: CONNECTIONS.to_vec(),
        ..Gateway::default()
    };
    for rep in 1..=ctx.reps {
        eprintln!("    gateway: repetition {rep}/{}", ctx.reps);
        let mut cases: Vec<(&str, usize, u64)> = BODIES
            .iter()
            .flat_map(|(name, bytes)| CONNECTIONS.iter().map(move |c| (*name, *bytes, *c)))
            .collect();
        fastrand::shuffle(&mut cases);
        let mut order = Vec::new();
        for (name, bytes, connections) in cases {
            let mut modes = MODES;
            fastrand::shuffle(&mut modes);
            for mode in modes {
                let n = requests(bytes, ctx.quick);
                let run = client(env, addr, mode, n, bytes, connections).with_context(|| {
                    format!(
                        "gateway repetition {rep}: {} {name} over {connections} connection(s)",
                        mode.name()
                    )
                })?;
                let key = case(name, connections);
                order.push(format!("{key}/{}", mode.name()));
                out.runs
                    .entry(key)
                    .or_default()
                    .entry(mode.name().to_owned())
                    .or_default()
                    .push(run);
            }
        }
        out.order.push(order);
        daemon.check_alive()?;
    }
    drop(daemon);
    upstream.wait()?;
    let mut v = serde_json::to_value(&out)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("summary".into(), summary(&out));
    }
    Ok(v)
}

/// The policy: the upstream as a tool with a credential, an agent granted it, and an agent
/// allowed to connect to the upstream itself.
fn policy(generator: &Path, upstream: SocketAddr) -> String {
    let generator = generator.display();
    format!(
        "[tools.{TOOL}]\nurl = \"http://{upstream}\"\ncredential = \"{SECRET}\"\n\
         inject = \"header:Authorization: Bearer {{secret}}\"\nmethods = [\"POST\"]\n\
         paths = [\"/bench\"]\nmax_body = \"2MiB\"\n\n\
         [agents.{VIA}]\ntools = [\"{TOOL}\"]\nexec = [\"{generator}\"]\n\
         read = [\"@system-runtime\"]\n\n\
         [agents.{DIRECT}]\nconnect = [\"{}/32:{}\"]\nexec = [\"{generator}\"]\n\
         read = [\"@system-runtime\"]\n",
        upstream.ip(),
        upstream.port()
    )
}

/// `agentguard secret set SECRET` with [`VALUE`] on standard input.
fn set_secret(env: &Env) -> Result<()> {
    let mut c = env.ag(&["secret", "set", SECRET]);
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::describe(&c)))?;
    child
        .stdin
        .take()
        .context("no stdin pipe")?
        .write_all(format!("{VALUE}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd::describe(&c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One run of the client as the agent of `mode`.
fn client(
    env: &Env,
    upstream: SocketAddr,
    mode: Mode,
    n: u64,
    bytes: usize,
    connections: u64,
) -> Result<Run> {
    let (agent, url, credential) = match mode {
        Mode::Direct => (DIRECT, format!("http://{upstream}/bench"), "absent"),
        Mode::Gateway => (VIA, format!("gateway/tools/{TOOL}/bench"), "present"),
    };
    let v = generator::run(
        env,
        As::Agent(agent),
        &[
            "http",
            &url,
            &n.to_string(),
            &bytes.to_string(),
            &connections.to_string(),
            credential,
        ],
    )?;
    let latency: Vec<f64> = v["latency_us"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let secs = v["secs"].as_f64().unwrap_or(0.0);
    if latency.len() as u64 != n || secs <= 0.0 {
        bail!(
            "the client timed {} of {n} requests in {secs} s",
            latency.len()
        );
    }
    let s = Summary::of(&latency).context("no latencies")?;
    Ok(Run {
        requests: n,
        secs,
        requests_per_s: n as f64 / secs,
        p50_us: s.median,
        p99_us: s.p99,
        mean_us: latency.iter().sum::<f64>() / latency.len() as f64,
        max_us: s.max,
    })
}

fn series(runs: &[Run], get: fn(&Run) -> f64) -> Vec<f64> {
    runs.iter().map(get).collect()
}

/// Per repetition, `gateway - direct` of a figure.
fn added(direct: &[Run], via: &[Run], get: fn(&Run) -> f64) -> Vec<f64> {
    direct
        .iter()
        .zip(via)
        .map(|(d, g)| get(g) - get(d))
        .collect()
}

/// The two routes of one case.
fn routes(g: &Gateway, case: &str) -> (Vec<Run>, Vec<Run>) {
    let get = |mode: Mode| {
        g.runs
            .get(case)
            .and_then(|m| m.get(mode.name()))
            .cloned()
            .unwrap_or_default()
    };
    (get(Mode::Direct), get(Mode::Gateway))
}

/// Every figure the table shows.
fn summary(g: &Gateway) -> Value {
    let mut cases = serde_json::Map::new();
    for case in g.runs.keys() {
        let (direct, via) = routes(g, case);
        let route = |runs: &[Run]| {
            json!({
                "requests_per_s": Summary::of(&series(runs, |r| r.requests_per_s)),
                "p50_us": Summary::of(&series(runs, |r| r.p50_us)),
                "p99_us": Summary::of(&series(runs, |r| r.p99_us)),
            })
        };
        cases.insert(
            case.clone(),
            json!({
                "direct": route(&direct),
                "gateway": route(&via),
                "added_p50_us": Summary::of(&added(&direct, &via, |r| r.p50_us)),
                "added_p99_us": Summary::of(&added(&direct, &via, |r| r.p99_us)),
                "throughput_ratio": Summary::of(&ratios(
                    &series(&via, |r| r.requests_per_s),
                    &series(&direct, |r| r.requests_per_s),
                )),
            }),
        );
    }
    Value::Object(cases)
}

/// `1,234 µs`, or `1.23 ms` from 10 ms up.
fn us(x: f64) -> String {
    if x.abs() >= 10_000.0 {
        format!("{:.2} ms", x / 1e3)
    } else {
        format!("{} µs", thousands(x))
    }
}

fn route_cell(runs: &[Run]) -> String {
    let med = |get: fn(&Run) -> f64| Summary::of(&series(runs, get));
    match (
        med(|r| r.requests_per_s),
        med(|r| r.p50_us),
        med(|r| r.p99_us),
    ) {
        (Some(rps), Some(p50), Some(p99)) => format!(
            "{} req/s ({}–{})<br>p50 {}, p99 {}",
            thousands(rps.median),
            thousands(rps.min),
            thousands(rps.max),
            us(p50.median),
            us(p99.median)
        ),
        _ => "n/a".into(),
    }
}

fn added_cell(s: Option<Summary>) -> String {
    s.map_or_else(
        || "n/a".into(),
        |s| {
            format!(
                "{}{} ({} to {})",
                if s.median >= 0.0 { "+" } else { "" },
                us(s.median),
                us(s.min),
                us(s.max)
            )
        },
    )
}

fn markdown(v: &Value) -> String {
    let g: Gateway = match serde_json::from_value(v.clone()) {
        Ok(g) => g,
        Err(e) => return format!("### Tool gateway\n\nunreadable results: {e}\n\n"),
    };
    let mut s = String::new();
    let n = |body: &str| g.requests.get(body).copied().unwrap_or(0);
    let _ = writeln!(
        s,
        "### Tool gateway vs direct\n\nKeep-alive POSTs from an agent instance to a local \
         upstream that reads the body and answers with its length: straight to the upstream \
         (the agent's `connect` list has it), and through the gateway (`/tools/{TOOL}/bench`, \
         the credential injected, the request judged, scanned and logged). {} timed requests \
         per run of 100 B bodies and {} of 1 MiB bodies, after a warm-up on each connection; \
         the two routes of a case run back to back in a random order. Each figure is the \
         median over the repetitions (requests/s: min–max in brackets); p50 and p99 are of \
         each run's requests. Added latency and the throughput ratio are per repetition, \
         gateway against direct.\n",
        thousands(n(BODIES[0].0) as f64),
        thousands(n(BODIES[1].0) as f64)
    );
    let _ = writeln!(
        s,
        "| body, connections | direct | through the gateway | requests/s, gateway ÷ direct \
         | added p50 | added p99 |\n|---|---|---|---|---|---|"
    );
    for (body, _) in BODIES {
        for c in CONNECTIONS {
            let key = case(body, c);
            let (direct, via) = routes(&g, &key);
            if direct.is_empty() && via.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {body}, {c} | {} | {} | {} | {} | {} |",
                route_cell(&direct),
                route_cell(&via),
                ratio_cell(Summary::of(&ratios(
                    &series(&via, |r| r.requests_per_s),
                    &series(&direct, |r| r.requests_per_s),
                ))),
                added_cell(Summary::of(&added(&direct, &via, |r| r.p50_us))),
                added_cell(Summary::of(&added(&direct, &via, |r| r.p99_us))),
            );
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Gateway, Run, added, markdown, policy, summary};

    fn run(rps: f64, p50: f64, p99: f64) -> Run {
        Run {
            requests: 10,
            secs: 10.0 / rps,
            requests_per_s: rps,
            p50_us: p50,
            p99_us: p99,
            mean_us: p50,
            max_us: p99,
        }
    }

    #[test]
    fn the_policy_grants_the_tool_to_one_agent_and_the_upstream_to_the_other() {
        let p = policy(Path::new("/g"), ([127, 0, 0, 1], 4321).into());
        assert!(p.contains("[tools.upstream]\nurl = \"http://127.0.0.1:4321\""));
        assert!(p.contains("[agents.gw-via]\ntools = [\"upstream\"]"));
        assert!(p.contains("[agents.gw-direct]\nconnect = [\"127.0.0.1/32:4321\"]"));
        assert!(p.contains("inject = \"header:Authorization: Bearer {secret}\""));
        assert!(p.contains("max_body = \"2MiB\""));
    }

    #[test]
    fn added_latency_and_ratio_pair_the_routes_of_a_repetition() {
        let mut g = Gateway::default();
        let routes = g.runs.entry("100 B/c1".into()).or_default();
        routes.insert(
            "direct".into(),
            vec![run(1000.0, 50.0, 90.0), run(500.0, 100.0, 200.0)],
        );
        routes.insert(
            "gateway".into(),
            vec![run(500.0, 150.0, 300.0), run(400.0, 160.0, 240.0)],
        );
        let (d, v) = super::routes(&g, "100 B/c1");
        assert_eq!(added(&d, &v, |r| r.p50_us), vec![100.0, 60.0]);
        let s = summary(&g);
        assert_eq!(s["100 B/c1"]["added_p99_us"]["median"], 125.0);
        assert_eq!(s["100 B/c1"]["throughput_ratio"]["median"], 0.65);
        let md = markdown(&serde_json::to_value(&g).unwrap_or_default());
        assert!(md.contains("| 100 B, 1 | 750 req/s (500–1,000)"), "{md}");
        assert!(md.contains("+80 µs (60 µs to 100 µs)"), "{md}");
    }
}
