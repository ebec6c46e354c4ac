//! `agentguard man [--dir DIR]`: manual pages generated from the command-line definitions, so
//! they never disagree with `--help`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `agentguard.1` and one `agentguard-SUBCOMMAND.1` per subcommand into this
    /// directory instead of printing `agentguard(1)`.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn run(args: &ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = super::Cli::command();
    match &args.dir {
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("cannot write the manual page")?,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
