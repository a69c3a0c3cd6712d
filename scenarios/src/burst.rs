//! The study's experiment against a running node: `users` buyers are created (`POST /admin/users/bulk`) and a
//! general-admission concert of `capacity` tickets (admin), the users are fetched (`GET /users`, as the study did),
//! all before the clock starts; then every buyer orders one ticket at the same moment, at most `concurrency`
//! requests in flight, and each order's latency is taken from the start of the burst, so that an order waiting for
//! a slot counts its wait. Afterwards the concert's counts are read back and checked against the answers.

use crate::client::{Connection, Failure, Resend, Target, error_code};
use crate::netstat::TcpCounters;
use crate::report::{BurstParameters, BurstReport, Invariants, Outcome, Sample, summarize};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Users one `POST /admin/users/bulk` creates at most (the server's `USERS_BULK_MAX`).
pub const USERS_PER_BULK_CALL_MAX: u64 = 10_000;
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
}

#[derive(Deserialize)]
struct Registered {
    username: String,
    token: String,
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
    target: &Target,
    admin_token: &str,
    plan: &Plan,
) -> Result<(BurstReport, Vec<Sample>), String> {
    assert!(plan.users >= 1 && plan.concurrency >= 1);
    let setup_started = Instant::now();
    eprintln!("creating {} users", plan.users);
    let tokens = create_users(target, admin_token, &plan.prefix, plan.users, APPROVED_CARD).await?;
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
    let tcp_before = TcpCounters::read();
    let samples = fire(target, &concert_id, tokens, plan.concurrency, &plan.prefix).await;
    let kernel_tcp = TcpCounters::read()
        .zip(tcp_before)
        .map(|(after, before)| after.since(before));
    let ok = samples.iter().filter(|s| s.outcome == Outcome::Ok).count() as u64;
    let invariants = check(target, &concert_id, ok).await?;
    let parameters = BurstParameters {
        users: plan.users,
        concurrency: plan.concurrency,
        capacity: plan.capacity,
        payment_latency_ms: plan.payment_latency_ms,
    };
    let mut report = summarize(parameters, &samples, setup_s, invariants);
    report.kernel_tcp = kernel_tcp;
    Ok((report, samples))
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
    let mut tokens = Vec::with_capacity(users as usize);
    let mut created = 0;
    while created < users {
        let count = (users - created).min(USERS_PER_BULK_CALL_MAX);
        // Each call's prefix carries its number, so that every username is `prefix` and a unique suffix.
        let body = json!({
            "prefix": format!("{prefix}{}-", created / USERS_PER_BULK_CALL_MAX),
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
        tokens.extend(batch.users.into_iter().map(|user| user.token));
        created += count;
    }
    Ok(tokens)
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

/// What every order of a burst shares (and of `throughput`'s closed loop): one-ticket orders of one concert,
/// numbered as they are taken; order `i` is placed by buyer `i` (in turn when there are fewer buyers than orders)
/// with an `Idempotency-Key` of its own.
pub struct Burst {
    target: Target,
    tokens: Vec<String>,
    body: Bytes,
    prefix: String,
    next: AtomicUsize,
}

impl Burst {
    /// Orders of `concert_id` by the buyers whose bearer `tokens` are given; the keys are `prefix` and a number.
    pub fn new(target: &Target, concert_id: &str, tokens: Vec<String>, prefix: &str) -> Self {
        assert!(!tokens.is_empty(), "orders have buyers");
        Self {
            target: target.clone(),
            tokens,
            body: json!({"concert_id": concert_id, "quantity": 1})
                .to_string()
                .into(),
            prefix: prefix.to_owned(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next order's number, from 0.
    pub fn take(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Places order `index` over a lane's kept-alive `connection` (see [`Target::exchange`]).
    pub async fn order(
        &self,
        lane: usize,
        connection: &mut Option<Connection>,
        index: usize,
    ) -> Result<Outcome, Failure> {
        let token = &self.tokens[index % self.tokens.len()];
        let key = format!("{}{index}", self.prefix);
        let (status, body) = self
            .target
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
}

/// Every buyer orders one ticket. `concurrency` lanes, each with a kept-alive connection of its own, wait behind
/// one gate; when it opens (the start of the burst) each lane takes the next buyer's order until none is left.
async fn fire(
    target: &Target,
    concert_id: &str,
    tokens: Vec<String>,
    concurrency: u64,
    prefix: &str,
) -> Vec<Sample> {
    let orders = tokens.len();
    let lanes = usize::try_from(concurrency).expect("fits").min(orders);
    let burst = Arc::new(Burst::new(target, concert_id, tokens, prefix));
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
            run_lane(&burst, lane, &progress).await
        });
    }
    let started = Instant::now();
    gate.add_permits(lanes);
    let mut samples = Vec::with_capacity(orders);
    while let Some(joined) = tasks.join_next().await {
        let answered = joined.expect("a lane does not panic");
        samples.extend(answered.into_iter().map(|(sent, done, outcome)| Sample {
            sent_ms: sent.duration_since(started).as_secs_f64() * 1000.0,
            done_ms: done.duration_since(started).as_secs_f64() * 1000.0,
            outcome,
        }));
    }
    progress.finish_and_clear();
    assert_eq!(samples.len(), orders, "every order answered once");
    samples
}

/// One lane: orders one after the other over its connection, reconnecting when it breaks.
async fn run_lane(
    burst: &Burst,
    lane: usize,
    progress: &ProgressBar,
) -> Vec<(Instant, Instant, Outcome)> {
    let mut connection = None;
    let mut answered = Vec::new();
    loop {
        let index = burst.take();
        if index >= burst.tokens.len() {
            return answered;
        }
        let sent = Instant::now();
        let outcome = burst
            .order(lane, &mut connection, index)
            .await
            .unwrap_or_else(|failure| Outcome::Error(failure.kind().into()));
        answered.push((sent, Instant::now(), outcome));
        progress.inc(1);
    }
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
