//! The study's experiment against a running node: `users` buyers are created (`POST /admin/users/bulk`) and a
//! general-admission concert of `capacity` tickets (admin), the users are fetched (`GET /users`, as the study did),
//! all before the clock starts; then every buyer orders one ticket at the same moment, at most `concurrency`
//! requests in flight, and each order's latency is taken from the start of the burst, so that an order waiting for
//! a slot counts its wait. Afterwards the concert's counts are read back and checked against the answers.
//!
//! With several targets (a cluster's nodes or fronts) the lanes are spread over them round-robin, and setup and
//! checks go to the first. With `--client-processes K` the lanes run in K processes of their own
//! ([`crate::processes`]), started on one common instant.

use crate::client::{Connection, Endpoints, Failure, Resend, Target, error_code};
use crate::netstat::TcpCounters;
use crate::report::{
    BurstParameters, BurstReport, Invariants, Outcome, Sample, by_target, summarize,
};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Users one `POST /admin/users/bulk` creates at most (the server's `USERS_BULK_MAX`).
pub const USERS_PER_BULK_CALL_MAX: u64 = 10_000;
/// Users per bulk call to a cluster: the node that takes the call sends each other node its share of the usernames
/// in one internal request, and those are limited to 64 KiB (the API's body limit), about 2,000 usernames; 10,000
/// per call answer `413 payload_too_large` on three nodes.
pub const CLUSTER_USERS_PER_BULK_CALL: u64 = 1_000;
/// Users one `GET /users` page lists at most (the server's `PAGE_LIMIT_MAX`).
const USERS_PER_PAGE_MAX: u64 = 1_000;
/// The card every buyer has on file: the simulator approves it.
pub const APPROVED_CARD: &str = "4242424242424242";
/// A card the simulator always declines (its number ends in the simulator's declining suffix, `0002`).
pub const DECLINED_CARD: &str = "4000000000000002";

/// One burst to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub users: u64,
    pub concurrency: u64,
    pub capacity: u64,
    pub payment_latency_ms: Option<u64>,
    pub shards: Option<u32>,
    /// Usernames are this and an index; unique per burst so that bursts can share a server.
    pub prefix: String,
    /// `--client-processes`: run the lanes in this many child processes; `None`: in this one.
    pub client_processes: Option<u64>,
}

#[derive(Deserialize)]
struct Registered {
    id: String,
    username: String,
    token: String,
}

/// A buyer: its bearer token and, in a cluster, the shard node it lives on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buyer {
    pub token: String,
    pub node: Option<u32>,
}

/// The shard node in a cluster's user id, `u_<node>-<hex>`; `None` for a single node's `u_<hex>`.
pub fn node_of_user(id: &str) -> Option<u32> {
    let (node, _) = id.strip_prefix("u_")?.split_once('-')?;
    node.parse().ok()
}

