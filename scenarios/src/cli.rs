//! Command-line flags of `boxoffice-load`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "boxoffice-load",
    version,
    about = "Load scenarios against a boxoffice node over HTTP, with reports and charts"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Scenario,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The node to load (loopback only); ignored with --spawn.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// The node's admin token; with --spawn the run chooses its own.
    #[arg(
        long,
        global = true,
        env = "BOXOFFICE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Start our own `boxoffice serve` from this binary (e.g. target/release/boxoffice) on 127.0.0.1:0 with a
    /// temporary data dir for every burst, and stop it with SIGTERM afterwards.
    #[arg(long, global = true, value_name = "PATH_TO_BINARY")]
    pub spawn: Option<PathBuf>,
    /// Where the report goes; default target/load/<scenario>-<timestamp>/.
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
    /// Source addresses 127.0.0.1 to 127.0.0.N to connect from; default: one per 25,000 requests in flight.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=254))]
    pub source_addresses: Option<u32>,
    /// A request without an answer after this long counts as an error (`transport timeout`).
    #[arg(long, global = true, default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub request_timeout_s: u64,
    /// Shards of the concert each burst creates; the server's default when unset.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub shards: Option<u32>,
    /// With --spawn: `fsync` (every sale durable before its 201) or `none` (memory only, to see what durability
    /// costs).
    #[arg(long, global = true, default_value = "fsync", value_parser = ["fsync", "none"])]
    pub durability: String,
    /// With --spawn: the server's --payment-concurrency (charges in flight at once); its default when unset.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub payment_concurrency: Option<u32>,
    /// With --spawn: one more flag for `boxoffice serve`, e.g. --server-arg=--arbiters --server-arg=2.
    #[arg(
        long = "server-arg",
        global = true,
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    pub server_args: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// The study's experiment: N users each order one ticket at the same moment; latency, throughput, outcomes.
    Burst(BurstArgs),
    /// The same burst at several payment provider latencies (needs --spawn: the latency is a server flag).
    SweepPayment(SweepArgs),
    /// The largest burst whose longest response stays within an objective: doubling, then bisection.
    Peak(PeakArgs),
    /// The capacity planner: from service rates measured by a short calibration burst (or given), predicts the
    /// longest and mean response of a burst and the cores, shards, nodes and payment slots an objective needs;
    /// with --verify it runs that burst and reports the model's error.
    Plan(PlanArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BurstArgs {
    /// Buyers, one order of one ticket each.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub users: u64,
    /// Orders in flight at most; default: all of them at once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub concurrency: Option<u64>,
    /// Tickets on sale; default: one per user. Fewer makes the rest of the buyers see sold_out.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub capacity: Option<u64>,
    /// The payment provider's latency per charge: passed to the server with --spawn, otherwise only recorded
    /// (say what the target runs with).
    #[arg(long)]
    pub payment_latency_ms: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Provider latencies to run the burst at, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,350,700,1400,2800")]
    pub latencies_ms: Vec<u64>,
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub users: u64,
    /// Orders in flight at most; default: all at once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub concurrency: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct PeakArgs {
    /// The objective: every order answered within this many seconds (the study: 600).
    #[arg(long, default_value_t = 600.0, value_parser = positive_seconds)]
    pub slo_s: f64,
    /// The first burst size.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub start_users: u64,
    /// The largest burst tried.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_users: u64,
    /// Orders in flight at most; default: every burst all at once (as the study). Set it below the open-files
    /// limit to search past it: the orders beyond it wait for a slot, and their wait counts.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub concurrency: Option<u64>,
    /// Stop bisecting when the bounds are within this share of each other.
    #[arg(long, default_value_t = 0.02)]
    pub precision: f64,
    #[arg(long, default_value_t = 1_400)]
    pub payment_latency_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// Simultaneous orders of the sale.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub orders: u64,
    /// The payment provider's latency per charge.
    #[arg(long, default_value_t = 1_400)]
    pub payment_latency_ms: u64,
    /// The objective: every order answered within this many seconds.
    #[arg(long, default_value_t = 600.0, value_parser = positive_seconds)]
    pub slo_s: f64,
    /// Skip the calibration: the orders per second the node completes with a 0 ms provider.
    #[arg(long, requires = "base_latency_ms")]
    pub service_rate: Option<f64>,
    /// Skip the calibration: one order's latency on an idle node, in milliseconds.
    #[arg(long, requires = "service_rate")]
    pub base_latency_ms: Option<f64>,
    /// With --service-rate: the share of an order's CPU work in the longer of its two phases (before and after
    /// the payment).
    #[arg(long, default_value_t = 0.5, requires = "service_rate")]
    pub phase_share: f64,
    /// The cores the service rate is for; default: this machine's.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4_096))]
    pub cores: Option<u32>,
    /// Orders of each of the two calibration bursts (provider at 0 ms, then slow enough to separate the phases;
    /// all at once unless --concurrency).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    pub calibration_orders: u64,
    /// Then run the planned burst and compare the prediction with the measurement.
    #[arg(long)]
    pub verify: bool,
    /// Orders in flight at most in the calibration and verification bursts; default: all at once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub concurrency: Option<u64>,
}

/// A number of seconds that is finite and above zero.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(format!("{text} is not a positive number of seconds")),
    }
}
