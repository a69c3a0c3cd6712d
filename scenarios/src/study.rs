//! The figures of the study boxoffice starts from ("Cloud-based Online Concert Ticketing System", one machine,
//! an order service in front of SQL databases and a payment API taking 1.4 s per call), drawn beside ours in every
//! report. Load test: n registered users are fetched, then every one orders a ticket at the same moment.

use serde::Serialize;

/// Simultaneous orders of the study's headline experiment.
pub const ORDERS: u64 = 10_000;
/// Its payment API's latency per call.
pub const PAYMENT_LATENCY_MS: u64 = 1_400;
/// Shortest, average and longest response time at 10,000 simultaneous orders, without card encryption.
pub const MIN_S: f64 = 4.29;
pub const MEAN_S: f64 = 87.711;
pub const MAX_S: f64 = 172.408;
/// The same with card encryption.
pub const ENCRYPTED_MIN_S: f64 = 4.5;
pub const ENCRYPTED_MEAN_S: f64 = 90.57;
pub const ENCRYPTED_MAX_S: f64 = 178.023;
/// The most simultaneous orders it answered with every response within [`PEAK_SLO_S`].
pub const PEAK_ORDERS: u64 = 31_186;
pub const PEAK_SLO_S: f64 = 600.0;

/// The study's figures as a report carries them.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Figures {
    pub orders: u64,
    pub payment_latency_ms: u64,
    pub min_s: f64,
    pub mean_s: f64,
    pub max_s: f64,
    pub encrypted_min_s: f64,
    pub encrypted_mean_s: f64,
    pub encrypted_max_s: f64,
    pub peak_orders: u64,
    pub peak_slo_s: f64,
}

pub const FIGURES: Figures = Figures {
    orders: ORDERS,
    payment_latency_ms: PAYMENT_LATENCY_MS,
    min_s: MIN_S,
    mean_s: MEAN_S,
    max_s: MAX_S,
    encrypted_min_s: ENCRYPTED_MIN_S,
    encrypted_mean_s: ENCRYPTED_MEAN_S,
    encrypted_max_s: ENCRYPTED_MAX_S,
    peak_orders: PEAK_ORDERS,
    peak_slo_s: PEAK_SLO_S,
};

const _: () = assert!(MIN_S < MEAN_S && MEAN_S < MAX_S);
const _: () = assert!(ENCRYPTED_MIN_S < ENCRYPTED_MEAN_S && ENCRYPTED_MEAN_S < ENCRYPTED_MAX_S);
const _: () = assert!(MAX_S < PEAK_SLO_S && ORDERS < PEAK_ORDERS);
