//! The capacity planner's model of a burst: `n` orders arrive at the same moment; each needs CPU on the node before
//! its payment (admission, reservation, journal) and after it (confirmation, tickets, journal), and one payment call
//! of `L` seconds, at most `P` at once.
//!
//! Calibrated from two bursts (or given): with a 0 ms provider the node drains `n` orders at `X` orders per second
//! with its cores busy (`1/X` seconds of node time per order) and answers the first in `base`; with a provider slow
//! enough to separate the phases, the orders leave the payment together and drain at the pace of the longer CPU
//! phase, `phase` seconds per order. Then:
//!
//! - longest response = `base + max(n / X, L + n * phase, L * ceil(n / P))`: the CPU cannot finish all the work
//!   sooner than `n / X`; however early the payments start, the orders come back from them no sooner than `L` and
//!   then queue for the longer phase; and `P` payment slots serve `n` orders in `ceil(n / P)` rounds of `L`;
//! - mean = the same with each term halved but `L`.
//!
//! This is the fluid limit of a tandem queue (CPU, then a `P`-server delay station, then CPU) fed by one batch, the
//! shape of the original study's simulation model; queueing noise and the client sharing the cores move a
//! measurement off it, which is what `plan --verify` reports as the error.
//!
//! Sizing for an objective `slo` on the longest response assumes the CPU rates grow with cores (the shard actors
//! run one arbiter per core): `s` times the calibrated cores give `s X` and `phase / s`, so
//! `s >= max(n / (X (slo - base)), n phase / (slo - base - L))`, and the slots need `ceil(n / P) L <= slo - base`.
//!
//! Forwarding. In a cluster an order is executed by its buyer's node; one that reaches another process is
//! forwarded there (one internal hop). Calibrated on a cluster (or given): a forwarded order costs a share `f` more
//! CPU time than one sent to its buyer's node (all processes together, both measured alike in the same run), and
//! `h` more latency. With a share `phi` of the orders forwarded, an order costs `k = 1 + phi f` times the CPU: the
//! rates shrink to `X / k` and `phase k`, and the latency of one order grows by `h` for the longest and `phi h`
//! for the mean. `phi` is `(m - 1) / m` when the clients spread over the `m` shard nodes, and 1 through fronts. A
//! burst predicted for a cluster on the calibrated machine (`--verify` on a spawned cluster) shares its cores;
//! sizing gives the smallest `m` nodes of the calibrated size with `m >= k_m s_m`, `s_m` the scale above with `h`
//! taken from the budget when orders are forwarded. The whole hop is charged to the shard nodes' cores (a front's
//! part too): what the model does not separate, and neither does it model a hop's queueing or the cost of more
//! processes.

use serde::Serialize;

/// What a calibration run measured (or the planner was given).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Calibration {
    /// Orders per second the node completed with a 0 ms provider, all cores busy.
    pub service_rate_per_s: f64,
    /// The cores that rate was measured on.
    pub cores: u32,
    /// One order's latency on an idle node without the payment, in seconds.
    pub base_latency_s: f64,
    /// Node time per order of the longer of its two CPU phases (before and after the payment), in seconds.
    pub phase_s: f64,
    /// How much more CPU time a forwarded order costs than one sent to its buyer's node, as a share of the latter
    /// (all processes together); 0 when not measured.
    pub forward_cpu_share: f64,
    /// The latency a forwarding hop adds to an order, in seconds; 0 when not measured.
    pub hop_latency_s: f64,
}

/// What the planner is asked.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Question {
    pub orders: u64,
    pub payment_latency_s: f64,
    pub payment_concurrency: u64,
    pub slo_s: f64,
    /// Shard nodes of the cluster the burst is predicted for, all on the calibrated machine (1: one node).
    pub nodes: u32,
    /// Whether the clients go through fronts (every order forwarded once) rather than to any shard node.
    pub fronts: bool,
}

impl Question {
    /// The share of orders forwarded once on a cluster of `nodes` shard nodes.
    pub fn forwarded_share(&self, nodes: u32) -> f64 {
        if self.fronts {
            1.0
        } else {
            f64::from(nodes.max(1) - 1) / f64::from(nodes.max(1))
        }
    }
}

/// The model's answer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Orders per second through the burst on the calibrated machine.
    pub throughput_per_s: f64,
    /// Which station limits it: `cpu`, `cpu after the payment` or `payment`.
    pub bottleneck: &'static str,
    pub max_latency_s: f64,
    pub mean_latency_s: f64,
    pub meets_slo: bool,
    /// The throughput the objective needs; `None` when `slo` is below the latency of one order.
    pub required_throughput_per_s: Option<f64>,
    pub required_cores: Option<u64>,
    pub required_payment_concurrency: Option<u64>,
    /// Shards: one per core at least, so that every arbiter has one to run.
    pub required_shards: Option<u64>,
    /// Nodes of `cores` cores each.
    pub required_nodes: Option<u64>,
    /// The share of the question's orders forwarded once (on its `nodes`).
    pub forwarded_share: f64,
    /// How much more CPU an order costs on the question's cluster than on one node: `1 + phi f`.
    pub cost_factor: f64,
    /// The share of the sized nodes' CPU that goes to forwarding.
    pub required_forwarding_share: Option<f64>,
}

