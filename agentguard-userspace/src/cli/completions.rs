//! `agentguard completions SHELL`: a completion script on stdout.

use std::process::ExitCode;

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

pub fn run(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "agentguard", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;
    use clap_complete::Shell;

    #[test]
    fn completions_and_man_pages_cover_every_subcommand() {
        let cmd = super::super::Cli::command();
        let subcommands: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), "agentguard", &mut out);
            let script = String::from_utf8_lossy(&out);
            for sub in &subcommands {
                assert!(script.contains(sub.as_str()), "{shell}: no {sub}");
            }
        }
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .unwrap_or_else(|e| panic!("{e}"));
        let page = String::from_utf8_lossy(&page);
        assert!(page.contains(".TH agentguard 1"), "{page}");
        for sub in &subcommands {
            assert!(page.contains(sub.as_str()), "man page lists {sub}");
        }
    }
}
