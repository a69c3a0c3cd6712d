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
}

/// What the planner is asked.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Question {
    pub orders: u64,
    pub payment_latency_s: f64,
    pub payment_concurrency: u64,
    pub slo_s: f64,
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
}

pub fn predict(calibration: &Calibration, question: &Question) -> Prediction {
    let x = calibration.service_rate_per_s.max(f64::MIN_POSITIVE);
    let n = question.orders as f64;
    let l = question.payment_latency_s;
    let slots = question.payment_concurrency.max(1);
    let rounds = question.orders.div_ceil(slots) as f64;
    let cpu_s = n / x;
    let phase_s = l + n * calibration.phase_s;
    let payment_s = l * rounds;
    let (drain_s, bottleneck) = if payment_s > cpu_s.max(phase_s) {
        (payment_s, "payment")
    } else if phase_s > cpu_s {
        (phase_s, "cpu after the payment")
    } else {
        (cpu_s, "cpu")
    };
    let base = calibration.base_latency_s;
    let max_latency_s = base + drain_s;
    let mean_latency_s = base
        + (cpu_s / 2.0)
            .max(l + n * calibration.phase_s / 2.0)
            .max(l * (rounds + 1.0) / 2.0);
    let budget = question.slo_s - base;
    let scale =
        (budget > l).then(|| (n / (x * budget)).max(n * calibration.phase_s / (budget - l)));
    let cores = f64::from(calibration.cores.max(1));
    let required_cores = scale.map(|scale| (scale * cores).ceil().max(1.0) as u64);
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
        required_throughput_per_s: scale.map(|scale| scale * x),
        required_cores,
        required_payment_concurrency: required_cores.and(required_payment_concurrency),
        required_shards: required_cores,
        required_nodes: required_cores.map(|c| c.div_ceil(u64::from(calibration.cores.max(1)))),
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
        }
    }

    fn question(orders: u64, latency_s: f64, slots: u64, slo_s: f64) -> Question {
        Question {
            orders,
            payment_latency_s: latency_s,
            payment_concurrency: slots,
            slo_s,
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
    fn the_error_is_relative_to_the_measurement() {
        assert_eq!(error_percent(8.0, 10.0), 20.0);
        assert_eq!(error_percent(12.0, 10.0), -20.0);
        assert_eq!(error_percent(1.0, 0.0), 0.0);
    }
}
