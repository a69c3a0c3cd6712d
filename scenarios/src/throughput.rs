//! `throughput`, issue 6's question "how close do durable orders come to a bare endpoint on the same machine?":
//! `connections` lanes, each with one kept-alive connection opened before the clock, send orders back to back (a
//! closed loop) for a warm-up and then a measured window; the rate is the 201s answered within the window. The
//! same loop and the same orders ([`Burst::order`]: body, headers, `Idempotency-Key`) run against boxoffice
//! (buyers and a general-admission concert set up off the clock with [`burst::create_users`] and
//! [`burst::create_concert`], the counts checked afterwards with [`burst::check`]) and against the bare endpoint
//! of [`crate::bare`].
//!
//! No order may be refused for a limit or a sold-out concert, whatever the rate: [`BUYERS`] buyers take the orders
//! in turn, each at most [`TICKETS_PER_BUYER_MAX`] (the server's `--max-tickets-per-user` is set to it), and the
//! concert has a ticket for every one of those [`ORDERS_MAX`] orders. A loop that would need more stops and the
//! run fails rather than report a rate of a different experiment.
//!
//! Against a cluster the lanes are spread over its entry points; with [`Routing::Home`] or [`Routing::Away`] (the
//! hop's loops, [`crate::forwarding`]) each lane sends only orders of buyers who live on its target node, or only
//! of buyers who live elsewhere. The CPU time of the server processes within the window ([`cpu_seconds`]) gives
//! the CPU an order costs.

use crate::burst::{self, APPROVED_CARD, Burst, Buyer, Routing, USERS_PER_BULK_CALL_MAX};
use crate::client::{Connection, Endpoints, Failure, Target};
use crate::report::{Invariants, Outcome, ThroughputReport, ThroughputRun};
use crate::server::cpu_seconds;
use crate::stats::{Summary, round_to};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Buyers of a run: one bulk call's worth.
pub const BUYERS: u64 = USERS_PER_BULK_CALL_MAX;
/// Tickets one buyer may take: the spawned server's `--max-tickets-per-user`.
pub const TICKETS_PER_BUYER_MAX: u64 = 1_000;
/// Orders of one ticket a run can place without a refusal, and the concert's capacity.
pub const ORDERS_MAX: u64 = BUYERS * TICKETS_PER_BUYER_MAX;
/// The largest general-admission concert a node accepts.
const CONCERT_TICKETS_MAX: u64 = 10_000_000;
const _: () = assert!(ORDERS_MAX <= CONCERT_TICKETS_MAX);
/// A lane whose request got no answer waits this long before the next, so that a server that is gone is not
/// hammered with connection attempts.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(10);
/// The bare endpoint's stand-ins for a buyer's bearer token (43 characters, as boxoffice's) and a concert id (a
/// prefix and 20 hex digits), so that its requests are as long as real ones.
const BARE_TOKEN: &str = "bare-endpoint-token-of-a-real-tokens-length";
const BARE_CONCERT_ID: &str = "c_00000000000000000000";

/// How long a loop runs.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub connections: u64,
    pub warmup: Duration,
    pub measured: Duration,
}

/// The clock of one loop: it starts when every lane has its connection.
#[derive(Clone, Copy, Debug)]
struct Window {
    measured_from: Instant,
    ends: Instant,
}

impl Window {
    fn starting_now(shape: &Shape) -> Self {
        let measured_from = Instant::now() + shape.warmup;
        Self {
            measured_from,
            ends: measured_from + shape.measured,
        }
    }

    fn holds(&self, at: Instant) -> bool {
        self.measured_from <= at && at < self.ends
    }
}

/// What a lane, then the whole loop, counted.
#[derive(Debug, Default)]
pub struct Tally {
    pub orders: u64,
    pub created: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub measured_created: u64,
    /// Every answer within the window, from sending its request.
    pub measured_latencies_ms: Vec<f64>,
    /// CPU seconds the server processes spent within the window, when read.
    pub cpu_s: Option<f64>,
}

