//! What a run measured, as `report.json` carries it: one [`BurstReport`] per burst (at the top level for
//! `burst`, under `points` for sweeps and peak searches), built from the raw [`Sample`]s by [`summarize`]; and
//! writing the report's files (`report.json`, `report.html`, `samples.csv`).

use crate::netstat::TcpCounters;
use crate::peak::Peak;
use crate::stats::{Summary, round_to};
use crate::study;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// How one order ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 201 with a confirmed order of one ticket.
    Ok,
    /// 409 `sold_out`.
    SoldOut,
    /// Anything else: `"<status> <code>"` for an HTTP answer, `"transport <kind>"` when none came.
    Error(String),
}

/// One order of a burst; times in milliseconds since the burst started.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// When the request was sent: later than 0 when it waited for one of the `--concurrency` slots.
    pub sent_ms: f64,
    /// When its response had been read.
    pub done_ms: f64,
    pub outcome: Outcome,
    /// The target it was sent to: its place in the run's list (`--target`, or the spawned cluster's entry points).
    pub target: u32,
    /// The shard node its buyer lives on (the `u_<node>-` of the buyer's id in a cluster); `None` on a single node.
    pub node: Option<u32>,
}

impl Outcome {
    /// The HTTP status it came with, when one came: 201, 409, or the status an error names.
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Ok => Some(201),
            Outcome::SoldOut => Some(409),
            Outcome::Error(kind) => kind.split(' ').next().and_then(|code| code.parse().ok()),
        }
    }
}

impl Sample {
    /// From the start of the burst: the time a buyer who clicked at that moment waited, queueing included.
    pub fn latency_ms(&self) -> f64 {
        self.done_ms
    }

    /// From sending the request: what the server (and the connection) took.
    pub fn service_ms(&self) -> f64 {
        self.done_ms - self.sent_ms
    }
}

/// The counts read back through the API after a burst, and whether they add up.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Invariants {
    pub capacity: u64,
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
    /// `remaining + held + sold == capacity` and `sold == ok`.
    pub hold: bool,
    pub problems: Vec<String>,
}

impl Invariants {
    /// Checks the counts a concert reports against each other and against the orders that succeeded.
    pub fn check(capacity: u64, remaining: u64, held: u64, sold: u64, ok: u64) -> Self {
        let mut problems = Vec::new();
        if remaining + held + sold != capacity {
            problems.push(format!(
                "remaining {remaining} + held {held} + sold {sold} != capacity {capacity}"
            ));
        }
        if sold != ok {
            problems.push(format!(
                "sold {sold} != {ok} orders answered 201 (one ticket each)"
            ));
        }
        Self {
            capacity,
            remaining,
            held,
            sold,
            hold: problems.is_empty(),
            problems,
        }
    }
}

/// What the run was asked to do, for the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BurstParameters {
    pub users: u64,
    pub concurrency: u64,
    pub capacity: u64,
    /// The server's simulated provider latency, when known (always with `--spawn`).
    pub payment_latency_ms: Option<u64>,
    /// `--client-processes`: the lanes ran in this many processes of `boxoffice-load`, each with its connections
    /// opened before the start; `None`: in this process, each lane connecting at the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_processes: Option<u64>,
}

/// How the orders sent somewhere (a target, or by the users of a node) ended, by answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    pub orders: u64,
    /// 201, the order confirmed.
    pub ok_201: u64,
    /// 409: sold out, or another conflict (the kinds are in the burst's `errors_by_kind`).
    pub conflict_409: u64,
    /// 503: overloaded, a node unavailable, a timeout.
    pub unavailable_503: u64,
    /// Any other status, and requests without an answer (transport errors).
    pub errors: u64,
}

impl Outcomes {
    fn count(&mut self, outcome: &Outcome) {
        self.orders += 1;
        match (outcome, outcome.status()) {
            (Outcome::Ok, _) => self.ok_201 += 1,
            (_, Some(409)) => self.conflict_409 += 1,
            (_, Some(503)) => self.unavailable_503 += 1,
            _ => self.errors += 1,
        }
    }
}

