//! The capacity planner's model of a burst: `n` orders arrive at the same moment; each needs some CPU on the node
//! (admission, reservation, journal, confirmation: the node completes at most `service_rate_per_s` of them per
//! second with its cores busy) and one payment call of `payment_latency_s`, at most `payment_concurrency` at once.
//!
//! Two stations in tandem, served in arrival order: the node's throughput through the burst is the slower of the
//! two, `X = min(service_rate, payment_concurrency / payment_latency)`, and order `i` (from 1) completes at about
//! `base + payment_latency + i / X`, where `base` is one order's latency on an idle node without the payment.
//! So the longest response is `base + L + n / X` and the mean `base + L + (n + 1) / 2X`. This is the fluid limit of
//! an M/D/c-like queue fed by one batch, the shape the original study's simulation model had; queueing noise and
//! the client's own limits make measurements a little worse, which is what `plan --verify` reports as the error.
//!
//! Sizing for an objective `slo` on the longest response: the burst must drain in `slo - base - L`, so the node
//! needs a throughput of `n / (slo - base - L)`: that many orders per second of CPU (cores, from the calibrated
//! rate per core, assuming the rate grows with cores as the shard actors do, one arbiter per core) and that
//! throughput times `L` payment calls in flight.

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
    /// Which station limits it: `cpu` or `payment`.
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
    let cpu = calibration.service_rate_per_s.max(f64::MIN_POSITIVE);
    let payment = if question.payment_latency_s > 0.0 {
        question.payment_concurrency as f64 / question.payment_latency_s
    } else {
        f64::INFINITY
    };
    let (throughput, bottleneck) = if cpu <= payment {
        (cpu, "cpu")
    } else {
        (payment, "payment")
    };
    let fixed = calibration.base_latency_s + question.payment_latency_s;
    let n = question.orders as f64;
    let max_latency_s = fixed + n / throughput;
    let mean_latency_s = fixed + (n + 1.0) / (2.0 * throughput);
    let drain_s = question.slo_s - fixed;
    let required = (drain_s > 0.0).then(|| n / drain_s);
    let per_core = cpu / f64::from(calibration.cores.max(1));
    let required_cores = required.map(|rate| (rate / per_core).ceil().max(1.0) as u64);
    Prediction {
        throughput_per_s: throughput,
        bottleneck,
        max_latency_s,
        mean_latency_s,
        meets_slo: max_latency_s <= question.slo_s,
        required_throughput_per_s: required,
        required_cores,
        required_payment_concurrency: required
            .map(|rate| (rate * question.payment_latency_s).ceil().max(1.0) as u64),
        required_shards: required_cores,
        required_nodes: required_cores
            .map(|cores| cores.div_ceil(u64::from(calibration.cores.max(1)))),
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

    fn calibration() -> Calibration {
        Calibration {
            service_rate_per_s: 2_000.0,
            cores: 2,
            base_latency_s: 0.05,
        }
    }

    #[test]
    fn a_cpu_bound_burst_drains_at_the_service_rate() {
        let prediction = predict(
            &calibration(),
            &Question {
                orders: 10_000,
                payment_latency_s: 1.4,
                payment_concurrency: 16_384,
                slo_s: 3.0,
            },
        );
        assert_eq!(prediction.bottleneck, "cpu");
        assert!((prediction.max_latency_s - (0.05 + 1.4 + 5.0)).abs() < 1e-9);
        assert!((prediction.mean_latency_s - (0.05 + 1.4 + 10_001.0 / 4_000.0)).abs() < 1e-9);
        assert!(!prediction.meets_slo);
        // Draining 10,000 in 3 - 1.45 s takes 6,452 orders/s: 7 cores at 1,000 per core, 4 nodes of 2.
        let required = prediction.required_throughput_per_s.unwrap();
        assert!((required - 10_000.0 / 1.55).abs() < 1e-6);
        assert_eq!(prediction.required_cores, Some(7));
        assert_eq!(prediction.required_nodes, Some(4));
        assert_eq!(prediction.required_payment_concurrency, Some(9_033));
    }

    #[test]
    fn few_payment_slots_make_the_provider_the_bottleneck() {
        let prediction = predict(
            &calibration(),
            &Question {
                orders: 1_000,
                payment_latency_s: 1.4,
                payment_concurrency: 100,
                slo_s: 600.0,
            },
        );
        assert_eq!(prediction.bottleneck, "payment");
        assert!((prediction.throughput_per_s - 100.0 / 1.4).abs() < 1e-9);
        assert!((prediction.max_latency_s - (1.45 + 14.0)).abs() < 1e-9);
        assert!(prediction.meets_slo);
    }

    #[test]
    fn an_objective_below_one_order_cannot_be_met_by_any_size() {
        let prediction = predict(
            &calibration(),
            &Question {
                orders: 10,
                payment_latency_s: 1.4,
                payment_concurrency: 10,
                slo_s: 1.0,
            },
        );
        assert!(!prediction.meets_slo);
        assert_eq!(prediction.required_cores, None);
        assert_eq!(prediction.required_nodes, None);
    }

    #[test]
    fn the_error_is_relative_to_the_measurement() {
        assert_eq!(error_percent(8.0, 10.0), 20.0);
        assert_eq!(error_percent(12.0, 10.0), -20.0);
        assert_eq!(error_percent(1.0, 0.0), 0.0);
    }
}
