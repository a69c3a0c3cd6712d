//! Wires a node together and runs it until SIGTERM or SIGINT.
//!
//! Must run inside an actix `System` built on a tokio multi-thread runtime (see `main.rs` and FACTS.md):
//! shard actors live on one arbiter per core, the HTTP front on tokio's workers.
//!
//! In a cluster a shard node also serves its internal port (`cluster::server`), rebuilds its users' book from
//! every node after a start (`cluster::book`), fetches concerts it missed (`cluster::catalog`), and retries what
//! could not reach another node (`Router::upkeep`). Its data dir remembers which node it belongs to
//! ([`NODE_ID_FILE`]): a start with another `--node-id` is refused, so a volume never serves as two nodes. A
//! front runs `crate::cluster::front` instead.

use crate::cluster::ClusterState;
use crate::config::ServeArgs;
use crate::durability::{DurabilityMode, Durable, SimulatorStore};
use crate::keys::MasterKeys;
use crate::state::AppState;
use crate::users::UserStore;
use actix::Arbiter;
use engine::clock::{Clock, SystemClock};
use engine::concert::{ConcertSpec, Layout, Section};
use engine::desk::{Desk, DeskConfig};
use engine::ids::{ConcertId, OrderId, random_hex};
use engine::payment::{PaymentPool, PaymentPoolConfig, SimulatedProvider};
use engine::remote::NodeId;
use engine::router::{Router, shard_arbiter};
use metrics_exporter_prometheus::PrometheusHandle;
use persistence::storage::{Storage, StorageOptions};
use persistence::wire::MetaRecord;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use std::time::Instant;

/// How often old idempotency keys, ended holds and expired tokens are swept, and histograms compacted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// File in the data directory holding a generated admin token.
const ADMIN_TOKEN_FILE: &str = "admin-token";
/// File in the data directory of a cluster's shard node holding its node id.
pub const NODE_ID_FILE: &str = "cluster-node-id";
/// How often a cluster node retries releases and moves that could not reach another node.
const CLUSTER_UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A node's parts, wired together: what `run` serves, and what an in-process client (a bench) drives through
/// [`crate::app`] without a socket.
pub struct Node {
    pub state: AppState,
    router: Arc<Router>,
    desk: Arc<Desk>,
    users: Arc<UserStore>,
    durable: Durable,
    master_keys: Arc<MasterKeys>,
    /// The payment simulator, whose ledger recovery restores.
    simulator: Arc<SimulatedProvider>,
    arbiters: Vec<Arbiter>,
}

impl Node {
    /// Builds the node from its flags: arbiters, router, payment pool, desk, user store. Nothing is recovered
    /// yet: the state answers `503 recovering` until [`Node::recover`] has run.
    pub fn assemble(args: &ServeArgs) -> Result<Node, String> {
        Self::assemble_in(args, None)
    }

