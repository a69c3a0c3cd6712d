//! The `boxoffice-load` binary: exit 0 when every burst's counts added up, 1 when one did not, 2 when the run
//! could not be carried out.

use clap::Parser;
use scenarios::cli::Cli;
use std::process::ExitCode;

/// The allocator `boxoffice` uses, with transparent huge pages off as there, so that the bare endpoint
/// (`serve-bare`, this program) is compared with the node on equal terms, and so that the load, on the same cores
/// as the node, does not spend them zeroing huge pages it barely uses. The kernel passes the setting on to the
/// processes this program starts (`--spawn`): a node built before `boxoffice` turned them off runs without them too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before the runtime's threads exist; they inherit it.
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("boxoffice-load: cannot turn transparent huge pages off: {error}");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run())
}

async fn run() -> ExitCode {
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