/// How much more CPU an order costs when a share `phi` of them is forwarded.
fn cost_factor(calibration: &Calibration, phi: f64) -> f64 {
    1.0 + phi * calibration.forward_cpu_share.max(0.0)
}

/// The hop latency the longest order carries when a share `phi` is forwarded.
fn hop_s(calibration: &Calibration, phi: f64) -> f64 {
    if phi > 0.0 {
        calibration.hop_latency_s.max(0.0)
    } else {
        0.0
    }
}

/// Nodes at most that sizing tries.
const NODES_MAX: u64 = 100_000;

pub fn predict(calibration: &Calibration, question: &Question) -> Prediction {
    let phi = question.forwarded_share(question.nodes);
    let k = cost_factor(calibration, phi);
    let x = calibration.service_rate_per_s.max(f64::MIN_POSITIVE) / k;
    let phase = calibration.phase_s * k;
    let n = question.orders as f64;
    let l = question.payment_latency_s;
    let slots = question.payment_concurrency.max(1);
    let rounds = question.orders.div_ceil(slots) as f64;
    let cpu_s = n / x;
    let phase_s = l + n * phase;
    let payment_s = l * rounds;
    let (drain_s, bottleneck) = if payment_s > cpu_s.max(phase_s) {
        (payment_s, "payment")
    } else if phase_s > cpu_s {
        (phase_s, "cpu after the payment")
    } else {
        (cpu_s, "cpu")
    };
    let base = calibration.base_latency_s;
    let max_latency_s = base + hop_s(calibration, phi) + drain_s;
    let mean_latency_s = base
        + phi * calibration.hop_latency_s.max(0.0)
        + (cpu_s / 2.0)
            .max(l + n * phase / 2.0)
            .max(l * (rounds + 1.0) / 2.0);
    let sizing = size(calibration, question);
    let budget = question.slo_s - base - sizing.map_or(0.0, |s| s.hop_s);
    let cores = f64::from(calibration.cores.max(1));
    let required_cores = sizing.map(|s| (s.scale * s.cost_factor * cores).ceil().max(1.0) as u64);
    let required_payment_concurrency = (budget >= l && l > 0.0)
        .then(|| {
            question
                .orders
                .div_ceil(((budget / l).floor() as u64).max(1))
        })
        .or((l == 0.0).then_some(1));
    Prediction {
        throughput_per_s: n / drain_s.max(f64::MIN_POSITIVE),
        bottleneck,
        max_latency_s,
        mean_latency_s,
        meets_slo: max_latency_s <= question.slo_s,
        required_throughput_per_s: sizing
            .map(|s| s.scale * calibration.service_rate_per_s.max(f64::MIN_POSITIVE)),
        required_cores,
        required_payment_concurrency: required_cores.and(required_payment_concurrency),
        required_shards: required_cores,
        required_nodes: sizing.map(|s| s.nodes),
        forwarded_share: phi,
        cost_factor: k,
        required_forwarding_share: sizing.map(|s| (s.cost_factor - 1.0) / s.cost_factor),
    }
}

/// The smallest cluster that answers within the objective.
#[derive(Clone, Copy, Debug)]
struct Sizing {
    nodes: u64,
    /// The calibrated machines' worth of CPU the orders need without forwarding (`s` above).
    scale: f64,
    cost_factor: f64,
    hop_s: f64,
}

/// Tries 1, 2, ... nodes of the calibrated size: `m` fit when `m >= k_m s_m`. `None` when no size answers.
fn size(calibration: &Calibration, question: &Question) -> Option<Sizing> {
    let x = calibration.service_rate_per_s.max(f64::MIN_POSITIVE);
    let n = question.orders as f64;
    let l = question.payment_latency_s;
    let mut nodes = 1;
    loop {
        let phi = question.forwarded_share(nodes as u32);
        let hop_s = hop_s(calibration, phi);
        let budget = question.slo_s - calibration.base_latency_s - hop_s;
        if budget > l {
            let scale = (n / (x * budget)).max(n * calibration.phase_s / (budget - l));
            let cost_factor = cost_factor(calibration, phi);
            if nodes as f64 >= scale * cost_factor - 1e-9 {
                return Some(Sizing {
                    nodes,
                    scale,
                    cost_factor,
                    hop_s,
                });
            }
        } else if nodes > 1 || hop_s == 0.0 {
            // More nodes forward as much and wait as long: no size answers.
            return None;
        }
        nodes += 1;
        if nodes > NODES_MAX {
            return None;
        }
    }
}

