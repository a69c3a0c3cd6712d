//! The `boxoffice` binary: `boxoffice serve [flags]`, and the offline tools `boxoffice snapshot` and `inspect`.

use api::config::{Cli, Command, LogFormat};
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: a node allocates and frees small objects from every worker thread at once
/// (requests, orders, events), where glibc's arenas showed as a fifth of the server's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Transparent huge pages are off for the whole process (`prctl(PR_SET_THP_DISABLE)`, first thing in `main`).
// mimalloc asks for them on its arenas (`madvise(MADV_HUGEPAGE)`), so the first touch of any 2 MiB of a fresh
// arena makes the kernel zero all of it, and compact memory first when it has no free 2 MiB block. A node that
// took a burst of 10,000 orders right after it started peaked at 470 MB with them and 335 MB without, and answered
// its last order after 2.6-3.0 s instead of 2.1-2.3 s; a warm node's orders cost about the same (docs/performance.md).
fn main() -> ExitCode {
    // First, before any thread exists: the setting is the process's, and its threads inherit it.
    #[cfg(target_os = "linux")]
    let huge_pages = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse_with_env();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        // Colour codes only on a terminal: a log file or a collector gets plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    #[cfg(target_os = "linux")]
    if let Err(error) = huge_pages {
        tracing::warn!(%error, "cannot turn transparent huge pages off for this process");
    }
    // Everything any subcommand writes (data dirs, snapshots, keys) is private to this user.
    api::private_files::restrict_new_files();
    match cli.command {
        Command::Serve(args) => {
            // Actix actors need a System; axum needs a multi-thread tokio runtime. FACTS.md: building the System
            // on that runtime is the combination that works.
            let system = actix_rt::System::with_tokio_rt(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime")
            });
            exit_code(system.block_on(api::server::run(*args)))
        }
        Command::PaymentProvider(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            exit_code(runtime.block_on(api::provider::run(args)))
        }
        Command::Snapshot(args) => exit_code(api::offline::snapshot(&args)),
        Command::RotateMasterKey(args) => exit_code(api::keys::rotate_over_http(&args)),
        Command::Backup(args) => exit_code(api::keys::backup_over_http(&args)),
        Command::Inspect(args) => match api::offline::inspect(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                tracing::error!(%error, "inspect failed");
                ExitCode::from(2)
            }
        },
    }
}

fn exit_code(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "boxoffice failed");
            ExitCode::FAILURE
        }
    }
}