impl Tally {
    fn record(
        &mut self,
        sent: Instant,
        done: Instant,
        answer: Result<Outcome, Failure>,
        window: &Window,
    ) {
        self.orders += 1;
        let measured = window.holds(done);
        let kind = match answer {
            Ok(Outcome::Ok) => {
                self.created += 1;
                self.measured_created += u64::from(measured);
                None
            }
            Ok(Outcome::SoldOut) => Some("409 sold_out".to_owned()),
            Ok(Outcome::Error(kind)) => Some(kind),
            Err(failure) => {
                self.transport_errors += 1;
                Some(failure.kind().to_owned())
            }
        };
        if let Some(kind) = kind {
            *self.errors_by_kind.entry(kind).or_insert(0) += 1;
        }
        if measured {
            self.measured_latencies_ms
                .push(done.duration_since(sent).as_secs_f64() * 1000.0);
        }
    }

    fn merge(&mut self, lane: Tally) {
        self.orders += lane.orders;
        self.created += lane.created;
        self.transport_errors += lane.transport_errors;
        self.measured_created += lane.measured_created;
        for (kind, count) in lane.errors_by_kind {
            *self.errors_by_kind.entry(kind).or_insert(0) += count;
        }
        self.measured_latencies_ms
            .extend(lane.measured_latencies_ms);
    }

    /// The run's figures; `measured_s` is the window's length.
    pub fn into_run(
        self,
        endpoint: String,
        flags: Vec<String>,
        measured_s: f64,
        invariants: Option<Invariants>,
        exit: String,
    ) -> ThroughputRun {
        assert!(measured_s > 0.0, "a window has a length");
        let cpu_us_per_order = self
            .cpu_s
            .filter(|_| self.measured_created > 0)
            .map(|cpu| round_to(cpu * 1e6 / self.measured_created as f64, 1));
        ThroughputRun {
            endpoint,
            flags,
            orders: self.orders,
            created: self.created,
            errors_by_kind: self.errors_by_kind,
            transport_errors: self.transport_errors,
            measured_s,
            measured_created: self.measured_created,
            created_per_s: round_to(self.measured_created as f64 / measured_s, 1),
            latency_ms: Summary::of(&self.measured_latencies_ms).map(|s| s.rounded(3)),
            invariants,
            exit,
            cpu_s: self.cpu_s.map(|cpu| round_to(cpu, 3)),
            cpu_us_per_order,
        }
    }
}

/// A concert of [`ORDERS_MAX`] tickets and [`BUYERS`] buyers to order them, set up through `target`.
pub struct Sale {
    pub concert_id: String,
    pub buyers: Vec<Buyer>,
}

impl Sale {
    pub async fn set_up(
        target: &Target,
        admin_token: &str,
        prefix: &str,
        shards: Option<u32>,
    ) -> Result<Sale, String> {
        let setup_started = Instant::now();
        let buyers =
            burst::create_buyers(target, admin_token, prefix, BUYERS, APPROVED_CARD).await?;
        let concert_id = burst::create_concert(target, admin_token, ORDERS_MAX, shards).await?;
        eprintln!(
            "{BUYERS} buyers and a concert of {ORDERS_MAX} tickets set up in {:.1} s",
            setup_started.elapsed().as_secs_f64()
        );
        Ok(Sale { concert_id, buyers })
    }
}

/// Against a boxoffice node or cluster: sets up a [`Sale`], runs the loop over every target (buyers in turn), then
/// reads the concert's counts back. `pids`: the server processes, whose CPU time is measured.
pub async fn boxoffice(
    endpoints: &Endpoints,
    admin_token: &str,
    prefix: &str,
    shards: Option<u32>,
    shape: &Shape,
    pids: &[u32],
) -> Result<(Tally, Invariants), String> {
    let target = endpoints.first();
    let sale = Sale::set_up(target, admin_token, prefix, shards).await?;
    let tally = closed_loop(
        &endpoints.targets,
        sale.buyers,
        &sale.concert_id,
        prefix,
        shape,
        (Routing::Any, TICKETS_PER_BUYER_MAX),
        pids,
    )
    .await?;
    let invariants = burst::check(target, &sale.concert_id, tally.created).await?;
    Ok((tally, invariants))
}

