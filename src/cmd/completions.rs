//! `spinguard completions SHELL` and `spinguard man`: generated from the CLI
//! definition itself, so they can never drift from `--help`.

use anyhow::Result;
use clap::Args;
use clap_complete::Shell;

#[derive(Args)]
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

#[derive(Args)]
pub struct ManArgs {
    /// Write spinguard.1 and one spinguard-SUBCOMMAND.1 per subcommand into DIR
    /// instead of printing spinguard.1
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

/// Prints spinguard(1) as roff, or writes every page into `--dir`.
pub fn man(args: ManArgs, cli: clap::Command) -> Result<i32> {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(cli, &dir)?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cli).render(&mut page)?;
            spinguard::output::print_bytes(&page)?;
        }
    }
    Ok(0)
}