    /// [`Node::assemble`] for shard node `cluster.node()` of a cluster.
    pub fn assemble_in(
        args: &ServeArgs,
        cluster: Option<Arc<ClusterState>>,
    ) -> Result<Node, String> {
        crate::private_files::restrict_new_files();
        if args.data_dir.exists() {
            crate::private_files::report_wide_permissions(&args.data_dir);
        }
        std::fs::create_dir_all(&args.data_dir).map_err(|error| {
            format!(
                "cannot create data dir {}: {error}",
                args.data_dir.display()
            )
        })?;
        let node = cluster.as_ref().and_then(|cluster| cluster.node());
        if let Some(node) = node {
            claim_data_dir(&args.data_dir, node)?;
        }
        let admin_token = admin_token(&args.data_dir, cluster.is_some())?;
        let metrics = metrics_handle()?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let durable = Durable::default();

        let arbiter_count = args.arbiters.map(|n| n as usize).unwrap_or_else(|| {
            default_arbiters(std::thread::available_parallelism().map_or(1, |n| n.get()))
        });
        let arbiters: Vec<Arbiter> = (0..arbiter_count)
            .map(|_| shard_arbiter())
            .collect::<Result<_, _>>()
            .map_err(|error| format!("cannot start a shard arbiter: {error}"))?;
        let handles = arbiters.iter().map(Arbiter::handle).collect();
        let router = Arc::new(match (&cluster, node) {
            (Some(cluster), Some(node)) => Router::clustered(
                handles,
                Arc::new(durable.clone()),
                clock.clone(),
                node,
                Arc::new(cluster::peers::PeerLink(cluster.peers.clone())),
            ),
            _ => Router::new(handles, Arc::new(durable.clone()), clock.clone()),
        });
        let master_keys = Arc::new(MasterKeys::load(&args.data_dir)?);
        let (simulator, simulator_store) = payment_simulator(args, &durable, master_keys.ring());
        let provider: Arc<dyn engine::payment::PaymentProvider> = if args.payment == "sim" {
            simulator.clone()
        } else {
            Arc::new(crate::payment_http::HttpProvider::new(
                &args.payment,
                Duration::from_millis(args.payment_timeout_ms),
                args.payment_concurrency as usize,
            )?)
        };
        let payments = Arc::new(PaymentPool::new(
            provider,
            PaymentPoolConfig {
                concurrency: args.payment_concurrency as usize,
                queue_max: args.payment_queue_max as usize,
                timeout: Duration::from_millis(args.payment_timeout_ms),
                rate_per_s: (args.payment_rate_limit > 0).then_some(args.payment_rate_limit),
            },
        ));
        let desk = Arc::new(Desk::new(
            router.clone(),
            payments,
            Arc::new(durable.clone()),
            clock.clone(),
            DeskConfig {
                hold_ttl_ms: args.hold_ttl_s * 1000,
                tickets_per_order_max: args.max_tickets_per_order,
                tickets_per_user_max: args.max_tickets_per_user,
            },
        ));
        if let Some(node) = node {
            // A cluster node's book is complete only once every node has been read (`cluster::book`): nothing of
            // its users' may be bought, held or read before, not even between `ready` and that task's start.
            desk.set_book_waiting_for(node);
        }
        let users = Arc::new(UserStore::new(
            args.token_ttl_s * 1000,
            clock,
            durable.clone(),
            master_keys.ring(),
            node,
        ));
        if let Some(store) = simulator_store
            && args.payment == "sim"
        {
            users.set_card_vault(store);
        }
        let state = AppState::new(
            desk.clone(),
            users.clone(),
            metrics,
            durable.clone(),
            master_keys.clone(),
            &admin_token,
            args.http_limits()?,
        )
        .in_cluster(cluster)
        .with_webhooks(crate::webhook::Webhooks::from_env(durable.clone())?.map(Arc::new));
        Ok(Node {
            state,
            router,
            desk,
            users,
            durable,
            master_keys,
            simulator,
            arbiters,
        })
    }

    /// Recovers from the data dir (see [`recover`]), finishes an interrupted key rotation, creates the demo
    /// concerts when asked, and opens the node for orders.
    pub async fn recover(&self, args: &ServeArgs) -> Result<(), String> {
        let clustered = self.state.cluster.is_some();
        recover(
            args,
            &self.desk,
            &self.users,
            &self.durable,
            &self.simulator,
            self.state.webhooks.as_deref(),
            clustered,
        )
        .await?;
        self.master_keys
            .finish_interrupted_rotation(&self.users)
            .await
            .map_err(|error| format!("cannot finish the master key rotation: {}", error.message))?;
        if args.demo && self.router.concerts().is_empty() {
            create_demo_concerts(&self.router, &self.durable).await?;
        }
        self.state.recovered.store(true, Ordering::Release);
        self.state.ready.store(true, Ordering::Release);
        tracing::info!("ready");
        if let Some(cluster) = self.state.cluster.clone() {
            // The users' book comes from every node; concerts missed while down come from the others.
            tokio::spawn(cluster::book::rebuild(
                self.desk.clone(),
                self.router.concerts(),
            ));
            tokio::spawn(crate::cluster::catalog::sync(self.state.clone(), cluster));
        }
        Ok(())
    }

