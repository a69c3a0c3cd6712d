//! Command-line flags of `boxoffice`.

use crate::durability::DurabilityMode;
use crate::throttle::ThrottleLimits;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "boxoffice",
    version,
    about = "An actor-based, in-memory concert-ticket engine"
)]
pub struct Cli {
    /// How log lines are written to standard error: `text` (colour codes only on a terminal) or `json` (one
    /// object per line: timestamp, level, target, message and fields).
    #[arg(
        long,
        global = true,
        env = "BOXOFFICE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// Parses the command line. Every `serve` flag may also come from the environment variable `BOXOFFICE_<FLAG>`
    /// (`--connections-max` from `BOXOFFICE_CONNECTIONS_MAX`); a flag on the command line wins.
    pub fn parse_with_env() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::command().mut_subcommand("serve", |serve| {
            serve.mut_args(|arg| {
                let id = arg.get_id().as_str();
                if arg.get_long().is_none()
                    || arg.get_env().is_some()
                    || ["help", "version"].contains(&id)
                {
                    return arg;
                }
                // clap keeps the name for the life of the process.
                let name: &'static str = Box::leak(env_name(id).into_boxed_str());
                arg.env(name)
            })
        });
        Self::from_arg_matches(&command.get_matches()).unwrap_or_else(|error| error.exit())
    }
}

