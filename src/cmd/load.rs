//! `spinguard __load`: the Rust loader, built into the binary so `demo` needs
//! nothing but spinguard itself. Hidden: `examples/rust-loader` is the public face.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    loader: spinguard::loader::LoaderArgs,
}

pub fn run(args: LoadArgs) -> Result<i32> {
    Ok(spinguard::loader::run(&args.loader))
}