/// `(measured - predicted) / measured`, as a percentage; positive when the model was optimistic.
pub fn error_percent(predicted: f64, measured: f64) -> f64 {
    if measured == 0.0 {
        return 0.0;
    }
    (measured - predicted) / measured * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2,000 orders/s on 2 cores, 50 ms alone, 0.3 ms per order in the longer phase.
    fn calibration() -> Calibration {
        Calibration {
            service_rate_per_s: 2_000.0,
            cores: 2,
            base_latency_s: 0.05,
            phase_s: 0.0003,
            forward_cpu_share: 0.0,
            hop_latency_s: 0.0,
        }
    }

    fn question(orders: u64, latency_s: f64, slots: u64, slo_s: f64) -> Question {
        Question {
            orders,
            payment_latency_s: latency_s,
            payment_concurrency: slots,
            slo_s,
            nodes: 1,
            fronts: false,
        }
    }

    /// The same machine, where a forwarded order costs half as much CPU again as a direct one (0.5 ms more of the
    /// 1 ms of core time an order takes: 2 cores / 2,000 orders/s) and 20 ms more latency.
    fn forwarding() -> Calibration {
        Calibration {
            forward_cpu_share: 0.5,
            hop_latency_s: 0.02,
            ..calibration()
        }
    }

    #[test]
    fn without_a_provider_the_burst_drains_at_the_service_rate() {
        let p = predict(&calibration(), &question(10_000, 0.0, 16_384, 600.0));
        assert_eq!(p.bottleneck, "cpu");
        assert!((p.max_latency_s - 5.05).abs() < 1e-9);
        assert!((p.mean_latency_s - 2.55).abs() < 1e-9);
        assert!(p.meets_slo);
    }

    #[test]
    fn a_slow_provider_leaves_the_phase_after_it_as_the_tail() {
        // 1.4 s + 10,000 x 0.3 ms = 4.4 s: less than the 5 s all the CPU work takes.
        let p = predict(&calibration(), &question(10_000, 1.4, 16_384, 3.0));
        assert_eq!(p.bottleneck, "cpu");
        assert!((p.max_latency_s - 5.05).abs() < 1e-9);
        let p = predict(&calibration(), &question(10_000, 2.8, 16_384, 3.0));
        assert_eq!(p.bottleneck, "cpu after the payment");
        assert!((p.max_latency_s - (0.05 + 2.8 + 3.0)).abs() < 1e-9);
        assert!((p.mean_latency_s - (0.05 + 2.8 + 1.5)).abs() < 1e-9);
        assert!(!p.meets_slo);
    }

    #[test]
    fn sizing_scales_the_cores_until_both_cpu_terms_fit() {
        // Budget 2.95 s: all the CPU needs 10,000 / (2,000 s) <= 2.95 -> s >= 1.695; the phase needs
        // 3 s / s <= 1.55 -> s >= 1.935; 2 cores x 1.935 = 3.87 -> 4 cores, 2 nodes.
        let p = predict(&calibration(), &question(10_000, 1.4, 16_384, 3.0));
        assert_eq!(p.required_cores, Some(4));
        assert_eq!(p.required_nodes, Some(2));
        assert_eq!(p.required_shards, Some(4));
        // Two rounds of 1.4 s fit in 2.95 s: 5,000 slots.
        assert_eq!(p.required_payment_concurrency, Some(5_000));
        let required = p.required_throughput_per_s.unwrap();
        assert!((required - 2_000.0 * 3.0 / 1.55).abs() < 1e-6);
    }

    #[test]
    fn few_payment_slots_make_the_provider_the_bottleneck() {
        let p = predict(&calibration(), &question(1_000, 1.4, 100, 600.0));
        assert_eq!(p.bottleneck, "payment");
        assert!((p.max_latency_s - (0.05 + 14.0)).abs() < 1e-9);
        assert!((p.mean_latency_s - (0.05 + 1.4 * 5.5)).abs() < 1e-9);
        assert!((p.throughput_per_s - 1_000.0 / 14.0).abs() < 1e-9);
    }

    #[test]
    fn an_objective_below_one_order_cannot_be_met_by_any_size() {
        let p = predict(&calibration(), &question(10, 1.4, 10, 1.0));
        assert!(!p.meets_slo);
        assert_eq!(p.required_cores, None);
        assert_eq!(p.required_nodes, None);
        assert_eq!(p.required_payment_concurrency, None);
    }

    #[test]
    fn without_forwarding_measured_a_cluster_costs_what_one_node_does() {
        let one = predict(&calibration(), &question(10_000, 1.4, 16_384, 3.0));
        let three = predict(
            &calibration(),
            &Question {
                nodes: 3,
                ..question(10_000, 1.4, 16_384, 3.0)
            },
        );
        assert!((three.forwarded_share - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(three.cost_factor, 1.0);
        assert_eq!(one.max_latency_s, three.max_latency_s);
        assert_eq!(one.required_nodes, three.required_nodes);
        assert_eq!(three.required_forwarding_share, Some(0.0));
    }

    #[test]
    fn forwarding_slows_a_cluster_that_shares_the_calibrated_cores() {
        // Three nodes on the calibrated 2 cores: 2/3 of the orders forwarded, each order costs
        // 1 ms + 2/3 x 0.5 ms = 4/3 ms of core time: k = 4/3, 1,500 orders/s, the longer phase 0.4 ms.
        let q = Question {
            nodes: 3,
            ..question(10_000, 0.0, 16_384, 600.0)
        };
        let p = predict(&forwarding(), &q);
        assert!((p.cost_factor - 4.0 / 3.0).abs() < 1e-12);
        assert_eq!(p.bottleneck, "cpu");
        // 10,000 / 1,500 = 6.667 s, plus 50 ms alone and the 20 ms hop.
        assert!((p.max_latency_s - (0.05 + 0.02 + 10_000.0 / 1_500.0)).abs() < 1e-9);
        // The mean carries the hop for the 2/3 forwarded.
        let mean = 0.05 + 0.02 * 2.0 / 3.0 + 10_000.0 / 1_500.0 / 2.0;
        assert!((p.mean_latency_s - mean).abs() < 1e-9);
        assert!((p.throughput_per_s - 1_500.0).abs() < 1e-6);
        // Through fronts every order is forwarded: k = 1.5.
        let fronts = predict(&forwarding(), &Question { fronts: true, ..q });
        assert_eq!(fronts.forwarded_share, 1.0);
        assert!((fronts.cost_factor - 1.5).abs() < 1e-12);
        // One node forwards nothing.
        let one = predict(&forwarding(), &question(10_000, 0.0, 16_384, 600.0));
        assert_eq!((one.forwarded_share, one.cost_factor), (0.0, 1.0));
        assert!((one.max_latency_s - 5.05).abs() < 1e-9);
    }

    #[test]
    fn sizing_counts_the_cpu_nodes_spend_on_forwarding() {
        // 20,000 orders, 0 ms provider, 4 s: without forwarding s = 20,000 / (2,000 x 3.95) = 2.53 -> 3 nodes.
        let q = question(20_000, 0.0, 16_384, 4.0);
        let plain = predict(&calibration(), &q);
        assert_eq!(plain.required_nodes, Some(3));
        assert_eq!(plain.required_cores, Some(6));
        // With forwarding: budget 3.93 s, s = 2.545; 3 nodes: k = 1 + 2/3 x 0.5 = 1.333, needs 3.39 > 3;
        // 4 nodes: k = 1 + 3/4 x 0.5 = 1.375, needs 3.50 <= 4.
        let p = predict(&forwarding(), &q);
        assert_eq!(p.required_nodes, Some(4));
        let s = 20_000.0 / (2_000.0 * 3.93);
        assert_eq!(p.required_cores, Some((s * 1.375 * 2.0_f64).ceil() as u64));
        let share = p.required_forwarding_share.expect("sized");
        assert!((share - 0.375 / 1.375).abs() < 1e-12);
        // Through fronts every order is forwarded, on one node too: k = 1.5 from the start.
        let fronts = predict(&forwarding(), &Question { fronts: true, ..q });
        assert_eq!(fronts.required_nodes, Some(4));
        // A small burst fits one node, which forwards nothing and pays no hop.
        let small = predict(&forwarding(), &question(1_000, 0.0, 16_384, 4.0));
        assert_eq!(small.required_nodes, Some(1));
        assert_eq!(small.required_forwarding_share, Some(0.0));
    }

    #[test]
    fn a_hop_that_eats_the_budget_leaves_no_cluster_size() {
        // One node is too small, and a cluster's hop leaves less than the provider's 1.4 s.
        let c = Calibration {
            hop_latency_s: 1.6,
            ..forwarding()
        };
        let p = predict(&c, &question(100_000, 1.4, 16_384, 3.0));
        assert_eq!(p.required_nodes, None);
        assert_eq!(p.required_cores, None);
    }

    #[test]
    fn the_error_is_relative_to_the_measurement() {
        assert_eq!(error_percent(8.0, 10.0), 20.0);
        assert_eq!(error_percent(12.0, 10.0), -20.0);
        assert_eq!(error_percent(1.0, 0.0), 0.0);
    }
}