/// `BOXOFFICE_<FLAG>` of a `serve` flag's id (`connections_max` -> `BOXOFFICE_CONNECTIONS_MAX`).
fn env_name(id: &str) -> String {
    format!("BOXOFFICE_{}", id.to_uppercase().replace('-', "_"))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node: the HTTP front and the concert shards.
    Serve(Box<ServeArgs>),
    /// Snapshot every shard of a stopped node's data dir and truncate its journal (offline).
    Snapshot(DataDirArgs),
    /// Rotate the master key of a running node (`POST /admin/rotate-master-key`); sales go on meanwhile.
    RotateMasterKey(RotateMasterKeyArgs),
    /// Print what a stopped node's data dir holds and check every invariant offline; exits 1 if one is broken.
    Inspect(InspectArgs),
    /// Ask a running node (`POST /admin/backup`) to write a consistent copy of its data dir into `--dir`, on its
    /// own machine, while it goes on selling; the master key and the admin token are not in it.
    Backup(BackupArgs),
    /// Run a standalone payment provider: the subset of Stripe's PaymentIntents API a node uses, with its own
    /// data dir and seeded fault injection. The API key clients must present is `BOXOFFICE_PAYMENT_API_KEY`.
    PaymentProvider(ProviderArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Where to listen; port 0 picks a free one (printed on the first line of standard output).
    #[arg(
        long,
        env = "BOXOFFICE_PROVIDER_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    pub listen: SocketAddr,
    /// The provider's own data: its log (payment methods, intents, refunds, idempotency keys) and its master
    /// key (`master.key`, or `BOXOFFICE_MASTER_KEY` in its environment), which seals the card numbers.
    #[arg(
        long,
        env = "BOXOFFICE_PROVIDER_DATA_DIR",
        default_value = "./payment-data"
    )]
    pub data_dir: PathBuf,
    /// Latency added to every call, in milliseconds (the median with --latency-sigma).
    #[arg(long, env = "BOXOFFICE_PROVIDER_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Spread of a log-normal latency (the standard deviation of its logarithm); 0: every call takes
    /// --latency-ms.
    #[arg(long, env = "BOXOFFICE_PROVIDER_LATENCY_SIGMA", default_value_t = 0.0)]
    pub latency_sigma: f64,
    /// Share of authorizations declined at random, 0 to 1 (cards ending in 0002 are always declined).
    #[arg(long, env = "BOXOFFICE_PROVIDER_DECLINE_RATE", default_value_t = 0.0)]
    pub decline_rate: f64,
    /// Share of calls that fail, 0 to 1: a quarter each answer 500 before anything happens, answer 500 after the
    /// change committed, hang for --hang-ms after it committed, or have their connection cut in the middle of the
    /// answer after it committed; a quarter of this share of new connections is refused (reset at once).
    #[arg(long, env = "BOXOFFICE_PROVIDER_FAULT_RATE", default_value_t = 0.0)]
    pub fault_rate: f64,
    /// How long a hanging call waits before it answers, in milliseconds.
    #[arg(long, env = "BOXOFFICE_PROVIDER_HANG_MS", default_value_t = 30_000)]
    pub hang_ms: u64,
    /// Seed of the generator behind latencies, declines and faults.
    #[arg(long, env = "BOXOFFICE_PROVIDER_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Requests per second answered at most (a token bucket of one second's worth); beyond, 429 with
    /// Retry-After.
    #[arg(long, env = "BOXOFFICE_PROVIDER_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u32,
    /// How long after its creation an intent shows in `GET /v1/payment_intents/search`, in milliseconds (Stripe's
    /// search may lag up to a minute behind); reads by id and lists are never behind.
    #[arg(long, env = "BOXOFFICE_PROVIDER_SEARCH_LAG_MS", default_value_t = 0)]
    pub search_lag_ms: u64,
    /// Where to deliver webhook events (`http://HOST:PORT/payments/webhook` of a node), each signed with
    /// BOXOFFICE_WEBHOOK_SECRET in Stripe-Signature; none: no events. --fault-rate drops, delays and duplicates
    /// deliveries too.
    #[arg(long, env = "BOXOFFICE_PROVIDER_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct DataDirArgs {
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct RotateMasterKeyArgs {
    /// The node, over plain HTTP on a trusted network (e.g. 127.0.0.1).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Where to read the admin token when `BOXOFFICE_ADMIN_TOKEN` is not set.
    #[arg(long, default_value = "./data/admin-token")]
    pub admin_token_file: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// The node, over plain HTTP on a trusted network (e.g. 127.0.0.1).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Where to read the admin token when `BOXOFFICE_ADMIN_TOKEN` is not set.
    #[arg(long, default_value = "./data/admin-token")]
    pub admin_token_file: PathBuf,
    /// A directory that does not exist yet (or is empty), on the node's machine; a relative path is taken from
    /// the current directory.
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the chosen address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the node keeps its data: the journal, the sled database of snapshots, concerts and users, the
    /// simulator's ledger, and the admin token when generated.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// `fsync`: every change is journaled and a reply waits for its group commit. `none`: memory only, for
    /// benchmarks of what durability costs; everything is lost when the process stops.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: DurabilityMode,
    /// Each shard writes a snapshot after this many events (and at shutdown).
    #[arg(long, default_value_t = persistence::storage::SNAPSHOT_EVERY_EVENTS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub snapshot_every_events: u64,
    /// Create one seated and one general-admission demo concert if there are none.
    #[arg(long)]
    pub demo: bool,
    /// Payment provider: `sim`, the in-process simulator, or `http://HOST:PORT`, a provider speaking the
    /// PaymentIntents subset of `boxoffice payment-provider` (its key in BOXOFFICE_PAYMENT_API_KEY).
    #[arg(long, default_value = "sim", value_parser = parse_payment)]
    pub payment: String,
    /// Simulated provider latency per authorization (its capture is at once).
    #[arg(long, default_value_t = 0)]
    pub payment_latency_ms: u64,
    /// Share of authorizations the simulator declines at random (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub payment_decline_rate: f64,
    /// Calls in flight with the provider at most (authorizations, captures, reads, voids). 10,000 orders against a
    /// 1.4 s provider finish in about 1.4 s × 10,000 / this.
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub payment_concurrency: u32,
    /// Orders waiting for a payment slot at most; beyond that, 503 overloaded.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub payment_queue_max: u32,
    /// Calls to the payment provider per second at most, 0 for no limit: set it below the provider's own rate
    /// limit, so that it never answers 429. Calls wait their turn; an order that would wait more than half of
    /// --payment-timeout-ms is refused 503 overloaded before anything is reserved.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub payment_rate_limit: u32,
    /// Deadline of one call to the payment provider; an authorization that misses it has an unknown outcome: the
    /// seats stay reserved while the node reads the payment back (202 pending after 3 s).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub payment_timeout_ms: u64,
    /// How long a hold keeps its seats.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub hold_ttl_s: u64,
    /// Tickets in one order or hold at most.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_tickets_per_order: u32,
    /// Tickets of one concert one user may hold, be paying for and have bought, together; beyond that,
    /// 409 ticket_limit_reached.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_tickets_per_user: u32,
    /// How long a bearer token lives.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub token_ttl_s: u64,
    /// Requests served at once at most; beyond that, 503 overloaded.
    #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub requests_in_flight_max: u32,
    /// How long one request may take before it is answered 503 processing_timeout; must exceed
    /// --payment-timeout-ms. An order goes on in its own task and its outcome stays readable with its key.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub request_timeout_s: u64,
    /// Open connections at most; beyond that, new connections wait in the listen backlog. Keep it below
    /// `ulimit -n`.
    #[arg(long, default_value_t = crate::connections::CONNECTIONS_MAX_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections_max: u32,
    /// Open connections one client address (IPv4, or IPv6 /64) may hold; beyond that a new connection is answered
    /// 429 too_many_connections and closed. Default: a tenth of --connections-max. Behind a reverse proxy every
    /// client has the proxy's address: raise it there.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections_per_address_max: Option<u32>,
    /// How long a client may leave response bytes untaken (it stopped reading) before its connection is closed.
    #[arg(long, default_value_t = crate::connections::SEND_TIMEOUT_S_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub send_timeout_s: u64,
    /// A reverse proxy (address, or network as ADDR/PREFIX; repeat it or separate with commas) whose
    /// X-Forwarded-For names the client: the per-address limits then count the client, not the proxy.
    #[arg(long)]
    pub trusted_proxy: Vec<String>,
    /// Failed logins per username per window; beyond that, 429 too_many_attempts until the window ends.
    #[arg(long, default_value_t = crate::throttle::LOGIN_FAILURES_PER_USERNAME_MAX_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub login_failures_per_username_max: u32,
    /// Failed logins per client address per window; beyond that, 429 too_many_attempts until the window ends.
    #[arg(long, default_value_t = crate::throttle::LOGIN_FAILURES_PER_ADDRESS_MAX_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub login_failures_per_address_max: u32,
    /// The login throttle's window: it starts with a key's first counted attempt.
    #[arg(long, default_value_t = crate::throttle::LOGIN_FAILURE_WINDOW_S_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_failure_window_s: u64,
    /// Registrations per client address per window; beyond that, 429 too_many_signups until the window ends.
    #[arg(long, default_value_t = crate::per_address::SIGNUPS_PER_ADDRESS_MAX_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub signups_per_address_max: u32,
    /// The sign-up window: it starts with an address's first registration.
    #[arg(long, default_value_t = crate::per_address::SIGNUP_WINDOW_S_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub signup_window_s: u64,
    /// Tickets one client address may hold at once in live holds; beyond that, 429 too_many_held_tickets.
    #[arg(long, default_value_t = crate::per_address::HELD_TICKETS_PER_ADDRESS_MAX_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub held_tickets_per_address_max: u32,
    /// Actix arbiters (threads) for shard actors; default: one per four cores (at least one). A shard actor's
    /// work is a few microseconds of an order's CPU, and a busy arbiter is not woken for every message.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_024))]
    pub arbiters: Option<u32>,
    /// In a cluster: `shard` owns the shards and users placed on it, `front` owns nothing and serves the public
    /// API by asking shard nodes.
    #[arg(long, env = "BOXOFFICE_ROLE", value_enum, default_value = "shard")]
    pub role: RoleArg,
    /// In a cluster: every shard node's internal base URL, in node order (`http://HOST:PORT,...`); the same list
    /// on every process. Needs BOXOFFICE_CLUSTER_SECRET.
    #[arg(long, env = "BOXOFFICE_CLUSTER_NODES")]
    pub cluster_nodes: Option<String>,
    /// A shard node's number: its place in --cluster-nodes, from 0.
    #[arg(long, env = "BOXOFFICE_NODE_ID", value_parser = clap::value_parser!(u32).range(0..256))]
    pub node_id: Option<u32>,
    /// Where a shard node serves the other processes of its cluster (HTTP/2, authenticated by the cluster
    /// secret). A front has none.
    #[arg(long, env = "BOXOFFICE_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
}