/// The orders one target was sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetOutcomes {
    pub url: String,
    #[serde(flatten)]
    pub outcomes: Outcomes,
}

/// The orders of one shard node's users: the node that executed them, wherever they were sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeOutcomes {
    pub node: u32,
    #[serde(flatten)]
    pub outcomes: Outcomes,
    /// The node's public URL, when the run started the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What the node's `/metrics` counted over the burst (`boxoffice_orders_total` by outcome, the orders it
    /// coordinated), when the run started the cluster: the same orders seen from the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinated: Option<BTreeMap<String, u64>>,
}

/// The orders of `samples` by the target they were sent to; `urls[i]` is target `i`. Every target is listed, even
/// one that was sent nothing.
pub fn by_target(samples: &[Sample], urls: &[String]) -> Vec<TargetOutcomes> {
    let mut targets: Vec<TargetOutcomes> = urls
        .iter()
        .map(|url| TargetOutcomes {
            url: url.clone(),
            outcomes: Outcomes::default(),
        })
        .collect();
    for sample in samples {
        let at = sample.target as usize;
        while targets.len() <= at {
            targets.push(TargetOutcomes {
                url: format!("target {}", targets.len()),
                outcomes: Outcomes::default(),
            });
        }
        targets[at].outcomes.count(&sample.outcome);
    }
    targets
}

/// The orders of `samples` by the node their buyer lives on; empty when no buyer lives on a known node (a single
/// node). Orders of buyers on no known node, if some are, count under none.
pub fn by_node(samples: &[Sample]) -> Vec<NodeOutcomes> {
    let mut nodes: BTreeMap<u32, Outcomes> = BTreeMap::new();
    for sample in samples {
        if let Some(node) = sample.node {
            nodes.entry(node).or_default().count(&sample.outcome);
        }
    }
    nodes
        .into_iter()
        .map(|(node, outcomes)| NodeOutcomes {
            node,
            outcomes,
            url: None,
            coordinated: None,
        })
        .collect()
}

/// The figures of one burst. Latencies are in milliseconds from the start of the burst.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BurstReport {
    #[serde(flatten)]
    pub parameters: BurstParameters,
    pub orders: u64,
    pub ok: u64,
    pub sold_out: u64,
    pub errors: u64,
    /// Errors by `"<status> <code>"` or `"transport <kind>"`.
    pub errors_by_kind: BTreeMap<String, u64>,
    pub latency_ms: Summary,
    /// From sending each request rather than from the start of the burst; equal to `latency_ms` give or take
    /// the client's own scheduling when `concurrency == users`.
    pub service_ms: Summary,
    /// When each request left the client, from the start of the burst: how simultaneous the burst was (above 0 when
    /// orders waited for a lane, or the client took that long to write them all).
    pub sent_ms: Summary,
    /// From the start of the burst to the last response.
    pub duration_s: f64,
    /// Responses per second over `duration_s`.
    pub throughput_per_s: f64,
    /// Orders answered 201 per second over `duration_s`.
    pub ok_per_s: f64,
    /// Creating and fetching the users and creating the concert, before the clock started.
    pub setup_s: f64,
    pub invariants: Invariants,
    /// The machine's TCP counters over the burst (Linux), when known.
    pub kernel_tcp: Option<TcpCounters>,
    /// The orders by the target they were sent to, in the order of the targets.
    pub targets: Vec<TargetOutcomes>,
    /// In a cluster, the orders by the shard node of their buyer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeOutcomes>,
}

impl BurstReport {
    /// Whether the burst held an objective: every order answered (201 or sold out) within `slo_ms`, and the
    /// counts add up.
    pub fn holds(&self, slo_ms: f64) -> bool {
        self.errors == 0 && self.latency_ms.max <= slo_ms && self.invariants.hold
    }
}