#[derive(Deserialize)]
struct Registrations {
    users: Vec<Registered>,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Listed {
    username: String,
}

#[derive(Deserialize)]
struct UserPage {
    users: Vec<Listed>,
    next_offset: Option<u64>,
}

/// A concert's counts, as `GET /concerts/{id}` gives them.
#[derive(Deserialize)]
pub struct Counts {
    pub capacity: u64,
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
}

#[derive(Deserialize)]
struct Order {
    status: String,
    tickets: Vec<serde::de::IgnoredAny>,
}

/// Sets up, fires and checks one burst; returns its report and every sample.
pub async fn run(
    endpoints: &Endpoints,
    admin_token: &str,
    plan: &Plan,
) -> Result<(BurstReport, Vec<Sample>), String> {
    assert!(plan.users >= 1 && plan.concurrency >= 1);
    let target = endpoints.first();
    let setup_started = Instant::now();
    eprintln!("creating {} users", plan.users);
    let buyers =
        create_buyers(target, admin_token, &plan.prefix, plan.users, APPROVED_CARD).await?;
    let concert_id = create_concert(target, admin_token, plan.capacity, plan.shards).await?;
    let listed = count_users(target, admin_token, &plan.prefix).await?;
    if listed != plan.users {
        return Err(format!(
            "GET /users lists {listed} users of this burst, not {}",
            plan.users
        ));
    }
    let setup_s = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "setup took {setup_s:.1} s; {} orders, {} at once",
        plan.users, plan.concurrency
    );
    let metrics_before = node_metrics(&endpoints.nodes).await;
    let tcp_before = TcpCounters::read();
    let samples = match plan.client_processes {
        None => {
            let burst = Burst::new(
                &endpoints.targets,
                &concert_id,
                buyers,
                &plan.prefix,
                Routing::Any,
                1,
            )?;
            fire(Arc::new(burst), plan.concurrency).await
        }
        Some(processes) => {
            let fire = crate::processes::Fire {
                targets: endpoints.urls(),
                source_addresses: target.source_addresses(),
                request_timeout_s: target.request_timeout.as_secs(),
                concert_id: concert_id.clone(),
                prefix: plan.prefix.clone(),
            };
            crate::processes::fire(&fire, buyers, plan.concurrency, processes).await?
        }
    };
    let kernel_tcp = TcpCounters::read()
        .zip(tcp_before)
        .map(|(after, before)| after.since(before));
    let metrics_after = node_metrics(&endpoints.nodes).await;
    let ok = samples.iter().filter(|s| s.outcome == Outcome::Ok).count() as u64;
    let invariants = check(target, &concert_id, ok).await?;
    let parameters = BurstParameters {
        users: plan.users,
        concurrency: plan.concurrency,
        capacity: plan.capacity,
        payment_latency_ms: plan.payment_latency_ms,
        client_processes: plan.client_processes,
    };
    let mut report = summarize(parameters, &samples, setup_s, invariants);
    report.kernel_tcp = kernel_tcp;
    report.targets = by_target(&samples, &endpoints.urls());
    for node in &mut report.nodes {
        let at = node.node as usize;
        node.url = endpoints.nodes.get(at).map(Target::base);
        if let (Some(Some(before)), Some(Some(after))) =
            (metrics_before.get(at), metrics_after.get(at))
        {
            node.coordinated = Some(counter_increase(before, after));
        }
    }
    Ok((report, samples))
}

/// The `boxoffice_orders_total` counters of every node (`None` for one that did not answer).
async fn node_metrics(nodes: &[Target]) -> Vec<Option<BTreeMap<String, u64>>> {
    let mut all = Vec::new();
    for node in nodes {
        all.push(
            node.text("/metrics")
                .await
                .ok()
                .map(|text| orders_total(&text)),
        );
    }
    all
}

/// `boxoffice_orders_total{outcome="..."} N` of a Prometheus text page, by outcome.
pub fn orders_total(metrics: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("boxoffice_orders_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let outcome = labels
            .split(',')
            .find_map(|label| label.trim().strip_prefix("outcome="))
            .map(|quoted| quoted.trim_matches('"').to_owned());
        if let (Some(outcome), Ok(value)) = (outcome, value.trim().parse::<f64>()) {
            *counts.entry(outcome).or_insert(0) += value as u64;
        }
    }
    counts
}

/// What each counter of `after` grew by since `before` (counters only grow while the process lives).
pub fn counter_increase(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, value)| {
            let was = before.get(name).copied().unwrap_or(0);
            (name.clone(), value.saturating_sub(was))
        })
        .filter(|(_, grew)| *grew > 0)
        .collect()
}

/// Creates `users` buyers whose usernames start with `prefix`, each with the card `card_number` on file,
/// [`USERS_PER_BULK_CALL_MAX`] per call; returns their tokens in index order.
pub async fn create_users(
    target: &Target,
    admin_token: &str,
    prefix: &str,
    users: u64,
    card_number: &str,
) -> Result<Vec<String>, String> {
    let buyers = create_buyers(target, admin_token, prefix, users, card_number).await?;
    Ok(buyers.into_iter().map(|buyer| buyer.token).collect())
}