    /// Sweeps old idempotency keys, ended holds and expired tokens, and compacts histograms, until aborted; in a
    /// cluster, also retries what could not reach another node.
    pub fn spawn_upkeep(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let (desk, users, metrics, router) = (
            self.desk.clone(),
            self.users.clone(),
            self.state.metrics.clone(),
            self.router.clone(),
        );
        let mut tasks = vec![tokio::spawn(async move {
            let mut interval = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                interval.tick().await;
                desk.sweep();
                users.sweep();
                metrics.run_upkeep();
            }
        })];
        if self.state.cluster.is_some() {
            // Its own task: a round that waits for a node that does not answer must not hold up the sweep.
            tasks.push(tokio::spawn(async move {
                let mut interval = tokio::time::interval(CLUSTER_UPKEEP_INTERVAL);
                loop {
                    interval.tick().await;
                    router.upkeep().await;
                }
            }));
        }
        tasks
    }

    /// Writes the final snapshots, closes the journal (the simulator's ledger with it), and stops the arbiters.
    pub async fn stop(self) {
        if !self
            .state
            .desk
            .wait_for_captures(CAPTURES_AT_STOP_MAX)
            .await
        {
            tracing::warn!("stopping with captures not answered yet: the next start resumes them");
        }
        if let Some(storage) = self.durable.storage() {
            for concert in self.router.concerts() {
                if let Err(error) = concert.snapshot().await {
                    tracing::warn!(concert_id = %concert.spec.id, %error, "final snapshot failed; the journal still covers it");
                }
            }
            storage.close();
            tracing::info!("final snapshots written");
        }
        for arbiter in self.arbiters {
            arbiter.stop();
        }
    }
}

/// How long a stopping node waits for the captures it has begun.
const CAPTURES_AT_STOP_MAX: Duration = Duration::from_secs(10);