/// `--role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Shard,
    Front,
}

/// The environment variable holding the cluster secret.
pub const CLUSTER_SECRET_ENV: &str = "BOXOFFICE_CLUSTER_SECRET";

impl ServeArgs {
    /// The cluster this process belongs to, if `--cluster-nodes` is given: its role, node list and secret.
    pub fn cluster(&self) -> Result<Option<cluster::config::ClusterConfig>, String> {
        let Some(nodes) = &self.cluster_nodes else {
            if self.role == RoleArg::Front
                || self.node_id.is_some()
                || self.internal_listen.is_some()
            {
                return Err(
                    "--role front, --node-id and --internal-listen need --cluster-nodes".into(),
                );
            }
            return Ok(None);
        };
        let secret = std::env::var(CLUSTER_SECRET_ENV)
            .map_err(|_| format!("--cluster-nodes needs {CLUSTER_SECRET_ENV}"))?;
        let role = match (self.role, self.node_id) {
            (RoleArg::Shard, Some(node)) => cluster::config::Role::Shard { node },
            (RoleArg::Shard, None) => return Err("a shard node needs --node-id".into()),
            (RoleArg::Front, None) => cluster::config::Role::Front,
            (RoleArg::Front, Some(_)) => return Err("a front has no --node-id".into()),
        };
        match role {
            cluster::config::Role::Front if self.internal_listen.is_some() => {
                return Err("a front has no internal port: drop --internal-listen".into());
            }
            cluster::config::Role::Shard { .. } if self.internal_listen.is_none() => {
                return Err("a shard node needs --internal-listen".into());
            }
            _ => {}
        }
        if self.demo {
            return Err(
                "--demo seeds a single node; create a cluster's concerts with POST /concerts"
                    .into(),
            );
        }
        if self.durability == DurabilityMode::None && role != cluster::config::Role::Front {
            return Err(
                "a cluster's shard nodes keep their data: --durability none is for a single node"
                    .into(),
            );
        }
        cluster::config::ClusterConfig::new(role, nodes, &secret).map(Some)
    }
}