/// [`create_users`], with the node each buyer lives on (from its id).
pub async fn create_buyers(
    target: &Target,
    admin_token: &str,
    prefix: &str,
    users: u64,
    card_number: &str,
) -> Result<Vec<Buyer>, String> {
    let mut buyers = Vec::with_capacity(users as usize);
    let per_call = if is_cluster(target, admin_token).await? {
        CLUSTER_USERS_PER_BULK_CALL
    } else {
        USERS_PER_BULK_CALL_MAX
    };
    let mut created = 0;
    while created < users {
        let count = (users - created).min(per_call);
        // Each call's prefix carries its number, so that every username is `prefix` and a unique suffix.
        let body = json!({
            "prefix": format!("{prefix}{}-", created / per_call),
            "count": count,
            "card": {"type": "visa", "holder_name": "Load Buyer", "number": card_number,
                     "exp_month": 12, "exp_year": 2035, "cvv": "123"},
        });
        let batch: Registrations = target
            .call(
                Method::POST,
                "/admin/users/bulk",
                Some(admin_token),
                Some(&body),
                StatusCode::CREATED,
            )
            .await?;
        if batch.users.len() as u64 != count
            || !batch.users.iter().all(|u| u.username.starts_with(prefix))
        {
            return Err(format!(
                "POST /admin/users/bulk created {} users, not {count}",
                batch.users.len()
            ));
        }
        buyers.extend(batch.users.into_iter().map(|user| Buyer {
            node: node_of_user(&user.id),
            token: user.token,
        }));
        created += count;
    }
    Ok(buyers)
}

/// Whether `target` is a process of a cluster: `GET /admin/cluster` answers 200 there, `404 not_a_cluster` on a
/// single node.
pub async fn is_cluster(target: &Target, admin_token: &str) -> Result<bool, String> {
    let answer = target
        .call::<serde::de::IgnoredAny>(
            Method::GET,
            "/admin/cluster",
            Some(admin_token),
            None,
            StatusCode::OK,
        )
        .await;
    match answer {
        Ok(_) => Ok(true),
        Err(error) if error.contains("404") => Ok(false),
        Err(error) => Err(error),
    }
}

/// A general-admission concert of `capacity` tickets; its id.
pub async fn create_concert(
    target: &Target,
    admin_token: &str,
    capacity: u64,
    shards: Option<u32>,
) -> Result<String, String> {
    let body = json!({
        "name": "boxoffice-load burst",
        "starts_at": "2030-06-01T20:00:00Z",
        "price_cents": 5_000,
        "capacity": capacity,
    });
    post_concert(target, admin_token, body, shards).await
}

/// `POST /concerts` (admin) with `body`, and `shards` when given; the new concert's id.
pub async fn post_concert(
    target: &Target,
    admin_token: &str,
    mut body: serde_json::Value,
    shards: Option<u32>,
) -> Result<String, String> {
    if let Some(shards) = shards {
        body["shards"] = json!(shards);
    }
    let concert: Created = target
        .call(
            Method::POST,
            "/concerts",
            Some(admin_token),
            Some(&body),
            StatusCode::CREATED,
        )
        .await?;
    Ok(concert.id)
}

/// Pages through `GET /users` as the study's script did, counting the users of this burst.
async fn count_users(target: &Target, admin_token: &str, prefix: &str) -> Result<u64, String> {
    let mut offset = Some(0);
    let mut count = 0;
    while let Some(at) = offset {
        let path = format!("/users?offset={at}&limit={USERS_PER_PAGE_MAX}");
        let page: UserPage = target
            .call(Method::GET, &path, Some(admin_token), None, StatusCode::OK)
            .await?;
        count += page
            .users
            .iter()
            .filter(|user| user.username.starts_with(prefix))
            .count() as u64;
        offset = page.next_offset;
    }
    Ok(count)
}

/// Which buyers' orders a lane sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Every lane takes the next order, whoever its buyer.
    Any,
    /// The targets are a cluster's shard nodes in node order; a lane sends only orders of buyers who live on its
    /// target's node: none is forwarded.
    Home,
    /// The same, only orders of buyers who live on another node: every one is forwarded once.
    Away,
}

/// One order to place: buyer `buyer` (an index into the buyers), the `number`-th order of its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub buyer: usize,
    pool: usize,
    number: usize,
}

/// Buyers who take orders in turn.
struct Pool {
    buyers: Vec<usize>,
    next: AtomicUsize,
}

