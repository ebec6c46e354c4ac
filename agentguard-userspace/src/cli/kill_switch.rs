//! `agentguard freeze|thaw|kill (TARGET | --all)`.

use std::{process::ExitCode, time::Duration};

use agentguard::control::proto::{Reply, Request, Selector};
use anyhow::bail;
use clap::Args;

use super::SocketArg;

#[derive(Debug, Args)]
pub struct KillSwitchArgs {
    /// `NAME` (every instance of an agent) or `NAME/N` (one instance).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    target: Option<String>,
    /// Every agent instance.
    #[arg(long)]
    all: bool,
    /// How long to wait for the kernel to report completion.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    socket: SocketArg,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.trim().len()),
    );
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s or min)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Freeze,
    Thaw,
    Kill,
}

pub fn run(op: Op, args: KillSwitchArgs) -> anyhow::Result<ExitCode> {
    let target = match (&args.target, args.all) {
        (_, true) => Selector::All,
        (Some(t), false) => t.parse().map_err(anyhow::Error::msg)?,
        (None, false) => bail!("name an agent or instance, or use --all"),
    };
    let timeout_ms = u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX);
    let request = match op {
        Op::Freeze => Request::Freeze { target, timeout_ms },
        Op::Thaw => Request::Thaw { target, timeout_ms },
        Op::Kill => Request::Kill { target, timeout_ms },
    };
    let reply = args.socket.connect()?.call(&request)?;
    let Reply::Done { instances, took_ms } = reply else {
        bail!("unexpected reply from the daemon: {reply:?}");
    };
    let verb = match op {
        Op::Freeze => "frozen",
        Op::Thaw => "thawed",
        Op::Kill => "killed",
    };
    if instances.is_empty() {
        println!("no running instances matched");
    } else {
        println!("{verb} in {took_ms} ms: {}", instances.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
