//! `--spawn`: a `boxoffice serve` of our own on 127.0.0.1:0 with a temporary data dir and an admin token we chose,
//! its log in the report's directory, ready once `/health` answers 200, stopped with SIGTERM (by its pid, never
//! by name) and given [`STOP_TIMEOUT`] to write its final snapshots before it is killed.
//!
//! `--spawn-cluster N` (and `--fronts M`): a [`Cluster`] of N shard nodes (`--node-id k`, `--cluster-nodes` of
//! their internal URLs, `--internal-listen` on a port chosen free beforehand) and M fronts (`--role front`), all on
//! loopback with the same random cluster secret and admin token, each with a data dir and a log of its own; ready
//! once every process answers `/health` and sees every node `up` (`GET /admin/cluster`). [`cpu_seconds`] reads a
//! process's CPU time, for the cost of an order.

use crate::client::Target;
use hyper::StatusCode;
use rustix::process::{Pid, Signal, kill_process};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take, recovery included, before the run gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a SIGTERM'd server may take to drain and snapshot before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a cluster may take to form once its processes are ready: every process sees every node `up`.
const FORM_TIMEOUT: Duration = Duration::from_secs(120);
/// The environment variables `boxoffice serve` reads its cluster settings from: a spawned single node must not
/// pick them up from ours, and a cluster's processes get the ones we choose.
const CLUSTER_ENV: [&str; 5] = [
    "BOXOFFICE_CLUSTER_SECRET",
    "BOXOFFICE_CLUSTER_NODES",
    "BOXOFFICE_NODE_ID",
    "BOXOFFICE_INTERNAL_LISTEN",
    "BOXOFFICE_ROLE",
];
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
        // Every simulated buyer is on 127.0.0.1.
        "--connections-per-address-max".to_owned(),
        (concurrency + 1_024).max(10_000).to_string(),
        "--held-tickets-per-address-max".to_owned(),
        "100000000".to_owned(),
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
        Self::start_with(
            binary.to_owned(),
            flags.to_vec(),
            vec![("BOXOFFICE_ADMIN_TOKEN".to_owned(), admin_token.to_owned())],
            log.to_owned(),
        )
        .await
    }

    /// Starts `binary serve --listen 127.0.0.1:0 --data-dir <a temporary dir>` with `args` and the environment
    /// variables `env` (the cluster's are set only from `env`), and waits until it is ready.
    pub async fn start_with(
        binary: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Result<Spawned, String> {
        let (binary, log) = (binary.as_path(), log.as_path());
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
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(&args);
        for name in CLUSTER_ENV {
            command.env_remove(name);
        }
        let mut child = command
            .envs(env)
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

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the exit; returns how it ended (`exit status: 0` when all went well).
    pub async fn stop(self) -> String {
        self.terminate();
        self.wait_exit().await
    }

    /// Sends SIGTERM to the process (by its pid).
    fn terminate(&self) {
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
    }

    /// Waits for the exit after [`Spawned::terminate`], killing the process after [`STOP_TIMEOUT`].
    async fn wait_exit(mut self) -> String {
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

/// A cluster's size: shard nodes and fronts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterShape {
    pub nodes: u32,
    pub fronts: u32,
}

/// A cluster the run started: shard node `k` is `nodes[k]`.
pub struct Cluster {
    pub nodes: Vec<Spawned>,
    pub fronts: Vec<Spawned>,
}

impl Cluster {
    /// Starts `shape.nodes` shard nodes (concurrently), waits until each answers `/health` and sees every node up,
    /// then the fronts likewise. Every process gets `flags`, the admin token and a fresh cluster secret; the logs
    /// are `node-K.log` and `front-K.log` in `log_dir`. A process that fails to start stops the others (they are
    /// killed when dropped).
    pub async fn start(
        binary: &Path,
        shape: ClusterShape,
        flags: &[String],
        admin_token: &str,
        log_dir: &Path,
    ) -> Result<Cluster, String> {
        assert!(shape.nodes >= 1, "a cluster has a shard node");
        let internal: Vec<String> = (0..shape.nodes)
            .map(|_| free_port().map(|port| format!("127.0.0.1:{port}")))
            .collect::<Result<_, _>>()?;
        let node_list = internal
            .iter()
            .map(|address| format!("http://{address}"))
            .collect::<Vec<_>>()
            .join(",");
        let env = vec![
            ("BOXOFFICE_ADMIN_TOKEN".to_owned(), admin_token.to_owned()),
            ("BOXOFFICE_CLUSTER_SECRET".to_owned(), cluster_secret()),
        ];
        let node_args = |node: usize| {
            let mut args = vec![
                "--node-id".to_owned(),
                node.to_string(),
                "--cluster-nodes".to_owned(),
                node_list.clone(),
                "--internal-listen".to_owned(),
                internal[node].clone(),
            ];
            args.extend(flags.iter().cloned());
            args
        };
        let nodes = start_all(
            binary,
            (0..internal.len())
                .map(|node| (node_args(node), log_dir.join(format!("node-{node}.log"))))
                .collect(),
            &env,
        )
        .await?;
        for node in &nodes {
            wait_formed(&node.base, shape.nodes, admin_token).await?;
        }
        let mut front_args = vec![
            "--role".to_owned(),
            "front".to_owned(),
            "--cluster-nodes".to_owned(),
            node_list.clone(),
        ];
        front_args.extend(flags.iter().cloned());
        let fronts = start_all(
            binary,
            (0..shape.fronts)
                .map(|front| {
                    (
                        front_args.clone(),
                        log_dir.join(format!("front-{front}.log")),
                    )
                })
                .collect(),
            &env,
        )
        .await?;
        for front in &fronts {
            wait_formed(&front.base, shape.nodes, admin_token).await?;
        }
        Ok(Cluster { nodes, fronts })
    }

    /// Where clients go: the fronts when there are any, else the shard nodes, in order.
    pub fn entry_points(&self) -> Vec<String> {
        let entry = if self.fronts.is_empty() {
            &self.nodes
        } else {
            &self.fronts
        };
        entry.iter().map(|process| process.base.clone()).collect()
    }

    /// Every process: `(name, public URL, pid)`, the nodes first.
    pub fn processes(&self) -> Vec<(String, String, u32)> {
        let named = |kind: &str, list: &[Spawned]| {
            list.iter()
                .enumerate()
                .map(|(k, p)| (format!("{kind} {k}"), p.base.clone(), p.pid()))
                .collect::<Vec<_>>()
        };
        let mut all = named("node", &self.nodes);
        all.extend(named("front", &self.fronts));
        all
    }

    /// SIGTERM to the fronts, then to every node at once; how each ended, in [`Cluster::processes`]'s order.
    pub async fn stop(self) -> Vec<String> {
        let mut fronts = Vec::new();
        for front in &self.fronts {
            front.terminate();
        }
        for front in self.fronts {
            fronts.push(front.wait_exit().await);
        }
        for node in &self.nodes {
            node.terminate();
        }
        let mut exits = Vec::new();
        for node in self.nodes {
            exits.push(node.wait_exit().await);
        }
        exits.extend(fronts);
        exits
    }
}

/// Starts every `(args, log)` at once and waits until all are ready.
async fn start_all(
    binary: &Path,
    processes: Vec<(Vec<String>, PathBuf)>,
    env: &[(String, String)],
) -> Result<Vec<Spawned>, String> {
    let count = processes.len();
    let mut starting = tokio::task::JoinSet::new();
    for (index, (args, log)) in processes.into_iter().enumerate() {
        let start = Spawned::start_with(binary.to_owned(), args, env.to_vec(), log);
        starting.spawn(async move { (index, start.await) });
    }
    let mut started: Vec<Option<Spawned>> = (0..count).map(|_| None).collect();
    let mut failure = None;
    while let Some(joined) = starting.join_next().await {
        match joined {
            Ok((index, Ok(process))) => started[index] = Some(process),
            Ok((_, Err(error))) => failure = failure.or(Some(error)),
            Err(error) => failure = failure.or(Some(error.to_string())),
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(started.into_iter().flatten().collect()),
    }
}

/// Waits until the process at `base` sees all `nodes` shard nodes `up`: a node that tried a peer before it had
/// started backs off a moment before it tries again.
async fn wait_formed(base: &str, nodes: u32, admin_token: &str) -> Result<(), String> {
    let target = Target::new(base, 1, Duration::from_secs(5))?;
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        let view = target
            .call::<serde_json::Value>(
                hyper::Method::GET,
                "/admin/cluster",
                Some(admin_token),
                None,
                StatusCode::OK,
            )
            .await;
        let up = view.as_ref().map_or(0, |view| {
            view["nodes"].as_array().map_or(0, |nodes| {
                nodes.iter().filter(|node| node["state"] == "up").count()
            })
        });
        if up == nodes as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the cluster did not form: {base} sees {up} of {nodes} nodes up ({})",
                view.map_or_else(|error| error, |view| view.to_string())
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, read, closed): a node's internal port must be known
/// before any node starts.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("no free port: {error}"))
}

/// A cluster secret: 256 random bits in hex (64 visible characters).
pub fn cluster_secret() -> String {
    admin_token()
}

/// The CPU time a process has used (user and system, `/proc/PID/stat`), in seconds; `None` where it cannot be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_of_stat(&stat)
}

/// utime + stime of a `/proc/PID/stat` line, in seconds (the fields after the command, which may hold spaces).
fn cpu_of_stat(stat: &str) -> Option<f64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command: state (field 3), ..., utime (field 14), stime (field 15).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
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
    fn cpu_time_is_read_past_a_command_with_spaces() {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let stat =
            "4242 (box office) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 12345";
        assert_eq!(cpu_of_stat(stat), Some(300.0 / ticks));
        assert_eq!(cpu_of_stat("garbage"), None);
        let own = cpu_seconds(std::process::id()).expect("our own stat");
        assert!(own >= 0.0);
        assert!(cluster_secret().len() >= 32);
    }

    #[test]
    fn admin_tokens_are_long_and_fresh() {
        let (a, b) = (admin_token(), admin_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