/// Condenses the samples of one burst. `samples` is not empty.
pub fn summarize(
    parameters: BurstParameters,
    samples: &[Sample],
    setup_s: f64,
    invariants: Invariants,
) -> BurstReport {
    assert!(!samples.is_empty(), "a burst has orders");
    let mut ok = 0;
    let mut sold_out = 0;
    let mut errors_by_kind = BTreeMap::new();
    for sample in samples {
        match &sample.outcome {
            Outcome::Ok => ok += 1,
            Outcome::SoldOut => sold_out += 1,
            Outcome::Error(kind) => *errors_by_kind.entry(kind.clone()).or_insert(0) += 1,
        }
    }
    let errors: u64 = errors_by_kind.values().sum();
    let orders = samples.len() as u64;
    assert_eq!(ok + sold_out + errors, orders);
    let latencies: Vec<f64> = samples.iter().map(Sample::latency_ms).collect();
    let services: Vec<f64> = samples.iter().map(Sample::service_ms).collect();
    let sent: Vec<f64> = samples.iter().map(|sample| sample.sent_ms).collect();
    let latency_ms = Summary::of(&latencies).expect("samples");
    let duration_s = latency_ms.max / 1000.0;
    let per_s = |count: u64| {
        if duration_s > 0.0 {
            round_to(count as f64 / duration_s, 1)
        } else {
            0.0
        }
    };
    BurstReport {
        parameters,
        orders,
        ok,
        sold_out,
        errors,
        errors_by_kind,
        latency_ms: latency_ms.rounded(3),
        service_ms: Summary::of(&services).expect("samples").rounded(3),
        sent_ms: Summary::of(&sent).expect("samples").rounded(3),
        duration_s: round_to(duration_s, 3),
        throughput_per_s: per_s(orders),
        ok_per_s: per_s(ok),
        setup_s: round_to(setup_s, 3),
        invariants,
        kernel_tcp: None,
        targets: Vec::new(),
        nodes: by_node(samples),
    }
}

/// The servers a run started itself (`--spawn`): one per burst, or one cluster's processes per burst.
#[derive(Clone, Debug, Serialize)]
pub struct SpawnedServers {
    pub binary: String,
    pub runs: Vec<ServerRun>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerRun {
    /// `node`, or in a cluster `node 0`, `node 1`, ..., `front 0`, ...
    pub process: String,
    /// Its public URL.
    pub url: String,
    /// Its log (stderr, and stdout after the first line), in the report's directory.
    pub log: String,
    /// The flags of `boxoffice serve` besides `--listen` and `--data-dir`.
    pub flags: Vec<String>,
    /// How it ended after SIGTERM (`exit status: 0` when all went well).
    pub exit: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    /// The open-files limit the run had (soft = hard after raising it); the server inherits it with `--spawn`.
    pub open_files_max: u64,
    pub source_addresses: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeakReport {
    pub slo_s: f64,
    #[serde(flatten)]
    pub peak: Peak,
}

/// `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The command line, for running it again.
    pub command: String,
    pub started_at: String,
    pub target: String,
    pub spawned: Option<SpawnedServers>,
    pub machine: Machine,
    /// `burst`: its figures, at the top level.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub burst: Option<BurstReport>,
    /// `sweep-payment`, `peak` and `plan`: one entry per burst, in the order they ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<BurstReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<PeakReport>,
    /// `plan`: the calibration, the question, the model's answer and, with `--verify`, its error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanReport>,
    /// `throughput`: durable orders per second against the same node without durability and a bare endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<ThroughputReport>,
    /// `flash-sale`: the buyers' outcomes, the requests, the feed and the checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flash_sale: Option<crate::flash::FlashReport>,
    pub study: study::Figures,
}

#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    /// Measured by a calibration burst, or given.
    pub calibration: crate::model::Calibration,
    pub calibrated: bool,
    pub question: crate::model::Question,
    pub prediction: crate::model::Prediction,
    /// With --spawn-cluster: the forwarding hop the calibration measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<crate::forwarding::Hop>,
    pub verification: Option<Verification>,
}

