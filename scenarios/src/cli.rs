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
    /// The node to load (loopback only, unless --allow-remote-target), or several, comma-separated (a cluster's
    /// nodes or fronts): connections are spread over them round-robin, setup calls go to the first; ignored with
    /// --spawn.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Let --target name a host that is not this machine (a staging node): without it, only loopback targets
    /// are accepted, so that a typo never points 100,000 connections at someone else's machine. Load only what
    /// you run.
    #[arg(long, global = true)]
    pub allow_remote_target: bool,
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
    /// With --spawn: start a cluster of N shard nodes (and --fronts) instead of one node, for every burst; the
    /// load goes to the fronts if there are any, else to the nodes.
    #[arg(long, global = true, requires = "spawn", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub spawn_cluster: Option<u32>,
    /// With --spawn-cluster: fronts (processes that own nothing and forward every order to its buyer's node).
    #[arg(long, global = true, default_value_t = 0, value_name = "M",
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub fronts: u32,
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
    /// A seated sale: buyers pick seats from the live feed, hold them, then buy, get declined, cancel, walk away or
    /// come back too late, while subscribers watch; the counts, the seats and every subscriber's events are checked.
    FlashSale(FlashSaleArgs),
    /// Orders per second of a durable node with a 0 ms provider, of the same node without durability and of a
    /// bare axum endpoint, each a closed loop of the same kept-alive connections, and their ratios (needs
    /// --spawn); with --spawn-cluster also of a cluster on the same machine, and the cost of a forwarding hop.
    Throughput(ThroughputArgs),
    /// The bare axum endpoint `throughput` measures, started by it. Its alias `serve` lets it be started exactly
    /// as `boxoffice serve` is.
    #[command(name = "serve-bare", alias = "serve", hide = true)]
    ServeBare(BareArgs),
    /// One of `burst --client-processes`'s clients: talks with its parent over stdin and stdout.
    #[command(name = "burst-client", hide = true)]
    BurstClient,
}

#[derive(Args, Debug, Clone)]
pub struct ThroughputArgs {
    /// Kept-alive connections, each sending orders back to back.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub connections: u64,
    /// The measured window of each run, after the warm-up.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub seconds: u64,
    /// Orders sent before the measured window, not counted in the rate.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup_s: u64,
    /// The loops to run, in this order: `durable` (one node), `cluster` (the --spawn-cluster cluster, lanes over
    /// its entry points), `hop` (the cost of a forwarding hop, on an N-node cluster without fronts), `none` (one
    /// node without durability), `bare` (a bare axum endpoint). Default: durable,none,bare, with
    /// --spawn-cluster durable,cluster,hop,none,bare.
    #[arg(long, value_delimiter = ',', value_parser = ["durable", "cluster", "hop", "none", "bare"])]
    pub runs: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct BareArgs {
    /// Address to listen on; port 0 picks a free port (the chosen address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Accepted as `boxoffice serve` accepts it, and unused: the bare endpoint keeps nothing.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
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
    /// Run the lanes in this many child processes, each with a slice of the buyers and its own open-files limit,
    /// every connection opened before a common start: one process holds about 18,000 connections here.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub client_processes: Option<u64>,
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
    /// Then run the planned burst and compare the prediction with the measurement (with --spawn-cluster, on that
    /// cluster: the prediction then counts the forwarding the calibration measured).
    #[arg(long)]
    pub verify: bool,
    /// Skip the calibration of forwarding: how much more CPU a forwarded order costs than one sent to its buyer's
    /// node, as a share of the latter, e.g. 0.8 (measured with --spawn-cluster; 0 when neither).
    #[arg(long)]
    pub forward_cpu_share: Option<f64>,
    /// Skip the calibration of forwarding: the latency one forwarding hop adds to an order, in milliseconds.
    #[arg(long)]
    pub hop_latency_ms: Option<f64>,
    /// Orders in flight at most in the calibration and verification bursts; default: all at once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub concurrency: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct FlashSaleArgs {
    /// Sections of the hall, named A, B, C...
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::flash::SECTIONS_MAX)))]
    pub sections: u32,
    /// Rows per section (sections × rows × seats per row is at most 100,000, the server's limit).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub rows: u32,
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub seats_per_row: u32,
    /// People who come to buy when the sale opens.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub buyers: u64,
    /// Buyers in the hall at once; default: all of them.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub concurrency: Option<u64>,
    /// Clients watching the sale's live feed (each keeps everything it saw until the run is checked).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=crate::flash::SUBSCRIBERS_MAX))]
    pub subscribers: u64,
    /// Each buyer wants 1 to this many seats side by side.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub group_max: u32,
    /// Holds a buyer tries when the seats it picked were taken before it gives up.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
    /// Share of buyers whose card the provider declines.
    #[arg(long, default_value_t = 0.05)]
    pub decline_share: f64,
    /// Share of buyers who cancel their hold.
    #[arg(long, default_value_t = 0.10)]
    pub cancel_share: f64,
    /// Share of buyers who walk away and let their hold expire.
    #[arg(long, default_value_t = 0.10)]
    pub abandon_share: f64,
    /// Share of buyers who come back to pay after their hold expired.
    #[arg(long, default_value_t = 0.02)]
    pub late_share: f64,
    /// A buyer thinks up to this long between its hold and what it does next.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub think_ms: u64,
    /// With --spawn: how long a hold lasts (the server's --hold-ttl-s); against --target, the target's applies
    /// and the run lasts at least that long.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub hold_ttl_s: u64,
    /// With --spawn: the provider's latency per charge.
    #[arg(long, default_value_t = 0)]
    pub payment_latency_ms: u64,
}

/// A number of seconds that is finite and above zero.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(format!("{text} is not a positive number of seconds")),
    }
}