/// Against the bare endpoint: the same requests, with stand-ins for the token and the concert.
pub async fn bare(
    target: &Target,
    prefix: &str,
    shape: &Shape,
    pids: &[u32],
) -> Result<Tally, String> {
    let buyer = Buyer {
        token: BARE_TOKEN.to_owned(),
        node: None,
    };
    closed_loop(
        std::slice::from_ref(target),
        vec![buyer],
        BARE_CONCERT_ID,
        prefix,
        shape,
        (Routing::Any, ORDERS_MAX),
        pids,
    )
    .await
}

/// Opens every lane's connection (lane `l` to `targets[l % len]`), then starts the clock and runs the lanes until
/// the window ends; waits for the answers still on their way. Each buyer places at most `rounds` orders (per pool
/// of the routing). Fails when the loop ran out of orders it may place.
pub async fn closed_loop(
    targets: &[Target],
    buyers: Vec<Buyer>,
    concert_id: &str,
    prefix: &str,
    shape: &Shape,
    (routing, rounds): (Routing, u64),
    pids: &[u32],
) -> Result<Tally, String> {
    assert!(shape.connections >= 1);
    let orders = Arc::new(Burst::new(
        targets, concert_id, buyers, prefix, routing, rounds,
    )?);
    let ran_out = Arc::new(AtomicBool::new(false));
    let lanes = usize::try_from(shape.connections).map_err(|_| "too many connections")?;
    let connections = connect_all(&orders, lanes).await?;
    let window = Window::starting_now(shape);
    let cpu = tokio::spawn(cpu_within(window, pids.to_vec()));
    let mut tasks = tokio::task::JoinSet::new();
    for (lane, connection) in connections.into_iter().enumerate() {
        let (orders, ran_out) = (orders.clone(), ran_out.clone());
        tasks.spawn(async move { run_lane(&orders, &ran_out, lane, connection, window).await });
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        tally.merge(joined.map_err(|error| format!("a lane failed: {error}"))?);
    }
    tally.cpu_s = cpu.await.ok().flatten();
    if ran_out.load(Ordering::Relaxed) {
        return Err(format!(
            "the loop placed all {} orders it may ({} buyers, {rounds} tickets each) before its window ended: run \
             fewer --seconds",
            orders.orders(),
            BUYERS
        ));
    }
    Ok(tally)
}

/// The CPU seconds `pids` spend between the window's start and end, all together; `None` when a process's could
/// not be read (or there are none).
async fn cpu_within(window: Window, pids: Vec<u32>) -> Option<f64> {
    let total = |pids: &[u32]| -> Option<f64> {
        pids.iter()
            .map(|pid| cpu_seconds(*pid))
            .sum::<Option<f64>>()
    };
    if pids.is_empty() {
        return None;
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.measured_from)).await;
    let before = total(&pids)?;
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.ends)).await;
    Some(total(&pids)? - before)
}

/// One kept-alive connection per lane, to its target, opened before the clock starts.
async fn connect_all(orders: &Arc<Burst>, lanes: usize) -> Result<Vec<Connection>, String> {
    let mut connecting = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let orders = orders.clone();
        connecting.spawn(async move { (lane, orders.target_for(lane).connect(lane).await) });
    }
    let mut connections: Vec<Option<Connection>> = (0..lanes).map(|_| None).collect();
    while let Some(joined) = connecting.join_next().await {
        let (lane, connected) = joined.map_err(|error| format!("connecting failed: {error}"))?;
        connections[lane] =
            Some(connected.map_err(|failure| format!("connection {lane}: {failure}"))?);
    }
    Ok(connections.into_iter().flatten().collect())
}

/// One lane: orders back to back until the window ends, or until its buyers have placed all they may.
async fn run_lane(
    orders: &Burst,
    ran_out: &AtomicBool,
    lane: usize,
    connection: Connection,
    window: Window,
) -> Tally {
    let mut connection = Some(connection);
    let mut tally = Tally::default();
    while Instant::now() < window.ends {
        // Buyers take orders in turn, none more than `rounds` times.
        let Some(claim) = orders.take(lane) else {
            ran_out.store(true, Ordering::Relaxed);
            break;
        };
        let sent = Instant::now();
        let answer = orders.order(lane, &mut connection, claim).await;
        let failed = answer.is_err();
        tally.record(sent, Instant::now(), answer, &window);
        if failed {
            tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
        }
    }
    tally
}

