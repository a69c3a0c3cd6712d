//! The `boxoffice-load` binary: exit 0 when every burst's counts added up, 1 when one did not, 2 when the run
//! could not be carried out.

use clap::Parser;
use scenarios::cli::Cli;
use std::process::ExitCode;

/// The allocator `boxoffice` uses, so that the bare endpoint (`serve-bare`, this program) is compared with the node
/// on equal terms.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.global.allow_remote_target {
        scenarios::client::allow_remote_targets();
    }
    match scenarios::scenario::run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("invariants broken: see the report");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("boxoffice-load: {error}");
            ExitCode::from(2)
        }
    }
}
