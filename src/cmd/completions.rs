//! `spinguard completions SHELL`: generated from the CLI definition itself,
//! so it can never drift from `--help`.

use anyhow::Result;
use clap::Args;
use clap_complete::Shell;

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when the script was written; 1 when it could not be \
(a full disk).\n\n\
Examples: spinguard completions bash > /etc/bash_completion.d/spinguard\n          \
spinguard completions zsh > \"${fpath[1]}/_spinguard\""
)]
pub struct CompletionsArgs {
    /// The shell to print a completion script for
    #[arg(value_enum)]
    shell: Shell,
}

pub fn completions(args: CompletionsArgs, mut cli: clap::Command) -> Result<i32> {
    // Into memory first: clap_complete panics when its writer fails (a
    // closed pipe); our own print turns that into a quiet end or an error.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cli, "spinguard", &mut script);
    spinguard::output::print_bytes(&script)?;
    Ok(0)
}