/// The planned burst, measured, against the prediction.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Verification {
    pub measured_max_s: f64,
    pub measured_mean_s: f64,
    pub measured_throughput_per_s: f64,
    /// `(measured - predicted) / measured`, percent: positive when the model was optimistic.
    pub max_error_percent: f64,
    pub mean_error_percent: f64,
    pub throughput_error_percent: f64,
}

/// `throughput`: closed loops of the same `connections`, one after the other, each on servers of its own; a run is
/// filled in when it has been measured, the ratios when both of their runs have.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ThroughputReport {
    pub connections: u64,
    pub warmup_s: u64,
    /// The length of each measured window.
    pub seconds: u64,
    /// boxoffice with `--durability fsync`: every 201 on disk first.
    pub durable: Option<ThroughputRun>,
    /// A cluster (`--spawn-cluster N`, `--fronts M`) on the same machine, durable: lanes spread over its entry
    /// points, buyers in turn (so an order usually reaches a process that is not its buyer's node and is
    /// forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ThroughputRun>,
    /// The cost of a forwarding hop, measured on an N-node cluster of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop: Option<crate::forwarding::Hop>,
    /// boxoffice with `--durability none`.
    pub durability_none: Option<ThroughputRun>,
    /// The bare axum endpoint (`boxoffice-load serve-bare`).
    pub bare: Option<ThroughputRun>,
    /// Durable orders per second over the bare endpoint's 201s per second.
    pub ratio_durable_to_bare: Option<f64>,
    /// Durable orders per second over those without durability: what durability leaves of the rate.
    pub ratio_durable_to_none: Option<f64>,
    /// The cluster's orders per second over the single durable node's, on the same machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_cluster_to_durable: Option<f64>,
}

impl ThroughputReport {
    /// Fills in the ratios of the runs measured so far.
    pub fn compare(&mut self) {
        let ratio = |of: &Option<ThroughputRun>, to: &Option<ThroughputRun>| match (of, to) {
            (Some(of), Some(to)) if to.created_per_s > 0.0 => {
                Some(round_to(of.created_per_s / to.created_per_s, 3))
            }
            _ => None,
        };
        self.ratio_durable_to_bare = ratio(&self.durable, &self.bare);
        self.ratio_durable_to_none = ratio(&self.durable, &self.durability_none);
        self.ratio_cluster_to_durable = ratio(&self.cluster, &self.durable);
    }

    /// The runs measured so far, in the order they run (the hop's loops included).
    pub fn runs(&self) -> impl Iterator<Item = &ThroughputRun> {
        let hop = self.hop.iter().flat_map(|hop| hop.runs());
        [&self.durable, &self.cluster]
            .into_iter()
            .flatten()
            .chain(hop)
            .chain([&self.durability_none, &self.bare].into_iter().flatten())
    }
}

/// One closed loop: every connection sends orders back to back through the warm-up and the measured window; the
/// rate and the latencies are of the answers that came within the window, the counts of the whole run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThroughputRun {
    /// What answered, e.g. `boxoffice serve --durability fsync`.
    pub endpoint: String,
    /// The server's flags besides `--listen` and `--data-dir`.
    pub flags: Vec<String>,
    /// Orders sent, warm-up and the answers after the window included.
    pub orders: u64,
    /// Of them answered 201 with one ticket.
    pub created: u64,
    /// Answers other than a 201 by `"<status> <code>"`, and requests without one by `"transport <kind>"`.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Requests that got no answer at all (the `transport` kinds).
    pub transport_errors: u64,
    pub measured_s: f64,
    /// 201s answered within the measured window.
    pub measured_created: u64,
    /// `measured_created / measured_s`.
    pub created_per_s: f64,
    /// Every answer within the window, from sending its request.
    pub latency_ms: Option<Summary>,
    /// The concert's counts afterwards against `created`; none for the bare endpoint.
    pub invariants: Option<Invariants>,
    /// How the server ended after SIGTERM (each process of a cluster: `node 0: exit status: 0; ...`).
    pub exit: String,
    /// CPU time (user and system, `/proc/PID/stat`) the server processes spent within the measured window, in
    /// seconds, all processes together; `None` where it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<f64>,
    /// `cpu_s` per order answered within the window, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_order: Option<f64>,
}

