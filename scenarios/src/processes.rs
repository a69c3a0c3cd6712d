//! `burst --client-processes K`: the burst's lanes in K child processes of `boxoffice-load` (the hidden
//! `burst-client` subcommand), so that more connections are open at once than one process may hold (the open-files
//! limit is per process: 20,000 here, so about 18,000 lanes a process).
//!
//! The parent sets the burst up (buyers, concert) as for one process, then gives each child a slice of the lanes
//! and of the buyers, as one JSON line on its stdin ([`Job`]). The talk afterwards is one line at a time:
//!
//! 1. each child raises its own open-files limit, opens every lane's connection (at most [`CONNECTING_MAX`] connect
//!    attempts at once, so that no listen backlog overflows) and answers `connected N FAILED`;
//! 2. when every child has, the parent says `refresh`: each child sends `GET /health/live` over every connection
//!    (replacing one the server closed), because a server closes a connection that stays idle past its header read
//!    timeout (10 s for boxoffice) and the slowest child may have taken longer than that to connect; it answers
//!    `ready`;
//! 3. the parent says `start T`, T a wall-clock instant (nanoseconds since the Unix epoch) [`START_LEAD`] ahead;
//!    each child opens its gate at T by its own clock (the same machine's) and times every order from T;
//! 4. each child writes one line per order (`sent_us done_us target node outcome`, from T) and `done`, and exits.
//!
//! The parent merges the samples into one burst, exactly as if one process had sent them. Unlike the one-process
//! burst, whose lanes connect when the gate opens (the connection storm is on the clock), here every connection is
//! open before the start: the burst is the orders alone, all in flight at the same instant.

use crate::burst::{Answered, Burst, Buyer, Routing};
use crate::client::{Connection, Resend, Target};
use crate::limits::{DESCRIPTORS_SPARE, raise_open_files};
use crate::report::{Outcome, Sample};
use hyper::Method;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

/// How far ahead of "now" the common start is set: time for every child to read it and arm its timer.
pub const START_LEAD: Duration = Duration::from_millis(500);
/// Connect attempts one child makes at once.
pub const CONNECTING_MAX: usize = 256;
/// How long the children may take to connect, and then to refresh.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// The subcommand a child runs.
pub const CHILD_SUBCOMMAND: &str = "burst-client";

/// What the parent's burst shares with every child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fire {
    /// The targets' bases, in order: lane `l` of the burst goes to `targets[l % len]`.
    pub targets: Vec<String>,
    pub source_addresses: u32,
    pub request_timeout_s: u64,
    pub concert_id: String,
    /// The burst's key prefix; each child adds its number.
    pub prefix: String,
}

/// One child's share of a burst.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub fire: Fire,
    /// The child's number, from 0.
    pub child: u64,
    /// Its lanes are lanes `lane_offset ..` of the burst.
    pub lane_offset: u64,
    pub lanes: u64,
    /// Its buyers: each orders one ticket.
    pub buyers: Vec<Buyer>,
}

/// `K` slices of `total` as even as can be, the larger first: `(offset, length)`.
pub fn slices(total: u64, k: u64) -> Vec<(u64, u64)> {
    assert!(k >= 1);
    let (base, extra) = (total / k, total % k);
    let mut offset = 0;
    (0..k)
        .map(|i| {
            let length = base + u64::from(i < extra);
            let slice = (offset, length);
            offset += length;
            slice
        })
        .collect()
}