/// What every order of a burst shares (and of `throughput`'s closed loop): one-ticket orders of one concert, taken
/// in turn from a pool of buyers (one pool, or with [`Routing::Home`] and [`Routing::Away`] one per target), each
/// buyer at most `rounds` times, each order with an `Idempotency-Key` of its own. Lane `l` sends to target
/// `(lane_offset + l) % targets`.
pub struct Burst {
    targets: Vec<Target>,
    buyers: Vec<Buyer>,
    body: Bytes,
    prefix: String,
    routing: Routing,
    pools: Vec<Pool>,
    rounds: usize,
    lane_offset: usize,
}

impl Burst {
    /// Orders of `concert_id` by `buyers` over `targets`; the keys are `prefix` and a number. Fails when a
    /// routing leaves a target without buyers (or a buyer's node is unknown).
    pub fn new(
        targets: &[Target],
        concert_id: &str,
        buyers: Vec<Buyer>,
        prefix: &str,
        routing: Routing,
        rounds: u64,
    ) -> Result<Self, String> {
        assert!(!targets.is_empty(), "orders go somewhere");
        if buyers.is_empty() {
            return Err("orders need buyers".into());
        }
        let pools = match routing {
            Routing::Any => vec![(0..buyers.len()).collect::<Vec<_>>()],
            Routing::Home | Routing::Away => {
                if buyers.iter().any(|buyer| buyer.node.is_none()) {
                    return Err(
                        "routing by node needs a cluster's buyers (ids u_<node>-...)".into(),
                    );
                }
                (0..targets.len())
                    .map(|target| {
                        let home = |buyer: &Buyer| buyer.node == Some(target as u32);
                        (0..buyers.len())
                            .filter(|&b| home(&buyers[b]) == (routing == Routing::Home))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            }
        };
        if let Some(target) = pools.iter().position(Vec::is_empty) {
            return Err(format!(
                "no buyer for the lanes to target {target} ({routing:?}): more buyers"
            ));
        }
        Ok(Self {
            targets: targets.to_vec(),
            buyers,
            body: json!({"concert_id": concert_id, "quantity": 1})
                .to_string()
                .into(),
            prefix: prefix.to_owned(),
            routing,
            pools: pools
                .into_iter()
                .map(|buyers| Pool {
                    buyers,
                    next: AtomicUsize::new(0),
                })
                .collect(),
            rounds: usize::try_from(rounds).unwrap_or(usize::MAX).max(1),
            lane_offset: 0,
        })
    }

    /// Lane `l` of this process is lane `offset + l` of the burst (which picks its target).
    pub fn with_lane_offset(mut self, offset: usize) -> Self {
        self.lane_offset = offset;
        self
    }

    /// The orders there are to place: every buyer `rounds` times.
    pub fn orders(&self) -> usize {
        self.buyers.len().saturating_mul(self.rounds)
    }

    /// The target lane `lane` sends to.
    pub fn target_of(&self, lane: usize) -> usize {
        (self.lane_offset + lane) % self.targets.len()
    }

    /// The node buyer `buyer` lives on.
    pub fn node_of(&self, buyer: usize) -> Option<u32> {
        self.buyers[buyer].node
    }

    /// The next order lane `lane` places, or `None` when its pool has placed all it may.
    pub fn take(&self, lane: usize) -> Option<Claim> {
        let pool = match self.routing {
            Routing::Any => 0,
            Routing::Home | Routing::Away => self.target_of(lane),
        };
        let buyers = &self.pools[pool].buyers;
        let number = self.pools[pool].next.fetch_add(1, Ordering::Relaxed);
        (number < buyers.len().saturating_mul(self.rounds)).then(|| Claim {
            buyer: buyers[number % buyers.len()],
            pool,
            number,
        })
    }

    /// Places `claim` over lane `lane`'s kept-alive `connection` (see [`Target::exchange`]).
    pub async fn order(
        &self,
        lane: usize,
        connection: &mut Option<Connection>,
        claim: Claim,
    ) -> Result<Outcome, Failure> {
        let token = &self.buyers[claim.buyer].token;
        let key = format!("{}{}-{}", self.prefix, claim.pool, claim.number);
        let (status, body) = self.targets[self.target_of(lane)]
            .exchange(
                lane,
                connection,
                Method::POST,
                "/orders",
                Some(token),
                &[("idempotency-key", &key)],
                Some(self.body.clone()),
                // The same Idempotency-Key: an order sent again is never placed twice.
                Resend::Safe,
            )
            .await?;
        Ok(outcome_of(status, &body))
    }

    /// Lane `lane`'s target, to open its connection before the clock.
    pub fn target_for(&self, lane: usize) -> &Target {
        &self.targets[self.target_of(lane)]
    }
}

/// One order as a lane saw it: when it was sent and answered, how, where to and whose.
pub struct Answered {
    pub sent: Instant,
    pub done: Instant,
    pub outcome: Outcome,
    pub target: u32,
    pub node: Option<u32>,
}

impl Answered {
    /// The sample, timed from `started`.
    pub fn sample(self, started: Instant) -> Sample {
        let ms = |at: Instant| at.saturating_duration_since(started).as_secs_f64() * 1000.0;
        Sample {
            sent_ms: ms(self.sent),
            done_ms: ms(self.done),
            outcome: self.outcome,
            target: self.target,
            node: self.node,
        }
    }
}

/// Every buyer orders one ticket. `concurrency` lanes, each with a kept-alive connection of its own (opened by its
/// first order), wait behind one gate; when it opens (the start of the burst) each lane takes the next buyer's
/// order until none is left.
async fn fire(burst: Arc<Burst>, concurrency: u64) -> Vec<Sample> {
    let orders = burst.orders();
    let lanes = usize::try_from(concurrency).expect("fits").min(orders);
    let gate = Arc::new(Semaphore::new(0));
    let progress = progress_bar(orders as u64, "answered");
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (burst, gate, progress) = (burst.clone(), gate.clone(), progress.clone());
        tasks.spawn(async move {
            gate.acquire()
                .await
                .expect("the gate is never closed")
                .forget();
            run_lane(&burst, lane, None, &progress).await
        });
    }
    let started = Instant::now();
    gate.add_permits(lanes);
    let mut samples = Vec::with_capacity(orders);
    while let Some(joined) = tasks.join_next().await {
        let answered = joined.expect("a lane does not panic");
        samples.extend(answered.into_iter().map(|answer| answer.sample(started)));
    }
    progress.finish_and_clear();
    assert_eq!(samples.len(), orders, "every order answered once");
    samples
}

/// One lane: orders one after the other over its connection (`connection`, or one it opens), reconnecting when it
/// breaks, until no order is left.
pub async fn run_lane(
    burst: &Burst,
    lane: usize,
    connection: Option<Connection>,
    progress: &ProgressBar,
) -> Vec<Answered> {
    let mut connection = connection;
    let mut answered = Vec::new();
    let target = burst.target_of(lane) as u32;
    while let Some(claim) = burst.take(lane) {
        let sent = Instant::now();
        let outcome = burst
            .order(lane, &mut connection, claim)
            .await
            .unwrap_or_else(|failure| Outcome::Error(failure.kind().into()));
        answered.push(Answered {
            sent,
            done: Instant::now(),
            outcome,
            target,
            node: burst.node_of(claim.buyer),
        });
        progress.inc(1);
    }
    answered
}

pub fn outcome_of(status: StatusCode, body: &[u8]) -> Outcome {
    match status {
        StatusCode::CREATED => match serde_json::from_slice::<Order>(body) {
            Ok(order) if order.status == "confirmed" && order.tickets.len() == 1 => Outcome::Ok,
            _ => Outcome::Error("201 unexpected_body".into()),
        },
        StatusCode::CONFLICT if error_code(body) == "sold_out" => Outcome::SoldOut,
        _ => Outcome::Error(format!("{} {}", status.as_u16(), error_code(body))),
    }
}

/// Reads the concert back and checks its counts.
pub async fn check(target: &Target, concert_id: &str, ok: u64) -> Result<Invariants, String> {
    let concert = counts(target, concert_id).await?;
    Ok(Invariants::check(
        concert.capacity,
        concert.remaining,
        concert.held,
        concert.sold,
        ok,
    ))
}

/// `GET /concerts/{id}`: the concert's counts.
pub async fn counts(target: &Target, concert_id: &str) -> Result<Counts, String> {
    target
        .call(
            Method::GET,
            &format!("/concerts/{concert_id}"),
            None,
            None,
            StatusCode::OK,
        )
        .await
}

/// A bar on stderr counting `total` things `what` (e.g. "answered"); drawn only on a terminal.
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {what} ({{per_sec}})"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    progress
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_cluster_user_id_names_its_node() {
        assert_eq!(node_of_user("u_2-00000000000000000a3f"), Some(2));
        assert_eq!(node_of_user("u_17-ab"), Some(17));
        assert_eq!(node_of_user("u_00000000000000000a3f"), None);
        assert_eq!(node_of_user("c_1-ab"), None);
        assert_eq!(node_of_user("u_x-ab"), None);
    }

