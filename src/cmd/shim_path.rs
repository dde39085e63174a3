//! `spinguard shim-path`: where the LD_PRELOAD shim is.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
#[command(
    about = "Print the absolute path of the LD_PRELOAD shim",
    long_about = "Print the absolute path of the LD_PRELOAD shim.\n\n\
Looks, in order, at $SPINGUARD_SHIM, next to the spinguard binary, and in \
../lib/spinguard/ relative to it (where `scripts/install` puts it).\n\n\
Use: LD_PRELOAD=$(spinguard shim-path) ./agent",
    after_help = "Exit status: 0 when the shim is found (its path on stdout); 1 when it is not \
(the message names every place looked at)."
)]
pub struct ShimPathArgs {}

pub fn run(_args: ShimPathArgs) -> Result<i32> {
    let path = spinguard::shim::locate()?;
    spinguard::outln!("{}", path.display())?;
    Ok(0)
}