/// Runs the burst of `buyers` (one order each) with `concurrency` lanes in `processes` children; every order's
/// sample, timed from the common start.
pub async fn fire(
    fire: &Fire,
    buyers: Vec<Buyer>,
    concurrency: u64,
    processes: u64,
) -> Result<Vec<Sample>, String> {
    let orders = buyers.len() as u64;
    let lanes = concurrency.min(orders);
    let processes = processes.min(lanes).max(1);
    let exe = std::env::current_exe()
        .map_err(|error| format!("cannot find this program to start the clients: {error}"))?;
    let lane_slices = slices(lanes, processes);
    let buyer_slices = slices(orders, processes);
    let mut children = Vec::new();
    for (child, ((lane_offset, lane_count), (buyer_offset, buyer_count))) in
        lane_slices.into_iter().zip(buyer_slices).enumerate()
    {
        let job = Job {
            fire: fire.clone(),
            child: child as u64,
            lane_offset,
            lanes: lane_count,
            buyers: buyers[buyer_offset as usize..(buyer_offset + buyer_count) as usize].to_vec(),
        };
        children.push(Child::start(&exe, &job).await?);
    }
    eprintln!(
        "{processes} client processes opening {lanes} connections ({} each at most)",
        lanes.div_ceil(processes)
    );
    let connecting = Instant::now();
    let mut failed = 0;
    for child in &mut children {
        let line = child.expect("connected").await?;
        failed += line
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    eprintln!(
        "connected in {:.1} s ({failed} connections failed; their lanes connect at the start); refreshing",
        connecting.elapsed().as_secs_f64()
    );
    let refreshing = Instant::now();
    for child in &mut children {
        child.say("refresh").await?;
    }
    for child in &mut children {
        child.expect("ready").await?;
    }
    let start = SystemTime::now() + START_LEAD;
    let start_ns = start
        .duration_since(UNIX_EPOCH)
        .map_err(|error| error.to_string())?
        .as_nanos();
    eprintln!(
        "refreshed in {:.1} s; {orders} orders start together in {} ms",
        refreshing.elapsed().as_secs_f64(),
        START_LEAD.as_millis()
    );
    for child in &mut children {
        child.say(&format!("start {start_ns}")).await?;
    }
    let mut samples = Vec::with_capacity(orders as usize);
    for child in children {
        samples.extend(child.samples().await?);
    }
    if samples.len() as u64 != orders {
        return Err(format!(
            "the client processes answered {} orders, not {orders}",
            samples.len()
        ));
    }
    Ok(samples)
}

/// A child process and its pipes.
struct Child {
    number: u64,
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    async fn start(exe: &std::path::Path, job: &Job) -> Result<Child, String> {
        let mut process = tokio::process::Command::new(exe)
            .arg(CHILD_SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("cannot start a client process: {error}"))?;
        let stdin = process.stdin.take().expect("piped");
        let stdout = BufReader::new(process.stdout.take().expect("piped")).lines();
        let mut child = Child {
            number: job.child,
            process,
            stdin,
            stdout,
        };
        let line = serde_json::to_string(job).map_err(|error| error.to_string())?;
        child.say(&line).await?;
        Ok(child)
    }

    async fn say(&mut self, line: &str) -> Result<(), String> {
        let written = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.write_all(b"\n").await?;
            self.stdin.flush().await
        };
        written
            .await
            .map_err(|error| format!("client process {}: {error}", self.number))
    }

    /// The next line, which must start with `word`.
    async fn expect(&mut self, word: &str) -> Result<String, String> {
        let line = tokio::time::timeout(PHASE_TIMEOUT, self.stdout.next_line())
            .await
            .map_err(|_| format!("client process {}: no `{word}` in time", self.number))?
            .map_err(|error| format!("client process {}: {error}", self.number))?
            .ok_or_else(|| format!("client process {} ended before `{word}`", self.number))?;
        if line.split_whitespace().next() != Some(word) {
            return Err(format!(
                "client process {}: `{line}` instead of `{word}`",
                self.number
            ));
        }
        Ok(line)
    }

    /// Every sample line up to `done`, then the exit.
    async fn samples(mut self) -> Result<Vec<Sample>, String> {
        let mut samples = Vec::new();
        loop {
            let line = self
                .stdout
                .next_line()
                .await
                .map_err(|error| format!("client process {}: {error}", self.number))?
                .ok_or_else(|| format!("client process {} ended before `done`", self.number))?;
            if line == "done" {
                break;
            }
            samples.push(
                parse_sample(&line)
                    .ok_or_else(|| format!("client process {}: bad line `{line}`", self.number))?,
            );
        }
        let status = self
            .process
            .wait()
            .await
            .map_err(|error| error.to_string())?;
        if !status.success() {
            return Err(format!("client process {}: {status}", self.number));
        }
        Ok(samples)
    }
}