/// One run in a line, for the terminal.
pub fn run_line(run: &ThroughputRun) -> String {
    let latency = run
        .latency_ms
        .map_or("no answer in the window".to_owned(), |l| {
            format!(
                "latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
                l.p50, l.p90, l.p99, l.max
            )
        });
    let counts = match &run.invariants {
        None => String::new(),
        Some(counts) if counts.hold => "; counts add up".to_owned(),
        Some(counts) => format!("; counts BROKEN: {}", counts.problems.join("; ")),
    };
    let cpu = run.cpu_us_per_order.map_or(String::new(), |us| {
        format!("; server CPU {us:.0} us per order")
    });
    format!(
        "{}: {:.1} orders/s ({} 201s in {} s); {} orders sent in all, {} answered 201, errors {} {:?}; \
         {latency}{cpu}{counts}",
        run.endpoint,
        run.created_per_s,
        run.measured_created,
        run.measured_s,
        run.orders,
        run.created,
        run.orders - run.created,
        run.errors_by_kind,
    )
}

/// The three rates and their ratios in a line.
pub fn summary_line(report: &ThroughputReport) -> String {
    let rate = |run: &Option<ThroughputRun>| {
        run.as_ref()
            .map_or("-".to_owned(), |run| format!("{:.1}", run.created_per_s))
    };
    let ratio = |ratio: Option<f64>| ratio.map_or("-".to_owned(), |r| format!("{r:.3}"));
    let mut line = format!(
        "throughput ({} connections, {} s measured): durable {} orders/s, durability none {}, bare axum {}; \
         durable/bare {}, durable/none {}",
        report.connections,
        report.seconds,
        rate(&report.durable),
        rate(&report.durability_none),
        rate(&report.bare),
        ratio(report.ratio_durable_to_bare),
        ratio(report.ratio_durable_to_none),
    );
    if report.cluster.is_some() {
        line.push_str(&format!(
            "; cluster {} orders/s, cluster/durable {}",
            rate(&report.cluster),
            ratio(report.ratio_cluster_to_durable)
        ));
    }
    if let Some(hop) = &report.hop {
        line.push_str(&format!("; {}", crate::forwarding::hop_line(hop)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_within_the_window_are_measured_and_every_answer_is_counted() {
        let start = Instant::now();
        let window = Window {
            measured_from: start + Duration::from_secs(2),
            ends: start + Duration::from_secs(12),
        };
        let at = |s: u64| start + Duration::from_secs(s);
        let mut lane = Tally::default();
        lane.record(at(0), at(1), Ok(Outcome::Ok), &window);
        lane.record(at(1), at(2), Ok(Outcome::Ok), &window);
        lane.record(
            at(2),
            at(4),
            Ok(Outcome::Error("503 overloaded".into())),
            &window,
        );
        lane.record(at(11), at(12), Ok(Outcome::Ok), &window);
        let mut other = Tally::default();
        other.record(at(3), at(5), Err(Failure::Timeout), &window);
        other.record(at(5), at(6), Ok(Outcome::SoldOut), &window);
        let mut tally = Tally::default();
        tally.merge(lane);
        tally.merge(other);
        assert_eq!((tally.orders, tally.created), (6, 3));
        assert_eq!(tally.measured_created, 1, "only the 201 answered at 2 s");
        assert_eq!(tally.transport_errors, 1);
        assert_eq!(tally.errors_by_kind["503 overloaded"], 1);
        assert_eq!(tally.errors_by_kind["409 sold_out"], 1);
        assert_eq!(tally.errors_by_kind["transport timeout"], 1);
        let run = tally.into_run(
            "bare".into(),
            Vec::new(),
            10.0,
            None,
            "exit status: 0".into(),
        );
        assert_eq!(run.created_per_s, 0.1);
        let latency = run.latency_ms.expect("four answers in the window");
        assert_eq!((latency.min, latency.max), (1000.0, 2000.0));
    }

    #[test]
    fn no_buyer_passes_the_limit_and_the_concert_never_sells_out() {
        assert_eq!(ORDERS_MAX.div_ceil(BUYERS), TICKETS_PER_BUYER_MAX);
        assert_eq!(BARE_TOKEN.len(), 43);
        assert_eq!(BARE_CONCERT_ID.len(), 22);
    }
}