pub async fn run(args: ServeArgs) -> Result<(), String> {
    let cluster = args
        .cluster()?
        .map(|config| ClusterState::new(config, Duration::from_secs(args.request_timeout_s)));
    if let Some(cluster) = cluster.clone().filter(|cluster| cluster.is_front()) {
        let token = std::env::var(ADMIN_TOKEN_ENV)
            .map_err(|_| format!("a cluster's processes share {ADMIN_TOKEN_ENV}: set it"))?;
        return crate::cluster::front::run(args, cluster, token).await;
    }
    let connections = args.connection_settings()?;
    let node = Node::assemble_in(&args, cluster)?;
    let state = node.state.clone();
    let listener = listen(args.listen)
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    // Tests and scripts read this line to learn the port when started with port 0; /health says when it is ready.
    println!("boxoffice listening on http://{address}");
    tracing::info!(%address, arbiters = node.arbiters.len(), durability = ?args.durability, "listening; recovering");
    let ready = state.ready.clone();
    let draining = state.shutdown.clone();
    let server = tokio::spawn(crate::connections::serve(
        crate::connections::ConnectionLimit::new(listener, &connections),
        crate::app(state.clone()),
        connections.trusted_proxies.clone(),
        async move {
            shutdown_signal().await;
            ready.store(false, Ordering::Release);
            draining.send_replace(true);
            tracing::info!("shutting down: draining in-flight requests");
        },
    ));

    let internal = match (&state.cluster, args.internal_listen) {
        (Some(cluster), Some(address)) => {
            let listener =
                listen(address).map_err(|error| format!("cannot listen on {address}: {error}"))?;
            tracing::info!(%address, node = ?cluster.node(), "internal port listening");
            let service = cluster::server::InternalService::new(
                cluster.config.secret().clone(),
                Some(node.router.clone()),
                Some(Arc::new(cluster::feed::NodeFeeds)),
                state.recovered.clone(),
                crate::forwarded_app(state.clone()),
                crate::internal_app(state.clone()),
            );
            let mut stopped = state.shutdown.subscribe();
            Some(tokio::spawn(cluster::server::serve(
                listener,
                service,
                async move {
                    let _ = stopped.wait_for(|draining| *draining).await;
                },
            )))
        }
        _ => None,
    };

    node.recover(&args).await?;
    let upkeep = node.spawn_upkeep();
    server
        .await
        .map_err(|error| format!("server task failed: {error}"))?
        .map_err(|error| format!("server failed: {error}"))?;
    for task in upkeep {
        task.abort();
    }
    if let Some(internal) = internal {
        internal.abort();
    }
    node.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Connections the kernel completes and queues for `accept` before it drops new ones (capped by
/// `net.core.somaxconn`, 4096 on Debian 12). A burst of simultaneous buyers arrives as that many connections at
/// once: with a short queue (tokio's `TcpListener::bind` asks for 1024) the rest are dropped, and their clients retry the
/// handshake after 1, 3, 7, 15... seconds, which becomes the tail of the burst's latency.
pub const LISTEN_BACKLOG: u32 = 65_535;

pub(crate) fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The in-process payment simulator; with durability, its ledger lives in the node's storage (restored by
/// [`recover`]; see `persistence::ledger`).
fn payment_simulator(
    args: &ServeArgs,
    durable: &Durable,
    keys: Arc<persistence::crypto::KeyRing>,
) -> (Arc<SimulatedProvider>, Option<Arc<SimulatorStore>>) {
    let latency = Duration::from_millis(args.payment_latency_ms);
    if args.durability == DurabilityMode::None {
        return (
            Arc::new(SimulatedProvider::new(latency, args.payment_decline_rate)),
            None,
        );
    }
    let store = Arc::new(SimulatorStore::new(durable.clone(), keys));
    let simulator = SimulatedProvider::with_store(
        latency,
        args.payment_decline_rate,
        std::collections::HashMap::new(),
        store.clone(),
    );
    (Arc::new(simulator), Some(store))
}

/// Moves the cards of users whose records an earlier version wrote (their number, and in the oldest format their
/// cvv, sealed in the user's record) into the payment provider's vault, and journals each user again with the
/// payment method id instead; waits until every new record is durable. A card the vault refuses now (expired
/// since) is dropped: its user stores a new one before the next order.
async fn move_legacy_cards(
    desk: &Arc<Desk>,
    users: &UserStore,
    cards: Vec<crate::users::LegacyCard>,
) -> Result<(), String> {
    if cards.is_empty() {
        return Ok(());
    }
    let (mut moved, mut dropped) = (0, 0);
    let mut commits = Vec::with_capacity(cards.len());
    for crate::users::LegacyCard { user, card } in cards {
        let mut payment_card = card.payment_card();
        payment_card.cvv = None;
        match desk.vault_card(payment_card).await {
            Ok(vaulted) => {
                commits.push(users.attach_card(&user, Some(card.on_file(vaulted))));
                moved += 1;
            }
            Err(engine::error::EngineError::CardRefused { reason }) => {
                // Rewritten without it: the old record, with its number (and cvv), must not stay.
                tracing::warn!(user_id = %user, %reason, "a card on file the vault refuses is dropped");
                commits.push(users.attach_card(&user, None));
                dropped += 1;
            }
            Err(error) => return Err(format!("cannot move a card into the vault: {error}")),
        }
    }
    for commit in commits {
        commit
            .wait()
            .await
            .map_err(|error| format!("cannot rewrite a user with its vaulted card: {error}"))?;
    }
    tracing::info!(
        moved,
        dropped,
        "cards on file moved into the payment provider's vault (an earlier version kept them sealed, some with their cvv)"
    );
    Ok(())
}

/// Opens the storage and rebuilds the node: users, concerts with their shards, the desk's book; then settles the
/// orders whose payment was under way when the node stopped.
async fn recover(
    args: &ServeArgs,
    desk: &Arc<Desk>,
    users: &UserStore,
    durable: &Durable,
    simulator: &SimulatedProvider,
    webhooks: Option<&crate::webhook::Webhooks>,
    clustered: bool,
) -> Result<(), String> {
    if args.durability == DurabilityMode::None {
        return Ok(());
    }
    let started = Instant::now();
    let dir = args.data_dir.clone();
    let options = StorageOptions {
        snapshot_every_events: args.snapshot_every_events,
        ..StorageOptions::default()
    };
    let (storage, mut recovered) =
        tokio::task::spawn_blocking(move || Storage::open(&dir, options))
            .await
            .map_err(|error| format!("recovery task failed: {error}"))?
            .map_err(|error| error.to_string())?;
    durable.set(storage);
    // Before anything asks the simulator what became of a charge (settling the orders in flight, below).
    simulator.restore(std::mem::take(&mut recovered.ledger));
    let (events_replayed, snapshots_rejected) =
        (recovered.events_replayed(), recovered.snapshots_rejected());
    if let Some(store) = users.card_vault() {
        simulator.restore_cards(store.restore(std::mem::take(&mut recovered.payment_methods))?);
    }
    if let Some(webhooks) = webhooks {
        webhooks.restore(std::mem::take(&mut recovered.webhook_events));
    }
    desk.load_payments(
        std::mem::take(&mut recovered.payments)
            .into_iter()
            .map(|(order_id, record)| (OrderId::from(order_id), record))
            .collect(),
    );
    let restored = users.restore(recovered.users)?;
    let user_count = restored.users;
    move_legacy_cards(desk, users, restored.legacy_cards).await?;
    let mut in_flight = Vec::new();
    let (mut sold, mut held) = (0, 0);
    let concert_count = recovered.concerts.len();
    let node = desk.router().node();
    for concert in recovered.concerts {
        let placement = concert
            .placement
            .unwrap_or_else(|| vec![node; concert.spec.shards as usize]);
        for (shard, state) in concert.states.iter().enumerate() {
            if placement[shard] == node {
                sold += state.availability().sold;
                held += state.availability().held;
            }
        }
        // A cluster node's book comes from every node's shards once it runs (`cluster::book`).
        if !clustered {
            in_flight.extend(desk.restore(&concert.spec, &concert.states));
        }
        desk.router()
            .start_placed_concert(concert.spec, placement, concert.states)
            .map_err(|error| format!("cannot restart a concert: {error}"))?;
    }
    let in_flight_count = in_flight.len();
    // A cluster node settles once its book is whole (`cluster::book`): its payment records wait until then.
    let confirmed = if clustered {
        0
    } else {
        desk.settle_all(in_flight).await
    };
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        read_ms = recovered.elapsed.as_millis() as u64,
        concerts = concert_count,
        users = user_count,
        tickets_sold = sold,
        tickets_held = held,
        journal_records = recovered.journal.records,
        journal_segments = recovered.journal.segments,
        events_replayed,
        snapshots_rejected,
        torn_tail_bytes = recovered
            .journal
            .torn_tail
            .as_ref()
            .map_or(0, |torn| torn.bytes_cut),
        in_flight = in_flight_count,
        in_flight_confirmed = confirmed,
        in_flight_released = in_flight_count - confirmed,
        "recovery finished"
    );
    Ok(())
}

/// The environment variable holding the admin token.
pub const ADMIN_TOKEN_ENV: &str = "BOXOFFICE_ADMIN_TOKEN";

/// The admin token from `BOXOFFICE_ADMIN_TOKEN`, or one generated once into the data dir (mode 0600); a cluster's
/// processes share theirs, so there it must be set.
fn admin_token(data_dir: &Path, clustered: bool) -> Result<String, String> {
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
        check_admin_token(&token).map_err(|why| format!("{ADMIN_TOKEN_ENV} {why}"))?;
        return Ok(token);
    }
    if clustered {
        return Err(format!(
            "a cluster's processes share {ADMIN_TOKEN_ENV}: set it"
        ));
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            check_admin_token(&token)
                .map_err(|why| format!("the admin token in {} {why}", path.display()))?;
            tracing::info!(path = %path.display(), "admin token read from file");
            return Ok(token);
        }
    }
    let token = random_hex(32);
    write_private(&path, &token)?;
    tracing::info!(path = %path.display(), "admin token generated and written to file");
    Ok(token)
}