/// Writes `report.json`, `report.html` and (for a single burst) `samples.csv` into `dir`.
pub fn write(
    dir: &Path,
    report: &Report,
    html: &str,
    samples: Option<&[Sample]>,
) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let json = serde_json::to_string_pretty(report).map_err(|error| error.to_string())?;
    let write = |name: &str, contents: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, contents)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))
    };
    write("report.json", json.as_bytes())?;
    write("report.html", html.as_bytes())?;
    if let Some(samples) = samples {
        write("samples.csv", samples_csv(samples).as_bytes())?;
    }
    Ok(())
}

/// One line per order: when it was sent and answered (ms from the start of the burst), how it ended, the target it
/// was sent to (its place in the list) and its buyer's node (empty on a single node).
pub fn samples_csv(samples: &[Sample]) -> String {
    let mut csv = String::from("sent_ms,done_ms,outcome,target,node\n");
    for sample in samples {
        let outcome = match &sample.outcome {
            Outcome::Ok => "ok",
            Outcome::SoldOut => "sold_out",
            Outcome::Error(kind) => kind,
        };
        let node = sample.node.map_or(String::new(), |node| node.to_string());
        csv.push_str(&format!(
            "{:.3},{:.3},{outcome},{},{node}\n",
            sample.sent_ms, sample.done_ms, sample.target
        ));
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_ms: f64, done_ms: f64, outcome: Outcome) -> Sample {
        Sample {
            sent_ms,
            done_ms,
            outcome,
            target: 0,
            node: None,
        }
    }

    fn parameters() -> BurstParameters {
        BurstParameters {
            users: 4,
            concurrency: 2,
            capacity: 3,
            payment_latency_ms: Some(1400),
            client_processes: None,
        }
    }

    #[test]
    fn a_burst_is_counted_by_outcome_and_timed_from_its_start() {
        let samples = [
            sample(0.0, 1500.0, Outcome::Ok),
            sample(0.0, 1600.0, Outcome::Ok),
            sample(1500.0, 3000.0, Outcome::SoldOut),
            sample(1600.0, 4000.0, Outcome::Error("503 overloaded".into())),
        ];
        let invariants = Invariants::check(3, 1, 0, 2, 2);
        let report = summarize(parameters(), &samples, 0.25, invariants);
        assert_eq!(
            (report.orders, report.ok, report.sold_out, report.errors),
            (4, 2, 1, 1)
        );
        assert_eq!(report.errors_by_kind["503 overloaded"], 1);
        assert_eq!(report.latency_ms.min, 1500.0);
        assert_eq!(report.latency_ms.max, 4000.0);
        assert_eq!(report.latency_ms.mean, 2525.0);
        assert_eq!(report.service_ms.max, 2400.0);
        assert_eq!(report.duration_s, 4.0);
        assert_eq!(report.throughput_per_s, 1.0);
        assert_eq!(report.ok_per_s, 0.5);
        assert!(report.invariants.hold);
        assert!(!report.holds(60_000.0), "an error fails the objective");

        let json = serde_json::to_value(&report).expect("json");
        for field in [
            "orders",
            "ok",
            "sold_out",
            "errors",
            "duration_s",
            "throughput_per_s",
            "users",
        ] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
        for field in ["min", "mean", "p50", "p90", "p99", "max"] {
            assert!(
                json["latency_ms"].get(field).is_some(),
                "latency_ms.{field}"
            );
        }
    }

    #[test]
    fn broken_counts_are_named() {
        let check = |counts: (u64, u64, u64, u64, u64), problems: usize| {
            let (capacity, remaining, held, sold, ok) = counts;
            let invariants = Invariants::check(capacity, remaining, held, sold, ok);
            assert_eq!(
                invariants.problems.len(),
                problems,
                "{counts:?}: {:?}",
                invariants.problems
            );
            assert_eq!(invariants.hold, problems == 0);
        };
        check((10, 0, 0, 10, 10), 0);
        check((10, 1, 0, 10, 10), 1);
        check((10, 0, 0, 10, 9), 1);
        check((10, 5, 0, 4, 5), 2);
    }

    #[test]
    fn orders_are_counted_by_target_and_by_the_node_of_their_buyer() {
        let at = |target: u32, node: Option<u32>, outcome: Outcome| Sample {
            target,
            node,
            ..sample(0.0, 10.0, outcome)
        };
        let samples = [
            at(0, Some(2), Outcome::Ok),
            at(1, Some(2), Outcome::Ok),
            at(1, Some(0), Outcome::SoldOut),
            at(0, Some(0), Outcome::Error("503 node_unavailable".into())),
            at(
                1,
                Some(1),
                Outcome::Error("409 ticket_limit_reached".into()),
            ),
            at(1, Some(1), Outcome::Error("transport closed".into())),
            at(0, Some(1), Outcome::Error("201 unexpected_body".into())),
        ];
        let urls = [
            "http://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2".to_owned(),
        ];
        let targets = by_target(&samples, &urls);
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].url, urls[0]);
        let counts = |o: &Outcomes| {
            (
                o.orders,
                o.ok_201,
                o.conflict_409,
                o.unavailable_503,
                o.errors,
            )
        };
        assert_eq!(counts(&targets[0].outcomes), (3, 1, 0, 1, 1));
        assert_eq!(counts(&targets[1].outcomes), (4, 1, 2, 0, 1));
        let nodes = by_node(&samples);
        let listed: Vec<u32> = nodes.iter().map(|n| n.node).collect();
        assert_eq!(listed, [0, 1, 2]);
        assert_eq!(counts(&nodes[0].outcomes), (2, 0, 1, 1, 0));
        assert_eq!(counts(&nodes[1].outcomes), (3, 0, 1, 0, 2));
        assert_eq!(counts(&nodes[2].outcomes), (2, 2, 0, 0, 0));
        let total: u64 = nodes.iter().map(|n| n.outcomes.orders).sum();
        assert_eq!(total, samples.len() as u64, "every order counted once");
        // A single node: no node is known, none listed; an unused target is listed all the same.
        let single = [sample(0.0, 1.0, Outcome::Ok)];
        assert!(by_node(&single).is_empty());
        assert_eq!(by_target(&single, &urls)[1].outcomes, Outcomes::default());
        let json = serde_json::to_value(&targets[0]).expect("json");
        assert_eq!(json["unavailable_503"], 1);
        assert_eq!(json["url"], "http://127.0.0.1:1");
        let csv = samples_csv(&samples[..1]);
        assert_eq!(csv.lines().nth(1), Some("0.000,10.000,ok,0,2"));
    }

    #[test]
    fn an_objective_holds_only_without_errors_and_within_the_limit() {
        let samples = [
            sample(0.0, 900.0, Outcome::Ok),
            sample(0.0, 1000.0, Outcome::SoldOut),
        ];
        let report = summarize(
            parameters(),
            &samples,
            0.0,
            Invariants::check(1, 0, 0, 1, 1),
        );
        assert!(report.holds(1000.0));
        assert!(!report.holds(999.0));
        let csv = samples_csv(&samples);
        assert_eq!(
            csv,
            "sent_ms,done_ms,outcome,target,node\n0.000,900.000,ok,0,\n0.000,1000.000,sold_out,0,\n"
        );
    }
}
