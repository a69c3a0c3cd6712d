//! `--spawn`: a `boxoffice serve` of our own on 127.0.0.1:0 with a temporary data dir and an admin token we chose,
//! its log in the report's directory, ready once `/health` answers 200, stopped with SIGTERM (by its pid, never
//! by name) and given [`STOP_TIMEOUT`] to write its final snapshots before it is killed.

use crate::client::Target;
use hyper::StatusCode;
use rustix::process::{Pid, Signal, kill_process};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take, recovery included, before the run gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a SIGTERM'd server may take to drain and snapshot before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// What the server prints first on stdout.
const LISTENING_PREFIX: &str = "boxoffice listening on ";

/// The server's settings a run controls, besides the provider latency of each burst.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// `fsync` or `none`.
    pub durability: String,
    /// `--payment-concurrency`; the server's default when `None`.
    pub payment_concurrency: Option<u32>,
    /// More `boxoffice serve` flags, as given.
    pub extra: Vec<String>,
}

/// The flags of `boxoffice serve` (besides `--listen` and `--data-dir`) for a burst of `users` orders with
/// `concurrency` in flight: the edge limits are raised so that the server queues every order rather than
/// shedding it, and requests may run an hour, so that a slow burst is measured rather than cut off.
pub fn serve_flags(
    tuning: &Tuning,
    users: u64,
    concurrency: u64,
    payment_latency_ms: u64,
) -> Vec<String> {
    let mut flags = vec![
        "--durability".to_owned(),
        tuning.durability.clone(),
        "--payment-latency-ms".to_owned(),
        payment_latency_ms.to_string(),
        "--payment-queue-max".to_owned(),
        users.max(200_000).to_string(),
        "--requests-in-flight-max".to_owned(),
        (concurrency + 1_024).max(250_000).to_string(),
        "--connections-max".to_owned(),
        (concurrency + 1_024).max(10_000).to_string(),
        "--request-timeout-s".to_owned(),
        "3600".to_owned(),
    ];
    if let Some(payment_concurrency) = tuning.payment_concurrency {
        flags.extend([
            "--payment-concurrency".to_owned(),
            payment_concurrency.to_string(),
        ]);
    }
    flags.extend(tuning.extra.iter().cloned());
    flags
}

pub struct Spawned {
    child: Child,
    pub base: String,
    /// Removed when the server is dropped.
    _data_dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts `binary serve` with `flags` and waits until it is ready. Its stderr (and any later stdout) go to
    /// `log` (appended).
    pub async fn start(
        binary: &Path,
        flags: &[String],
        admin_token: &str,
        log: &Path,
    ) -> Result<Spawned, String> {
        if !binary.is_file() {
            return Err(format!(
                "--spawn {}: no such file (build it: cargo build --release -p api)",
                binary.display()
            ));
        }
        let data_dir = tempfile::Builder::new()
            .prefix("boxoffice-load-")
            .tempdir()
            .map_err(|error| format!("temporary data dir: {error}"))?;
        let log_file = open_log(log)?;
        let mut child = Command::new(binary)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(flags)
            .env("BOXOFFICE_ADMIN_TOKEN", admin_token)
            .env(
                "RUST_LOG",
                std::env::var("BOXOFFICE_LOAD_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (first_line, lines) = std::sync::mpsc::channel();
        let log = log.to_owned();
        // Reads the address line, then keeps draining stdout into the log so that the server never blocks on it.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = first_line.send(line);
            if let Ok(mut file) = open_log(&log) {
                for line in reader.lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        let mut server = Spawned {
            child,
            base: String::new(),
            _data_dir: data_dir,
        };
        let line = tokio::task::spawn_blocking(move || lines.recv_timeout(READY_TIMEOUT))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|_| "the server printed no address".to_owned())?;
        server.base = line
            .trim()
            .strip_prefix(LISTENING_PREFIX)
            .ok_or_else(|| format!("unexpected first line from the server: {line:?}"))?
            .to_owned();
        server.wait_until_ready().await?;
        Ok(server)
    }

    async fn wait_until_ready(&mut self) -> Result<(), String> {
        let target = Target::new(&self.base, 1, Duration::from_secs(5))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(StatusCode::OK) = target.status("/health").await {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the server exited before it was ready: {status}"));
            }
            if Instant::now() > deadline {
                return Err("the server did not become ready".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit; returns how it ended (`exit status: 0` when all went well).
    pub async fn stop(mut self) -> String {
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return format!("killed after {} s without exiting", STOP_TIMEOUT.as_secs());
                }
            }
        }
    }
}

impl Drop for Spawned {
    /// A run that fails half way does not leave its server behind: SIGKILL to our child's pid.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))
}

/// A fresh admin token for a spawned server: 256 random bits in hex.
pub fn admin_token() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_limits_make_room_for_the_burst() {
        let tuning = Tuning {
            durability: "fsync".into(),
            payment_concurrency: Some(100_000),
            extra: vec!["--arbiters".into(), "2".into()],
        };
        let flags = serve_flags(&tuning, 100_000, 100_000, 1_400);
        let value = |flag: &str| {
            let at = flags
                .iter()
                .position(|f| f == flag)
                .unwrap_or_else(|| panic!("{flag}"));
            flags[at + 1].clone()
        };
        assert_eq!(value("--payment-latency-ms"), "1400");
        assert_eq!(value("--connections-max"), "101024");
        assert_eq!(value("--requests-in-flight-max"), "250000");
        assert_eq!(value("--payment-queue-max"), "200000");
        assert_eq!(value("--payment-concurrency"), "100000");
        assert_eq!(value("--arbiters"), "2");
        let small = serve_flags(
            &Tuning {
                durability: "none".into(),
                payment_concurrency: None,
                extra: Vec::new(),
            },
            200,
            200,
            0,
        );
        assert!(!small.contains(&"--payment-concurrency".to_owned()));
        assert!(
            small
                .windows(2)
                .any(|w| w == ["--connections-max", "10000"])
        );
        assert!(small.windows(2).any(|w| w == ["--durability", "none"]));
    }

    #[test]
    fn admin_tokens_are_long_and_fresh() {
        let (a, b) = (admin_token(), admin_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