/// Bits of entropy an admin token needs at least, by [`token_entropy_bits`].
pub const ADMIN_TOKEN_BITS_MIN: f64 = 128.0;

/// Refuses an admin token that is easy to guess: whitespace or control characters, fewer than
/// [`ADMIN_TOKEN_BITS_MIN`] estimated bits, fewer than 8 distinct characters, or one character in more than a
/// quarter of it. The reason never quotes the token.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let mut counts = std::collections::HashMap::new();
    for c in token.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let length = token.chars().count();
    let most = counts.values().copied().max().unwrap_or(0);
    if counts.len() < 8 || most * 4 > length {
        return Err("repeats itself: use a random token, e.g. `openssl rand -hex 32`".into());
    }
    let bits = token_entropy_bits(token);
    if bits < ADMIN_TOKEN_BITS_MIN {
        return Err(format!(
            "has about {bits:.0} bits of entropy; at least {ADMIN_TOKEN_BITS_MIN:.0} are needed (32 hex digits, \
             e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

/// An estimate of a token's entropy, as if each character were drawn at random from the smallest usual alphabet
/// holding all of them: 16 if they are all hex digits, otherwise the classes it uses (10 digits, 26 lower case,
/// 26 upper case letters, 33 other visible ASCII, 128 for anything else) added up.
pub fn token_entropy_bits(token: &str) -> f64 {
    let length = token.chars().count() as f64;
    if token.chars().all(|c| c.is_ascii_hexdigit()) {
        return length * 4.0;
    }
    type Class = (fn(&char) -> bool, f64);
    let classes: [Class; 5] = [
        (char::is_ascii_digit, 10.0),
        (char::is_ascii_lowercase, 26.0),
        (char::is_ascii_uppercase, 26.0),
        (char::is_ascii_punctuation, 33.0),
        (|c: &char| !c.is_ascii(), 128.0),
    ];
    let alphabet: f64 = classes
        .iter()
        .filter(|(member, _)| token.chars().any(|c| member(&c)))
        .map(|(_, size)| size)
        .sum();
    length * alphabet.log2()
}

/// Records in the data dir which node of a cluster it belongs to, or checks that it is that node's: a volume
/// never serves as two nodes, and a node never starts on another's volume.
fn claim_data_dir(data_dir: &Path, node: NodeId) -> Result<(), String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(recorded) => {
            let recorded: NodeId = recorded
                .trim()
                .parse()
                .map_err(|_| format!("{} does not hold a node id", path.display()))?;
            if recorded != node {
                return Err(format!(
                    "the data dir {} belongs to node {recorded}, not {node}: start it with --node-id {recorded}, or give node {node} its own",
                    data_dir.display()
                ));
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let has_data = data_dir.join("journal").exists() || data_dir.join("db").exists();
            if has_data {
                return Err(format!(
                    "the data dir {} holds a single node's data; a cluster's node starts on an empty one",
                    data_dir.display()
                ));
            }
            write_private(&path, &format!("{node}\n"))
        }
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    file.write_all(contents.as_bytes())
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// Arbiters for `cores` cores when `--arbiters` is not given: one per four cores, at least one. Shard actors
/// take a few microseconds of an order's CPU; the rest runs on the tokio workers, one per core. Every message
/// to an idle arbiter wakes its thread (a syscall and a context switch), so fewer, busier arbiters cost less:
/// on 2 cores one arbiter instead of two took the CPU of a durable order from 95 to 83 us (docs/performance.md).
fn default_arbiters(cores: usize) -> usize {
    cores.div_ceil(ARBITER_CORES).max(1)
}

const ARBITER_CORES: usize = 4;

/// One recorder per process: the server installs it once, however often `run` is called.
pub(crate) fn metrics_handle() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = crate::telemetry::builder()
        .and_then(|builder| builder.install_recorder())
        .map_err(|error| format!("cannot install metrics recorder: {error}"))?;
    crate::telemetry::register();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

async fn create_demo_concerts(router: &Router, durable: &Durable) -> Result<(), String> {
    let seated = ConcertSpec::new(
        ConcertId::random(),
        "Demo: The Seated Symphony".into(),
        "2027-06-01T19:30:00Z".into(),
        4_500,
        Layout::Seated {
            sections: vec![
                Section {
                    name: "A".into(),
                    rows: 10,
                    seats_per_row: 20,
                },
                Section {
                    name: "B".into(),
                    rows: 15,
                    seats_per_row: 24,
                },
            ],
        },
        Some(2),
    )
    .map_err(|error| error.to_string())?;
    let general = ConcertSpec::new(
        ConcertId::random(),
        "Demo: General Admission Night".into(),
        "2027-07-15T21:00:00Z".into(),
        3_000,
        Layout::General { capacity: 100_000 },
        Some(8),
    )
    .map_err(|error| error.to_string())?;
    for spec in [seated, general] {
        let concert = router
            .add_concert(spec)
            .map_err(|error| error.to_string())?;
        durable
            .append_meta(MetaRecord::Concert((*concert.spec).clone()))
            .wait()
            .await
            .map_err(|error| error.to_string())?;
        tracing::info!(concert_id = %concert.spec.id, name = %concert.spec.name, "demo concert created");
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_arbiter_per_four_cores() {
        let arbiters: Vec<usize> = [1, 2, 4, 5, 8, 16].map(default_arbiters).to_vec();
        assert_eq!(arbiters, [1, 1, 1, 2, 2, 4]);
    }

    #[test]
    fn admin_tokens_need_128_bits_and_no_repetition() {
        assert!(check_admin_token(&" ".repeat(16)).is_err());
        assert!(check_admin_token(&"a".repeat(64)).is_err());
        assert!(check_admin_token(&"ab".repeat(40)).is_err());
        assert!(
            check_admin_token("0123456789abcdef0123456789abcde").is_err(),
            "31 hex digits: 124 bits"
        );
        assert!(
            check_admin_token("0123456789abcdef0123456789abcdef").is_ok(),
            "32 hex digits: 128 bits"
        );
        assert!(check_admin_token("short-Token-1!").is_err());
        assert!(check_admin_token("with space 0123456789abcdef0123456789").is_err());
        assert!(
            check_admin_token(&random_hex(32)).is_ok(),
            "what the node generates"
        );
        let error = check_admin_token("abcdefgh").expect_err("weak");
        assert!(
            !error.contains("abcdefgh"),
            "the reason never quotes the token"
        );
    }
}
