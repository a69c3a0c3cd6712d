//! What `GET /metrics` exports, in one place: every metric's `# HELP`, the buckets of the histograms (latencies
//! from 1 ms to 60 s, suited to a sale whose provider takes seconds), every counter registered at 0 when the node
//! starts (so that `rate()` and alerts see a series before its first event), `http_requests_total` and
//! `http_request_duration_seconds` by route template and status, and `boxoffice_build_info{version,commit}`.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use std::time::Duration;

/// Buckets of every `_seconds` histogram.
pub const SECONDS_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0,
    30.0, 60.0,
];
/// Buckets of the journal's records per group commit.
const RECORDS_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 20000.0,
];
/// Buckets of a snapshot's size.
const BYTES_BUCKETS: [f64; 10] = [1e3, 1e4, 1e5, 5e5, 1e6, 5e6, 1e7, 5e7, 1e8, 1e9];

/// The recorder's histogram buckets.
pub fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("boxoffice_journal_batch_records".into()),
            &RECORDS_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("boxoffice_snapshot_bytes".into()),
            &BYTES_BUCKETS,
        )
}

/// Describes every metric and registers the counters (and the build info) at their starting values; called once
/// the recorder is installed.
pub fn register() {
    type Counters = [(&'static str, &'static str); 18];
    const COUNTERS: Counters = [
        (
            "boxoffice_requests_shed_total",
            "requests refused 503 overloaded at the edge (--requests-in-flight-max)",
        ),
        (
            "boxoffice_requests_timed_out_total",
            "requests that ran past --request-timeout-s (503 processing_timeout)",
        ),
        (
            "boxoffice_connections_limited_total",
            "accepts that waited for a connection to close (--connections-max)",
        ),
        (
            "boxoffice_connections_refused_per_address_total",
            "connections refused 429 for their address's limit",
        ),
        (
            "boxoffice_connections_send_timed_out_total",
            "connections closed because their client stopped reading",
        ),
        (
            "boxoffice_event_subscribers_dropped_total",
            "event streams ended because their subscriber fell behind",
        ),
        (
            "boxoffice_moves_total",
            "general-admission counts moved between shards",
        ),
        (
            "boxoffice_snapshots_refused_total",
            "shard snapshots refused because the snapshot queue was full",
        ),
        (
            "boxoffice_repairs_dropped_total",
            "releases for an unreachable node dropped because their queue was full",
        ),
        (
            "boxoffice_cluster_unauthorized_total",
            "internal calls without the cluster secret",
        ),
        (
            "boxoffice_cluster_peer_errors_total",
            "failed calls to another node, by peer and kind",
        ),
        ("boxoffice_orders_total", "orders by outcome"),
        (
            "boxoffice_logins_throttled_total",
            "login attempts refused 429 too_many_attempts",
        ),
        (
            "boxoffice_holds_total",
            "holds placed (outcome=placed) and refused 429 for their address's limit (outcome=limited)",
        ),
        (
            "http_requests_total",
            "HTTP requests by route template and status",
        ),
        (
            "boxoffice_payment_webhooks_total",
            "payment webhook events by outcome: accepted, duplicate (taken before), refused (bad signature)",
        ),
        (
            "boxoffice_payment_captures_lost_total",
            "confirmed orders whose authorization was gone (cancelled or expired) when it was captured",
        ),
        (
            "boxoffice_payment_provider_rate_limited_total",
            "calls the payment provider over the network answered 429",
        ),
    ];
    for (name, help) in COUNTERS {
        describe_counter!(name, help);
    }
    // `boxoffice_orders_total{outcome}` has its series from the desk, which registers one handle per outcome.
    for outcome in ["placed", "limited"] {
        metrics::counter!("boxoffice_holds_total", "outcome" => outcome).absolute(0);
    }
    for outcome in ["accepted", "duplicate", "refused"] {
        metrics::counter!("boxoffice_payment_webhooks_total", "outcome" => outcome).absolute(0);
    }
    for (name, _) in COUNTERS {
        // The labelled ones get their series with their first label values, above or on first use.
        if !matches!(
            name,
            "boxoffice_orders_total"
                | "boxoffice_holds_total"
                | "boxoffice_payment_webhooks_total"
                | "boxoffice_cluster_peer_errors_total"
                | "http_requests_total"
        ) {
            metrics::counter!(name).absolute(0);
        }
    }
    let gauges = [
        (
            "boxoffice_tickets_remaining",
            "tickets left to sell, by concert",
        ),
        (
            "boxoffice_shard_mailbox_depth",
            "messages queued or being handled by a shard actor",
        ),
        (
            "boxoffice_payments_in_flight",
            "charges in flight with the payment provider",
        ),
        (
            "boxoffice_payment_pool_admitted",
            "orders admitted to the payment pool and not done with their charge (in flight or waiting)",
        ),
        (
            "boxoffice_payment_pool_admitted_max",
            "the most orders the payment pool admits at once (--payment-concurrency + --payment-queue-max)",
        ),
        (
            "boxoffice_payment_breaker_state",
            "the payment circuit breaker: 0 closed, 1 half open, 2 open",
        ),
        (
            "boxoffice_payment_captures_pending",
            "confirmed orders whose capture the payment provider has not answered yet",
        ),
        (
            "boxoffice_payments_unresolved",
            "orders whose payment outcome is unknown and being read back, by age (under_10s, 10s_to_1m, 1m_to_10m, over_10m)",
        ),
        (
            "boxoffice_journal_queue_depth",
            "records queued for the journal writer",
        ),
        ("boxoffice_connections_open", "open client connections"),
        ("boxoffice_event_subscribers", "open event streams"),
        (
            "boxoffice_repairs_pending",
            "releases waiting for a node of the cluster",
        ),
        (
            "boxoffice_cluster_peer_reachable",
            "whether the last call to a peer succeeded (1) or not (0)",
        ),
        (
            "boxoffice_cluster_peer_in_flight",
            "calls in flight to a peer",
        ),
        (
            "boxoffice_build_info",
            "always 1: the version and commit of this build",
        ),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, help);
    }
    for name in [
        "boxoffice_payments_in_flight",
        "boxoffice_payment_breaker_state",
        "boxoffice_payment_captures_pending",
        "boxoffice_journal_queue_depth",
        "boxoffice_connections_open",
        "boxoffice_event_subscribers",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
    set_unresolved_payments([0; 4]);
    metrics::gauge!(
        "boxoffice_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("BOXOFFICE_COMMIT"),
    )
    .set(1.0);
    let histograms = [
        (
            "boxoffice_order_latency_seconds",
            Unit::Seconds,
            "time from an order's arrival at the desk to its outcome",
        ),
        (
            "boxoffice_payment_latency_seconds",
            Unit::Seconds,
            "one authorization at the payment provider, by outcome (authorized, declined, unknown)",
        ),
        (
            "boxoffice_journal_sync_seconds",
            Unit::Seconds,
            "one fdatasync of a journal group commit",
        ),
        (
            "boxoffice_snapshot_write_seconds",
            Unit::Seconds,
            "writing one batch of shard snapshots to sled",
        ),
        (
            "boxoffice_cluster_peer_latency_seconds",
            Unit::Seconds,
            "one call to another node, by peer and call",
        ),
        (
            "boxoffice_payment_provider_latency_seconds",
            Unit::Seconds,
            "one call to the payment provider over the network, by call and outcome",
        ),
        (
            "http_request_duration_seconds",
            Unit::Seconds,
            "HTTP requests by route template and status",
        ),
        (
            "boxoffice_journal_batch_records",
            Unit::Count,
            "records per journal group commit",
        ),
        (
            "boxoffice_snapshot_bytes",
            Unit::Bytes,
            "size of one shard snapshot",
        ),
    ];
    for (name, unit, help) in histograms {
        describe_histogram!(name, unit, help);
    }
}

/// Counts one HTTP request: `route` is its route template (`/orders/{id}`), `unmatched` for any other path.
pub fn record_http(route: &str, status: u16, elapsed: Duration) {
    let (requests, duration) = http_handles(route, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
}

/// The handles of `http_requests_total` and `http_request_duration_seconds` for `route` and `status`, to keep
/// (`edge::RouteLabels` registers each pair once).
pub fn http_handles(route: &str, status: u16) -> (metrics::Counter, metrics::Histogram) {
    let labels = [("route", route.to_owned()), ("status", status.to_string())];
    (
        metrics::counter!("http_requests_total", &labels),
        metrics::histogram!("http_request_duration_seconds", &labels),
    )
}

/// Sets `boxoffice_payments_unresolved{age}` from the desk's counts by age (`Desk::unresolved_payments_by_age`),
/// just before each scrape renders.
pub fn set_unresolved_payments(by_age: [u64; 4]) {
    for (age, count) in ["under_10s", "10s_to_1m", "1m_to_10m", "over_10m"]
        .into_iter()
        .zip(by_age)
    {
        metrics::gauge!("boxoffice_payments_unresolved", "age" => age).set(count as f64);
    }
}
