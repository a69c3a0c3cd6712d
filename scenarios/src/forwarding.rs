//! The cost of a forwarding hop in a cluster: an order is executed by its buyer's node, so one that reaches another
//! process is forwarded there over the internal HTTP/2 transport. On one cluster of shard nodes (no fronts), with
//! one sale, four closed loops of [`crate::throughput`] one after the other:
//!
//! - `direct`: lane `l` goes to node `l % N` and sends only orders of buyers who live on that node (none forwarded);
//! - `forwarded`: the same lanes, only orders of buyers who live on another node (every one forwarded once);
//! - the same two with one connection (`alone`): one order at a time, the latency of an order without a queue.
//!
//! The loaded pair gives the CPU time a forwarded order adds (the server processes' CPU within the window per
//! order, forwarded minus direct) and what forwarding leaves of the rate; the alone pair the latency a hop adds
//! (median forwarded minus median direct).

use crate::burst::{self, Routing};
use crate::client::Target;
use crate::report::{Invariants, ThroughputRun};
use crate::stats::round_to;
use crate::throughput::{self, Sale, Shape, TICKETS_PER_BUYER_MAX, Tally};
use serde::Serialize;

/// Loops of a hop measurement: each buyer may place a quarter of its tickets in each.
const LOOPS: u64 = 4;

/// What a hop costs, and the loops it was measured with.
#[derive(Clone, Debug, Serialize)]
pub struct Hop {
    pub nodes: u32,
    /// Connections of the loaded loops.
    pub connections: u64,
    pub direct: ThroughputRun,
    pub forwarded: ThroughputRun,
    pub direct_alone: ThroughputRun,
    pub forwarded_alone: ThroughputRun,
    /// Forwarded orders per second over direct ones, at the loaded loops' connections.
    pub rate_ratio: Option<f64>,
    /// CPU time one forwarded order costs more than a direct one, all processes together, in microseconds.
    pub cpu_us_added: Option<f64>,
    /// The same as a share of a direct order's CPU time: what the planner uses.
    pub cpu_share_added: Option<f64>,
    /// Median latency of a forwarded order alone minus a direct one's, in milliseconds.
    pub latency_ms_added: Option<f64>,
    /// The same at the loaded loops' connections (queueing included).
    pub latency_ms_added_loaded: Option<f64>,
    /// The concert's counts after the four loops, against every 201 they counted.
    pub invariants: Invariants,
}

impl Hop {
    /// The four loops, in the order they ran.
    pub fn runs(&self) -> impl Iterator<Item = &ThroughputRun> {
        [
            &self.direct,
            &self.forwarded,
            &self.direct_alone,
            &self.forwarded_alone,
        ]
        .into_iter()
    }

    fn compare(&mut self) {
        let p50 = |run: &ThroughputRun| run.latency_ms.map(|l| l.p50);
        let minus = |a: Option<f64>, b: Option<f64>, decimals| {
            a.zip(b).map(|(a, b)| round_to(a - b, decimals))
        };
        self.rate_ratio = (self.direct.created_per_s > 0.0)
            .then(|| round_to(self.forwarded.created_per_s / self.direct.created_per_s, 3));
        self.cpu_us_added = minus(
            self.forwarded.cpu_us_per_order,
            self.direct.cpu_us_per_order,
            1,
        );
        self.cpu_share_added = self
            .cpu_us_added
            .zip(self.direct.cpu_us_per_order)
            .filter(|(_, direct)| *direct > 0.0)
            .map(|(added, direct)| round_to(added / direct, 3));
        self.latency_ms_added = minus(p50(&self.forwarded_alone), p50(&self.direct_alone), 3);
        self.latency_ms_added_loaded = minus(p50(&self.forwarded), p50(&self.direct), 3);
    }
}