impl ServeArgs {
    /// How the public port treats its connections.
    pub fn connection_settings(&self) -> Result<crate::connections::ConnectionSettings, String> {
        Ok(crate::connections::ConnectionSettings::new(
            self.connections_max,
            self.connections_per_address_max,
            Duration::from_secs(self.send_timeout_s),
            crate::connections::TrustedProxies::parse(&self.trusted_proxy)?,
        ))
    }

    /// The HTTP front's limits; refuses a request timeout that would cut orders off while they wait for the
    /// payment provider.
    pub fn http_limits(&self) -> Result<HttpLimits, String> {
        if self.request_timeout_s * 1000 <= self.payment_timeout_ms {
            return Err(format!(
                "--request-timeout-s ({} s) must exceed --payment-timeout-ms ({} ms)",
                self.request_timeout_s, self.payment_timeout_ms
            ));
        }
        Ok(HttpLimits {
            requests_in_flight_max: self.requests_in_flight_max as usize,
            request_timeout: Duration::from_secs(self.request_timeout_s),
            login: ThrottleLimits {
                window_ms: self.login_failure_window_s * 1000,
                failures_per_username_max: self.login_failures_per_username_max,
                failures_per_address_max: self.login_failures_per_address_max,
            },
            signups_per_address_max: self.signups_per_address_max,
            signup_window_ms: self.signup_window_s * 1000,
            held_tickets_per_address_max: self.held_tickets_per_address_max,
        })
    }
}

/// What the HTTP front limits, from the flags.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Requests served at once at most; see `crate::guard`.
    pub requests_in_flight_max: usize,
    /// How long one request may take; see `crate::guard`.
    pub request_timeout: Duration,
    pub login: ThrottleLimits,
    /// See `crate::per_address`.
    pub signups_per_address_max: u32,
    pub signup_window_ms: u64,
    pub held_tickets_per_address_max: u32,
}

fn parse_probability(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err("must be between 0.0 and 1.0".into())
    }
}

/// `--payment`: `sim`, or the base URL of a provider, `http://HOST:PORT` without a path.
fn parse_payment(text: &str) -> Result<String, String> {
    if text == "sim" {
        return Ok(text.to_owned());
    }
    let authority = text
        .strip_prefix("http://")
        .ok_or("`sim` or http://HOST:PORT")?
        .trim_end_matches('/');
    let valid = !authority.is_empty()
        && authority.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0)
        })
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if valid {
        Ok(format!("http://{authority}"))
    } else {
        Err("`sim` or http://HOST:PORT (no path)".into())
    }
}