/// One order as a line: `sent_us done_us target node outcome` (node `-` when unknown; the outcome may hold spaces).
pub fn sample_line(sample: &Sample) -> String {
    let outcome = match &sample.outcome {
        Outcome::Ok => "ok",
        Outcome::SoldOut => "sold_out",
        Outcome::Error(kind) => kind,
    };
    format!(
        "{:.0} {:.0} {} {} {outcome}",
        sample.sent_ms * 1000.0,
        sample.done_ms * 1000.0,
        sample.target,
        sample.node.map_or("-".to_owned(), |node| node.to_string())
    )
}

pub fn parse_sample(line: &str) -> Option<Sample> {
    let mut fields = line.splitn(5, ' ');
    let sent_us: f64 = fields.next()?.parse().ok()?;
    let done_us: f64 = fields.next()?.parse().ok()?;
    let target = fields.next()?.parse().ok()?;
    let node = match fields.next()? {
        "-" => None,
        node => Some(node.parse().ok()?),
    };
    let outcome = match fields.next()? {
        "ok" => Outcome::Ok,
        "sold_out" => Outcome::SoldOut,
        kind => Outcome::Error(kind.to_owned()),
    };
    Some(Sample {
        sent_ms: sent_us / 1000.0,
        done_ms: done_us / 1000.0,
        outcome,
        target,
        node,
    })
}