/// Measures a hop on the cluster whose shard nodes are `nodes` (node `k` at `k`), whose processes are `pids`:
/// `loaded` shapes the first pair of loops, `alone` (one connection) the second.
pub async fn measure(
    nodes: &[Target],
    admin_token: &str,
    prefix: &str,
    shards: Option<u32>,
    (loaded, alone): (&Shape, &Shape),
    pids: &[u32],
) -> Result<Hop, String> {
    assert!(nodes.len() >= 2, "a hop needs two nodes");
    let sale = Sale::set_up(&nodes[0], admin_token, prefix, shards).await?;
    // A buyer is in one direct pool and in N - 1 forwarded ones; four loops share its tickets.
    let rounds = TICKETS_PER_BUYER_MAX / LOOPS / (nodes.len() as u64 - 1);
    let count = nodes.len() as u32;
    let mut runs = Vec::new();
    for (number, (routing, shape, name)) in [
        (Routing::Home, loaded, "orders sent to the buyer's node"),
        (
            Routing::Away,
            loaded,
            "orders sent to another node (forwarded)",
        ),
        (Routing::Home, alone, "one at a time, to the buyer's node"),
        (
            Routing::Away,
            alone,
            "one at a time, to another node (forwarded)",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        eprintln!(
            "hop: {count}-node cluster, {name}, {} connections, {} s measured",
            shape.connections,
            shape.measured.as_secs()
        );
        let tally = throughput::closed_loop(
            nodes,
            sale.buyers.clone(),
            &sale.concert_id,
            &format!("{prefix}h{number}-"),
            shape,
            (routing, rounds),
            pids,
        )
        .await?;
        runs.push((format!("{count}-node cluster, {name}"), tally, shape));
    }
    let created: u64 = runs.iter().map(|(_, tally, _)| tally.created).sum();
    let invariants = burst::check(&nodes[0], &sale.concert_id, created).await?;
    let mut runs = runs
        .into_iter()
        .map(|(endpoint, tally, shape): (_, Tally, _)| {
            tally.into_run(
                endpoint,
                Vec::new(),
                shape.measured.as_secs_f64(),
                None,
                String::new(),
            )
        });
    let mut next = || runs.next().expect("four loops");
    let mut hop = Hop {
        nodes: count,
        connections: loaded.connections,
        direct: next(),
        forwarded: next(),
        direct_alone: next(),
        forwarded_alone: next(),
        rate_ratio: None,
        cpu_us_added: None,
        cpu_share_added: None,
        latency_ms_added: None,
        latency_ms_added_loaded: None,
        invariants,
    };
    hop.compare();
    Ok(hop)
}

/// The hop in a line, for the terminal.
pub fn hop_line(hop: &Hop) -> String {
    let or_dash = |value: Option<f64>, unit: &str| {
        value.map_or("-".to_owned(), |value| format!("{value}{unit}"))
    };
    format!(
        "forwarding hop ({}-node cluster): +{} CPU per order ({} of a direct order's), +{} latency alone (+{} at {} \
         connections), forwarded / direct rate {}; counts {}",
        hop.nodes,
        or_dash(hop.cpu_us_added, " us"),
        hop.cpu_share_added
            .map_or("-".to_owned(), |share| format!("+{:.0}%", share * 100.0)),
        or_dash(hop.latency_ms_added, " ms"),
        or_dash(hop.latency_ms_added_loaded, " ms"),
        hop.connections,
        or_dash(hop.rate_ratio, ""),
        if hop.invariants.hold {
            "add up".to_owned()
        } else {
            format!("BROKEN: {}", hop.invariants.problems.join("; "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    fn run(rate: f64, cpu_us: f64, p50_ms: f64) -> ThroughputRun {
        ThroughputRun {
            endpoint: "loop".into(),
            flags: Vec::new(),
            orders: 10,
            created: 10,
            errors_by_kind: Default::default(),
            transport_errors: 0,
            measured_s: 1.0,
            measured_created: 10,
            created_per_s: rate,
            latency_ms: Summary::of(&[p50_ms]),
            invariants: None,
            exit: String::new(),
            cpu_s: None,
            cpu_us_per_order: Some(cpu_us),
        }
    }

    #[test]
    fn a_hop_is_the_forwarded_loops_minus_the_direct_ones() {
        let mut hop = Hop {
            nodes: 3,
            connections: 256,
            direct: run(10_000.0, 150.0, 20.0),
            forwarded: run(6_000.0, 285.0, 38.0),
            direct_alone: run(900.0, 700.0, 1.05),
            forwarded_alone: run(780.0, 860.0, 1.25),
            rate_ratio: None,
            cpu_us_added: None,
            cpu_share_added: None,
            latency_ms_added: None,
            latency_ms_added_loaded: None,
            invariants: Invariants::check(10, 0, 0, 10, 10),
        };
        hop.compare();
        assert_eq!(hop.rate_ratio, Some(0.6));
        assert_eq!(hop.cpu_us_added, Some(135.0));
        assert_eq!(hop.cpu_share_added, Some(0.9));
        assert_eq!(hop.latency_ms_added, Some(0.2));
        assert_eq!(hop.latency_ms_added_loaded, Some(18.0));
        assert_eq!(hop.runs().count(), 4);
        let line = hop_line(&hop);
        assert!(line.contains("+135 us CPU per order (+90%"), "{line}");
    }
}