    #[test]
    fn the_orders_counter_is_read_from_prometheus_text() {
        let before = orders_total(
            "# TYPE boxoffice_orders_total counter\n\
             boxoffice_orders_total{outcome=\"confirmed\"} 10\n\
             boxoffice_orders_total_other{outcome=\"confirmed\"} 99\n\
             boxoffice_requests_total{route=\"/orders\"} 7\n",
        );
        assert_eq!(before, BTreeMap::from([("confirmed".to_owned(), 10)]));
        let after = orders_total(
            "boxoffice_orders_total{outcome=\"confirmed\"} 25\n\
             boxoffice_orders_total{outcome=\"sold_out\",node=\"1\"} 3\n",
        );
        assert_eq!(after["sold_out"], 3);
        assert_eq!(
            counter_increase(&before, &after),
            BTreeMap::from([("confirmed".to_owned(), 15), ("sold_out".to_owned(), 3)])
        );
    }

    fn buyers(nodes: &[u32]) -> Vec<Buyer> {
        nodes
            .iter()
            .enumerate()
            .map(|(i, node)| Buyer {
                token: format!("t{i}"),
                node: Some(*node),
            })
            .collect()
    }

    fn targets(count: u16) -> Vec<Target> {
        (1..=count)
            .map(|port| {
                Target::new(
                    &format!("http://127.0.0.1:{port}"),
                    1,
                    Duration::from_secs(1),
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn lanes_spread_over_the_targets_and_every_buyer_orders_once() {
        let burst = Burst::new(
            &targets(3),
            "c",
            buyers(&[0, 1, 2, 0, 1]),
            "k-",
            Routing::Any,
            1,
        )
        .unwrap();
        assert_eq!(burst.orders(), 5);
        assert_eq!(
            (0..6).map(|lane| burst.target_of(lane)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        let taken: Vec<usize> = std::iter::from_fn(|| burst.take(7).map(|c| c.buyer)).collect();
        assert_eq!(taken, [0, 1, 2, 3, 4]);
        // A child's lanes continue the parent's numbering.
        let child = Burst::new(&targets(3), "c", buyers(&[0]), "k-", Routing::Any, 1)
            .unwrap()
            .with_lane_offset(5);
        assert_eq!(child.target_of(0), 2);
    }

    #[test]
    fn routing_by_node_sends_a_lane_only_its_nodes_buyers_or_only_the_others() {
        let nodes = [0, 1, 2, 0, 1, 2, 0];
        let home = Burst::new(&targets(3), "c", buyers(&nodes), "k-", Routing::Home, 2).unwrap();
        for lane in 0..3 {
            while let Some(claim) = home.take(lane) {
                assert_eq!(home.node_of(claim.buyer), Some(lane as u32));
            }
        }
        let away = Burst::new(&targets(3), "c", buyers(&nodes), "k-", Routing::Away, 1).unwrap();
        let mut placed = 0;
        while let Some(claim) = away.take(4) {
            assert_ne!(away.node_of(claim.buyer), Some(1));
            placed += 1;
        }
        assert_eq!(placed, 5, "the five buyers not on node 1, once each");
        // No buyer on node 2: its home lanes would have nothing to send.
        assert!(Burst::new(&targets(3), "c", buyers(&[0, 1]), "k-", Routing::Home, 1).is_err());
        let single = vec![Buyer {
            token: "t".into(),
            node: None,
        }];
        assert!(Burst::new(&targets(1), "c", single, "k-", Routing::Away, 1).is_err());
    }
}