/// `boxoffice-load burst-client`: one child's side of the talk above.
pub async fn child() -> Result<(), String> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut next = async || -> Result<String, String> {
        stdin
            .next_line()
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| "the parent went away".to_owned())
    };
    let job: Job = serde_json::from_str(&next().await?).map_err(|error| error.to_string())?;
    let lanes = usize::try_from(job.lanes).map_err(|_| "too many lanes")?;
    let open_files = raise_open_files(job.lanes + DESCRIPTORS_SPARE);
    if open_files < job.lanes + DESCRIPTORS_SPARE {
        eprintln!(
            "client process {}: {open_files} open files allowed for {} connections; the rest fail",
            job.child, job.lanes
        );
    }
    let timeout = Duration::from_secs(job.fire.request_timeout_s);
    let targets = job
        .fire
        .targets
        .iter()
        .map(|base| Target::new(base, job.fire.source_addresses, timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let burst = Arc::new(
        Burst::new(
            &targets,
            &job.fire.concert_id,
            job.buyers,
            &format!("{}p{}-", job.fire.prefix, job.child),
            Routing::Any,
            1,
        )?
        .with_lane_offset(job.lane_offset as usize),
    );
    let lanes = lanes.min(burst.orders());
    let mut out = tokio::io::stdout();
    let mut say = async |line: String| -> Result<(), String> {
        out.write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|error| error.to_string())?;
        out.flush().await.map_err(|error| error.to_string())
    };

    let mut connections = connect_all(&burst, lanes).await;
    let failed = connections.iter().filter(|c| c.is_none()).count();
    say(format!("connected {lanes} {failed}")).await?;
    if next().await? != "refresh" {
        return Err("expected refresh".into());
    }
    connections = refresh_all(&burst, connections).await;
    say("ready".into()).await?;
    let line = next().await?;
    let start_ns: u128 = line
        .strip_prefix("start ")
        .and_then(|ns| ns.parse().ok())
        .ok_or_else(|| format!("expected start, not {line}"))?;
    let start = instant_of(start_ns);

    let gate = Arc::new(Semaphore::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (lane, connection) in connections.into_iter().enumerate() {
        let (burst, gate) = (burst.clone(), gate.clone());
        tasks.spawn(async move {
            gate.acquire()
                .await
                .expect("the gate is never closed")
                .forget();
            crate::burst::run_lane(&burst, lane, connection, &ProgressBar::hidden()).await
        });
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;
    gate.add_permits(lanes);
    let mut answered: Vec<Answered> = Vec::with_capacity(burst.orders());
    while let Some(joined) = tasks.join_next().await {
        answered.extend(joined.map_err(|error| format!("a lane failed: {error}"))?);
    }
    let mut text = String::with_capacity(answered.len() * 40);
    for answer in answered {
        text.push_str(&sample_line(&answer.sample(start)));
        text.push('\n');
    }
    text.push_str("done\n");
    out.write_all(text.as_bytes())
        .await
        .map_err(|error| error.to_string())?;
    out.flush().await.map_err(|error| error.to_string())
}

/// The `Instant` of a wall-clock time given in nanoseconds since the Unix epoch.
fn instant_of(unix_ns: u128) -> Instant {
    let at = UNIX_EPOCH + Duration::from_nanos(u64::try_from(unix_ns).unwrap_or(u64::MAX));
    let (now_wall, now) = (SystemTime::now(), Instant::now());
    match at.duration_since(now_wall) {
        Ok(ahead) => now + ahead,
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
}

/// Every lane's connection, at most [`CONNECTING_MAX`] attempts at once; `None` for one that failed.
async fn connect_all(burst: &Arc<Burst>, lanes: usize) -> Vec<Option<Connection>> {
    let slots = Arc::new(Semaphore::new(CONNECTING_MAX));
    let mut connecting = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (burst, slots) = (burst.clone(), slots.clone());
        connecting.spawn(async move {
            let _slot = slots.acquire().await.expect("never closed");
            (lane, burst.target_for(lane).connect(lane).await.ok())
        });
    }
    let mut connections: Vec<Option<Connection>> = (0..lanes).map(|_| None).collect();
    while let Some(joined) = connecting.join_next().await {
        if let Ok((lane, connection)) = joined {
            connections[lane] = connection;
        }
    }
    connections
}

/// `GET /health/live` over every connection at once (a closed one is replaced; a failed one is left to connect at
/// the start): the server's idle timer starts again.
async fn refresh_all(
    burst: &Arc<Burst>,
    connections: Vec<Option<Connection>>,
) -> Vec<Option<Connection>> {
    let lanes = connections.len();
    let slots = Arc::new(Semaphore::new(CONNECTING_MAX * 4));
    let mut refreshing = tokio::task::JoinSet::new();
    for (lane, mut connection) in connections.into_iter().enumerate() {
        let (burst, slots) = (burst.clone(), slots.clone());
        refreshing.spawn(async move {
            let _slot = slots.acquire().await.expect("never closed");
            let answer = burst
                .target_for(lane)
                .exchange(
                    lane,
                    &mut connection,
                    Method::GET,
                    "/health/live",
                    None,
                    &[],
                    None,
                    Resend::Safe,
                )
                .await;
            if answer.is_err() {
                connection = None;
            }
            (lane, connection)
        });
    }
    let mut refreshed: Vec<Option<Connection>> = (0..lanes).map(|_| None).collect();
    while let Some(joined) = refreshing.join_next().await {
        if let Ok((lane, connection)) = joined {
            refreshed[lane] = connection;
        }
    }
    refreshed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_everything_once_and_evenly() {
        assert_eq!(slices(10, 3), [(0, 4), (4, 3), (7, 3)]);
        assert_eq!(slices(2, 2), [(0, 1), (1, 1)]);
        let all = slices(100_000, 7);
        assert_eq!(all.iter().map(|s| s.1).sum::<u64>(), 100_000);
        assert!(all.iter().all(|s| s.1 == 14_285 || s.1 == 14_286));
        for pair in all.windows(2) {
            assert_eq!(pair[0].0 + pair[0].1, pair[1].0);
        }
    }

    #[test]
    fn a_sample_survives_its_line() {
        for (outcome, node) in [
            (Outcome::Ok, Some(2)),
            (Outcome::SoldOut, None),
            (Outcome::Error("503 node_unavailable".into()), Some(0)),
            (Outcome::Error("transport closed".into()), None),
        ] {
            let sample = Sample {
                sent_ms: 1.5,
                done_ms: 1_234.567,
                outcome,
                target: 3,
                node,
            };
            assert_eq!(parse_sample(&sample_line(&sample)), Some(sample.clone()));
        }
        assert_eq!(parse_sample("1 2 x - ok"), None);
        assert_eq!(parse_sample("1 2"), None);
    }

    #[test]
    fn a_wall_clock_instant_maps_to_the_monotonic_clock() {
        let ahead = SystemTime::now() + Duration::from_millis(300);
        let ns = ahead.duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let at = instant_of(ns);
        let left = at.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_millis(200) && left <= Duration::from_millis(300));
        let past = instant_of(0);
        assert!(past <= Instant::now());
    }
}
