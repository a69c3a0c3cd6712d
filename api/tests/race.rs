//! Races: hundreds of concurrent clients over HTTP against a small concert, with mixed quantities, seat conflicts,
//! cancels, hold expiries and declined payments. Whatever the interleaving, `remaining + held + sold == capacity`
//! at every poll, no seat is sold twice, every 201 carries its tickets and no ticket token repeats.
//!
//! Each test draws its plan (who asks for what, when, with which idempotency key) from a seeded generator and
//! prints the seed; `RACE_SEED=<seed>` replays the same plan. The scheduling itself is the machine's.

mod common;

use common::{ADMIN_TOKEN, DECLINED_CARD, GOOD_CARD, Reply, Server};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long the tests wait for something that must happen by itself (a hold expiring, the books settling):
/// a hang detector, not a performance assertion.
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(60);
/// Pause between two looks while waiting for the server to settle.
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// Pause between two invariant polls during a race.
const INVARIANT_POLL: Duration = Duration::from_millis(10);
/// Tickets in one order at most, as the server's default `--max-tickets-per-order`.
const TICKETS_PER_ORDER_MAX: usize = 10;
/// Price of a seat in `Server::create_seated`.
const SEATED_PRICE_CENTS: u64 = 1_000;
/// The races let a buyer buy as often as the plan says: the per-user limit (tested in limits.rs) stays out of them.
const RACE_TICKETS_PER_USER_MAX: &str = "1000000";

/// A seeded splitmix64 generator: the same seed gives the same plan.
struct Plan(u64);

impl Plan {
    fn seeded(test: &str) -> Plan {
        let seed = std::env::var("RACE_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_nanos() as u64
            });
        eprintln!("{test}: RACE_SEED={seed}");
        Plan(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "an empty range has no numbers");
        self.next() % n
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn percent(&mut self, chance: u64) -> bool {
        self.below(100) < chance
    }
}

#[derive(Clone)]
struct Buyer {
    id: String,
    token: String,
    /// Registered with the card the simulator always declines.
    declines: bool,
}

async fn register_buyers(
    server: &Server,
    prefix: &str,
    good: usize,
    declining: usize,
) -> Vec<Buyer> {
    let approved = server
        .register_many(&format!("{prefix}-good-"), good, GOOD_CARD)
        .await;
    let declined = server
        .register_many(&format!("{prefix}-declining-"), declining, DECLINED_CARD)
        .await;
    approved
        .into_iter()
        .map(|user| (user, false))
        .chain(declined.into_iter().map(|user| (user, true)))
        .map(|((id, token), declines)| Buyer {
            id,
            token,
            declines,
        })
        .collect()
}

async fn post_with_key(
    server: &Server,
    path: &str,
    token: &str,
    body: Value,
    key: Option<&str>,
) -> Reply {
    let headers: Vec<(&str, &str)> = key
        .map(|key| ("idempotency-key", key))
        .into_iter()
        .collect();
    server
        .send(Method::POST, path, Some(token), Some(body), &headers)
        .await
}

async fn delete(server: &Server, path: &str, token: &str) -> Reply {
    server
        .send(Method::DELETE, path, Some(token), None, &[])
        .await
}

fn as_str<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is a string: {value}"))
}

fn seat_set(seats: &Value) -> BTreeSet<String> {
    seats
        .as_array()
        .unwrap_or_else(|| panic!("seats is an array: {seats}"))
        .iter()
        .map(|seat| seat.as_str().expect("a seat label").to_owned())
        .collect()
}

/// Asserts that `order` is a confirmed order of `buyer` for `quantity` tickets of `concert_id`.
fn check_confirmed(
    order: &Value,
    concert_id: &str,
    buyer: &Buyer,
    quantity: usize,
    price_cents: u64,
) {
    assert_eq!(
        as_str(order, "status"),
        "confirmed",
        "a 201 order is confirmed: {order}"
    );
    assert_eq!(as_str(order, "concert_id"), concert_id, "{order}");
    assert_eq!(as_str(order, "user_id"), buyer.id, "{order}");
    assert!(as_str(order, "id").starts_with("o_"), "{order}");
    assert!(!as_str(order, "created_at").is_empty(), "{order}");
    let tickets = order["tickets"].as_array().expect("tickets");
    assert_eq!(
        tickets.len(),
        quantity,
        "a 201 order has exactly its tickets: {order}"
    );
    assert_eq!(
        order["amount_cents"].as_u64(),
        Some(price_cents * quantity as u64),
        "{order}"
    );
    for ticket in tickets {
        assert!(as_str(ticket, "id").starts_with("t_"), "{ticket}");
        assert_eq!(as_str(ticket, "order_id"), as_str(order, "id"), "{ticket}");
        assert_eq!(as_str(ticket, "concert_id"), concert_id, "{ticket}");
        let token = as_str(ticket, "token");
        assert!(
            token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "a ticket token carries at least 128 random bits: {ticket}"
        );
        assert!(ticket["checked_in_at"].is_null(), "{ticket}");
    }
}

/// The seat labels of an order's tickets.
fn ticket_seats(order: &Value) -> BTreeSet<String> {
    order["tickets"]
        .as_array()
        .expect("tickets")
        .iter()
        .map(|ticket| as_str(ticket, "seat").to_owned())
        .collect()
}

/// Polls the concert until `stop`, asserting at every poll that the counts add up (inside `availability`) and that
/// `sold` never goes down. Returns how many polls it made.
fn spawn_invariant_poller(
    server: Arc<Server>,
    concert_id: String,
    stop: Arc<AtomicBool>,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let (mut polls, mut sold_before) = (0, 0);
        while !stop.load(Ordering::Acquire) {
            let (_, _, sold, _) = server.availability(&concert_id).await;
            assert!(
                sold >= sold_before,
                "sold never goes down: {sold_before} then {sold}"
            );
            sold_before = sold;
            polls += 1;
            tokio::time::sleep(INVARIANT_POLL).await;
        }
        polls
    })
}

/// Waits until no ticket of the concert is held (every hold ended or expired); returns the final counts.
async fn wait_until_nothing_held(server: &Server, concert_id: &str) -> (u64, u64, u64, u64) {
    let deadline = Instant::now() + SETTLE_WAIT_MAX;
    loop {
        let counts = server.availability(concert_id).await;
        if counts.1 == 0 {
            return counts;
        }
        assert!(Instant::now() < deadline, "holds never expired: {counts:?}");
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Every confirmed order, by id, with the buyer and the idempotency key it was placed under. The same id twice is
/// allowed only as a replay: same buyer, same key.
#[derive(Default)]
struct Confirmed {
    orders: BTreeMap<String, (usize, Option<String>, Value)>,
}

impl Confirmed {
    fn record(&mut self, buyer: usize, key: Option<&str>, order: &Value) {
        let id = as_str(order, "id").to_owned();
        match self.orders.get(&id) {
            Some((first_buyer, first_key, first_order)) => {
                assert!(
                    *first_buyer == buyer && first_key.is_some() && first_key.as_deref() == key,
                    "two different requests got order {id}"
                );
                assert_eq!(first_order, order, "a replayed order is the same order");
            }
            None => {
                self.orders
                    .insert(id, (buyer, key.map(str::to_owned), order.clone()));
            }
        }
    }

    fn tickets(&self) -> impl Iterator<Item = &Value> {
        self.orders
            .values()
            .flat_map(|(_, _, order)| order["tickets"].as_array().expect("tickets"))
    }

    fn ticket_count(&self) -> u64 {
        self.tickets().count() as u64
    }

    /// No ticket id and no ticket token appears twice across all confirmed orders.
    fn assert_tickets_unique(&self) {
        let (mut ids, mut tokens) = (HashSet::new(), HashSet::new());
        for ticket in self.tickets() {
            assert!(
                ids.insert(as_str(ticket, "id")),
                "ticket id repeats: {ticket}"
            );
            assert!(
                tokens.insert(as_str(ticket, "token")),
                "ticket token repeats: {ticket}"
            );
        }
    }

    /// `GET /users/{id}/tickets` of every buyer lists exactly the tickets of their confirmed orders, and
    /// `GET /orders/{id}` answers the owner (and the admin) with the order as it was first answered, and refuses
    /// other users.
    async fn assert_matches_server(&self, server: &Server, buyers: &[Buyer]) {
        let mut expected: HashMap<usize, BTreeMap<String, Value>> = HashMap::new();
        for (buyer, _, order) in self.orders.values() {
            for ticket in order["tickets"].as_array().expect("tickets") {
                expected
                    .entry(*buyer)
                    .or_default()
                    .insert(as_str(ticket, "id").to_owned(), ticket.clone());
            }
        }
        for (index, buyer) in buyers.iter().enumerate() {
            let listed = server
                .get(&format!("/users/{}/tickets", buyer.id), Some(&buyer.token))
                .await
                .expect(200);
            let listed: BTreeMap<String, Value> = listed["tickets"]
                .as_array()
                .expect("tickets")
                .iter()
                .map(|ticket| (as_str(ticket, "id").to_owned(), ticket.clone()))
                .collect();
            assert_eq!(
                listed,
                expected.remove(&index).unwrap_or_default(),
                "the tickets of {} are those of their 201 orders",
                buyer.id
            );
        }
        for (order_id, (buyer, _, order)) in &self.orders {
            let path = format!("/orders/{order_id}");
            let owner = &buyers[*buyer];
            assert_eq!(
                &server.get(&path, Some(&owner.token)).await.expect(200),
                order
            );
            assert_eq!(
                &server.get(&path, Some(ADMIN_TOKEN)).await.expect(200),
                order
            );
            let stranger = &buyers[(*buyer + 1) % buyers.len()];
            server
                .get(&path, Some(&stranger.token))
                .await
                .expect_error(403, "forbidden");
        }
    }
}

mod general_admission {
    use super::*;

    pub const CAPACITY: u64 = 60;
    pub const SHARDS: u32 = 4;
    pub const PRICE_CENTS: u64 = 2_500;
    pub const GOOD_BUYERS: usize = 120;
    pub const DECLINING_BUYERS: usize = 30;
    pub const ORDERS: usize = 300;
    pub const HOLDS: usize = 60;
    /// Orders start spread over this window.
    pub const SPREAD_MS: u64 = 4_000;
    /// Most holds start in this first part of the window, so that they take tickets early and give them back
    /// (cancelled or expired after 2 s) while orders still arrive.
    pub const EARLY_HOLDS_MS: u64 = 600;
    pub const QUANTITY_MAX: u64 = 4;

    pub enum KeyUse {
        None,
        Once(String),
        /// The same request twice at once under one key.
        RepeatedTogether(String),
        /// The same request again under one key once the first answered.
        RepeatedAfter(String),
    }

    pub enum Step {
        Order {
            buyer: usize,
            quantity: u64,
            key: KeyUse,
        },
        Hold {
            buyer: usize,
            quantity: u64,
            /// Cancel this long after the hold is granted, or leave it to expire.
            cancel_after_ms: Option<u64>,
        },
    }

    pub enum Seen {
        Order {
            buyer: usize,
            quantity: u64,
            key: Option<String>,
            reply: Reply,
        },
        Hold {
            quantity: u64,
            reply: Reply,
            cancel: Option<Reply>,
        },
    }

    pub fn plan(plan: &mut Plan, buyers: usize) -> Vec<(u64, Step)> {
        let mut steps = Vec::with_capacity(ORDERS + HOLDS);
        for index in 0..ORDERS {
            let buyer = plan.below(buyers as u64) as usize;
            let quantity = plan.between(1, QUANTITY_MAX);
            let key = match plan.below(10) {
                0..=3 => KeyUse::None,
                4..=5 => KeyUse::Once(format!("ga-once-{index}")),
                6..=7 => KeyUse::RepeatedTogether(format!("ga-together-{index}")),
                _ => KeyUse::RepeatedAfter(format!("ga-after-{index}")),
            };
            steps.push((
                plan.below(SPREAD_MS),
                Step::Order {
                    buyer,
                    quantity,
                    key,
                },
            ));
        }
        for _ in 0..HOLDS {
            let buyer = plan.below(buyers as u64) as usize;
            let quantity = plan.between(1, 3);
            let cancel_after_ms = plan.percent(50).then(|| plan.below(500));
            let start_ms = if plan.percent(70) {
                plan.below(EARLY_HOLDS_MS)
            } else {
                plan.below(SPREAD_MS)
            };
            steps.push((
                start_ms,
                Step::Hold {
                    buyer,
                    quantity,
                    cancel_after_ms,
                },
            ));
        }
        steps
    }

    pub async fn run(
        server: Arc<Server>,
        concert_id: String,
        buyer_index: usize,
        buyer: Buyer,
        step: Step,
    ) -> Vec<Seen> {
        let body = |quantity: u64| json!({"concert_id": concert_id, "quantity": quantity});
        match step {
            Step::Order { quantity, key, .. } => {
                let order = |key: Option<String>| {
                    let (server, token, body) =
                        (server.clone(), buyer.token.clone(), body(quantity));
                    async move {
                        let reply =
                            post_with_key(&server, "/orders", &token, body, key.as_deref()).await;
                        Seen::Order {
                            buyer: buyer_index,
                            quantity,
                            key,
                            reply,
                        }
                    }
                };
                match key {
                    KeyUse::None => vec![order(None).await],
                    KeyUse::Once(key) => vec![order(Some(key)).await],
                    KeyUse::RepeatedTogether(key) => {
                        let (first, second) =
                            tokio::join!(order(Some(key.clone())), order(Some(key)));
                        assert_replayed(&first, &second);
                        vec![first, second]
                    }
                    KeyUse::RepeatedAfter(key) => {
                        let first = order(Some(key.clone())).await;
                        let second = order(Some(key)).await;
                        assert_replayed(&first, &second);
                        vec![first, second]
                    }
                }
            }
            Step::Hold {
                quantity,
                cancel_after_ms,
                ..
            } => {
                let reply = server
                    .post("/holds", Some(&buyer.token), body(quantity))
                    .await;
                let mut cancel = None;
                if reply.status == 201
                    && let Some(delay_ms) = cancel_after_ms
                {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    let path = format!("/holds/{}", as_str(&reply.body, "id"));
                    cancel = Some(delete(&server, &path, &buyer.token).await);
                }
                vec![Seen::Hold {
                    quantity,
                    reply,
                    cancel,
                }]
            }
        }
    }

    /// Two answers under one key are the same answer, unless one of them was `overloaded` (nothing happened, so
    /// the server lets a retry under that key try again).
    fn assert_replayed(first: &Seen, second: &Seen) {
        let (Seen::Order { reply: first, .. }, Seen::Order { reply: second, .. }) = (first, second)
        else {
            unreachable!("orders are compared with orders");
        };
        if first.status == 503 || second.status == 503 {
            return;
        }
        assert_eq!(
            first.status, second.status,
            "a replay answers the same: {} vs {}",
            first.body, second.body
        );
        assert_eq!(first.body, second.body, "a replay answers the same body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn general_admission_race_sells_each_ticket_once() {
    use general_admission::*;
    let mut plan = Plan::seeded("general_admission_race_sells_each_ticket_once");
    let server = Arc::new(Server::start(&[
        "--hold-ttl-s",
        "2",
        "--max-tickets-per-user",
        RACE_TICKETS_PER_USER_MAX,
    ]));
    let concert_id = server.create_general(CAPACITY, SHARDS, PRICE_CENTS).await;
    let mut buyers = register_buyers(&server, "ga", GOOD_BUYERS, DECLINING_BUYERS).await;
    let steps = general_admission::plan(&mut plan, buyers.len());

    let stop = Arc::new(AtomicBool::new(false));
    let poller = spawn_invariant_poller(server.clone(), concert_id.clone(), stop.clone());
    let tasks: Vec<JoinHandle<Vec<Seen>>> = steps
        .into_iter()
        .map(|(delay_ms, step)| {
            let buyer_index = match &step {
                Step::Order { buyer, .. } | Step::Hold { buyer, .. } => *buyer,
            };
            let (server, concert_id, buyer) = (
                server.clone(),
                concert_id.clone(),
                buyers[buyer_index].clone(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                run(server, concert_id, buyer_index, buyer, step).await
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.expect("a client task"));
    }
    stop.store(true, Ordering::Release);
    let polls = poller.await.expect("the invariant poller");
    assert!(polls > 0, "the invariant was polled during the race");

    let mut confirmed = Confirmed::default();
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for event in &seen {
        match event {
            Seen::Order {
                buyer,
                quantity,
                key,
                reply,
            } => {
                let who = &buyers[*buyer];
                match reply.status.as_u16() {
                    201 => {
                        assert!(
                            !who.declines,
                            "a declining card bought tickets: {}",
                            reply.body
                        );
                        check_confirmed(
                            &reply.body,
                            &concert_id,
                            who,
                            *quantity as usize,
                            PRICE_CENTS,
                        );
                        confirmed.record(*buyer, key.as_deref(), &reply.body);
                    }
                    402 => {
                        reply.expect_error(402, "payment_declined");
                        assert!(
                            who.declines,
                            "only the declining card is declined: {}",
                            reply.body
                        );
                    }
                    409 => reply.expect_error(409, "sold_out"),
                    503 => {
                        reply.expect_error(503, "overloaded");
                        assert!(reply.retry_after.is_some(), "503 carries Retry-After");
                    }
                    _ => panic!("unexpected order reply {}: {}", reply.status, reply.body),
                }
                *tally
                    .entry(format!("order {}", reply.status.as_u16()))
                    .or_default() += 1;
            }
            Seen::Hold {
                quantity,
                reply,
                cancel,
            } => {
                match reply.status.as_u16() {
                    201 => {
                        assert_eq!(
                            reply.body["quantity"].as_u64(),
                            Some(*quantity),
                            "{}",
                            reply.body
                        );
                        assert_eq!(as_str(&reply.body, "concert_id"), concert_id);
                        assert!(
                            as_str(&reply.body, "id").starts_with("h_"),
                            "{}",
                            reply.body
                        );
                        assert!(!as_str(&reply.body, "expires_at").is_empty());
                    }
                    409 => reply.expect_error(409, "sold_out"),
                    503 => reply.expect_error(503, "overloaded"),
                    _ => panic!("unexpected hold reply {}: {}", reply.status, reply.body),
                }
                *tally
                    .entry(format!("hold {}", reply.status.as_u16()))
                    .or_default() += 1;
                if let Some(cancel) = cancel {
                    // 404 only if the hold expired before the cancel reached it.
                    if cancel.status != 204 {
                        cancel.expect_error(404, "hold_not_found");
                    }
                    *tally
                        .entry(format!("cancel {}", cancel.status.as_u16()))
                        .or_default() += 1;
                }
            }
        }
    }
    eprintln!("general admission race: {tally:?}, {polls} invariant polls");
    assert!(!confirmed.orders.is_empty(), "someone bought tickets");

    let (remaining, _, sold, capacity) = wait_until_nothing_held(&server, &concert_id).await;
    assert_eq!(capacity, CAPACITY);
    assert_eq!(
        confirmed.ticket_count(),
        sold,
        "the 201s carry every sold ticket"
    );
    assert_eq!(remaining, CAPACITY - sold);

    // Sell the rest in pieces: with nothing held, every piece that fits must be granted, wherever it lies.
    let (closer_id, closer_token) = server.register("ga-closer", GOOD_CARD).await;
    buyers.push(Buyer {
        id: closer_id,
        token: closer_token,
        declines: false,
    });
    let closer = buyers.len() - 1;
    let mut left = remaining;
    while left > 0 {
        let quantity = left.min(QUANTITY_MAX);
        let body = json!({"concert_id": concert_id, "quantity": quantity});
        let order = server
            .post("/orders", Some(&buyers[closer].token), body)
            .await
            .expect(201);
        check_confirmed(
            &order,
            &concert_id,
            &buyers[closer],
            quantity as usize,
            PRICE_CENTS,
        );
        confirmed.record(closer, None, &order);
        left -= quantity;
        assert_eq!(server.availability(&concert_id).await.0, left);
    }
    server
        .post(
            "/orders",
            Some(&buyers[closer].token),
            json!({"concert_id": concert_id, "quantity": 1}),
        )
        .await
        .expect_error(409, "sold_out");
    server
        .post(
            "/holds",
            Some(&buyers[closer].token),
            json!({"concert_id": concert_id, "quantity": 1}),
        )
        .await
        .expect_error(409, "sold_out");
    assert_eq!(
        server.availability(&concert_id).await,
        (0, 0, CAPACITY, CAPACITY)
    );
    assert_eq!(confirmed.ticket_count(), CAPACITY);
    confirmed.assert_tickets_unique();
    confirmed.assert_matches_server(&server, &buyers).await;
}

mod seated {
    use super::*;

    pub const SECTIONS: [&str; 2] = ["A", "B"];
    pub const ROWS: u64 = 4;
    pub const SEATS_PER_ROW: u64 = 5;
    pub const CAPACITY: u64 = SECTIONS.len() as u64 * ROWS * SEATS_PER_ROW;
    pub const SHARDS: u32 = 3;
    pub const GOOD_BUYERS: usize = 30;
    pub const DECLINING_BUYERS: usize = 6;
    pub const STEPS: usize = 180;
    pub const SPREAD_MS: u64 = 2_500;

    pub enum AfterHold {
        Purchase,
        Cancel,
        Leave,
    }

    pub enum Step {
        Order {
            buyer: usize,
            seats: Vec<String>,
            key: Option<String>,
        },
        Hold {
            buyer: usize,
            seats: Vec<String>,
            then: AfterHold,
            pause_ms: u64,
        },
    }

    pub enum Seen {
        Order {
            buyer: usize,
            seats: Vec<String>,
            key: Option<String>,
            reply: Reply,
        },
        Hold {
            buyer: usize,
            seats: Vec<String>,
            reply: Reply,
            purchase: Option<Reply>,
            cancel: Option<Reply>,
        },
    }

    pub fn label(section: u64, row: u64, seat: u64) -> String {
        format!("{}-{row}-{seat}", SECTIONS[section as usize])
    }

    pub fn all_labels() -> Vec<String> {
        (0..SECTIONS.len() as u64)
            .flat_map(|section| {
                (1..=ROWS).flat_map(move |row| {
                    (1..=SEATS_PER_ROW).map(move |seat| label(section, row, seat))
                })
            })
            .collect()
    }

    /// Mostly a few neighbours in one row (so that requests overlap in part), sometimes seats scattered over the
    /// hall (so that one request spans shards).
    fn seats(plan: &mut Plan) -> Vec<String> {
        if plan.percent(60) {
            let (section, row) = (plan.below(SECTIONS.len() as u64), plan.between(1, ROWS));
            let first = plan.between(1, SEATS_PER_ROW);
            let last = (first + plan.below(3)).min(SEATS_PER_ROW);
            (first..=last)
                .map(|seat| label(section, row, seat))
                .collect()
        } else {
            let mut picked = BTreeSet::new();
            let wanted = plan.between(2, 3);
            while picked.len() < wanted as usize {
                let (section, row) = (plan.below(SECTIONS.len() as u64), plan.between(1, ROWS));
                picked.insert(label(section, row, plan.between(1, SEATS_PER_ROW)));
            }
            picked.into_iter().collect()
        }
    }

    pub fn plan(plan: &mut Plan, buyers: usize) -> Vec<(u64, Step)> {
        (0..STEPS)
            .map(|index| {
                let buyer = plan.below(buyers as u64) as usize;
                let seats = seats(plan);
                let step = if plan.percent(45) {
                    let key = plan.percent(50).then(|| format!("seated-{index}"));
                    Step::Order { buyer, seats, key }
                } else {
                    let then = match plan.below(10) {
                        0..=4 => AfterHold::Purchase,
                        5..=7 => AfterHold::Cancel,
                        _ => AfterHold::Leave,
                    };
                    Step::Hold {
                        buyer,
                        seats,
                        then,
                        pause_ms: plan.below(400),
                    }
                };
                (plan.below(SPREAD_MS), step)
            })
            .collect()
    }

    pub async fn run(server: Arc<Server>, concert_id: String, buyer: Buyer, step: Step) -> Seen {
        match step {
            Step::Order {
                buyer: index,
                seats,
                key,
            } => {
                let body = json!({"concert_id": concert_id, "seats": seats});
                let reply =
                    post_with_key(&server, "/orders", &buyer.token, body, key.as_deref()).await;
                Seen::Order {
                    buyer: index,
                    seats,
                    key,
                    reply,
                }
            }
            Step::Hold {
                buyer: index,
                seats,
                then,
                pause_ms,
            } => {
                let body = json!({"concert_id": concert_id, "seats": seats});
                let reply = server.post("/holds", Some(&buyer.token), body).await;
                let (mut purchase, mut cancel) = (None, None);
                if reply.status == 201 {
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    let path = format!("/holds/{}", as_str(&reply.body, "id"));
                    match then {
                        AfterHold::Purchase => {
                            purchase = Some(
                                server
                                    .post(
                                        &format!("{path}/purchase"),
                                        Some(&buyer.token),
                                        json!({}),
                                    )
                                    .await,
                            );
                        }
                        AfterHold::Cancel => {
                            cancel = Some(delete(&server, &path, &buyer.token).await)
                        }
                        AfterHold::Leave => {}
                    }
                }
                Seen::Hold {
                    buyer: index,
                    seats,
                    reply,
                    purchase,
                    cancel,
                }
            }
        }
    }

    /// `GET /concerts/{id}/seats` as label to status, checked to list every seat once.
    pub async fn seat_map(server: &Server, concert_id: &str) -> BTreeMap<String, String> {
        let body = server
            .get(&format!("/concerts/{concert_id}/seats"), None)
            .await
            .expect(200);
        let seats = body["seats"].as_array().expect("seats");
        let map: BTreeMap<String, String> = seats
            .iter()
            .map(|seat| {
                (
                    as_str(seat, "id").to_owned(),
                    as_str(seat, "status").to_owned(),
                )
            })
            .collect();
        assert_eq!(seats.len() as u64, CAPACITY, "every seat once: {body}");
        assert_eq!(map.keys().cloned().collect::<Vec<_>>(), {
            let mut labels = all_labels();
            labels.sort();
            labels
        });
        for status in map.values() {
            assert!(
                ["free", "held", "sold"].contains(&status.as_str()),
                "unknown seat status {status}"
            );
        }
        map
    }

    /// Polls the seat map until `stop`: a seat once sold stays sold.
    pub fn spawn_seat_poller(
        server: Arc<Server>,
        concert_id: String,
        stop: Arc<AtomicBool>,
    ) -> JoinHandle<u64> {
        tokio::spawn(async move {
            let mut sold_before: BTreeSet<String> = BTreeSet::new();
            let mut polls = 0;
            while !stop.load(Ordering::Acquire) {
                let map = seat_map(&server, &concert_id).await;
                let sold: BTreeSet<String> = map
                    .into_iter()
                    .filter(|(_, status)| status == "sold")
                    .map(|(label, _)| label)
                    .collect();
                assert!(
                    sold.is_superset(&sold_before),
                    "a sold seat stays sold: {sold_before:?} then {sold:?}"
                );
                sold_before = sold;
                polls += 1;
                tokio::time::sleep(INVARIANT_POLL).await;
            }
            polls
        })
    }

    pub fn check_order(order: &Value, concert_id: &str, buyer: &Buyer, seats: &[String]) {
        check_confirmed(order, concert_id, buyer, seats.len(), SEATED_PRICE_CENTS);
        let wanted: BTreeSet<String> = seats.iter().cloned().collect();
        assert_eq!(
            ticket_seats(order),
            wanted,
            "the tickets are the seats asked for: {order}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seated_race_sells_each_seat_once() {
    use seated::*;
    let mut plan = Plan::seeded("seated_race_sells_each_seat_once");
    let server = Arc::new(Server::start(&[
        "--hold-ttl-s",
        "2",
        "--max-tickets-per-user",
        RACE_TICKETS_PER_USER_MAX,
    ]));
    let concert_id = server
        .create_seated(&SECTIONS, ROWS as u32, SEATS_PER_ROW as u32, SHARDS)
        .await;
    let mut buyers = register_buyers(&server, "seated", GOOD_BUYERS, DECLINING_BUYERS).await;
    let steps = seated::plan(&mut plan, buyers.len());

    let stop = Arc::new(AtomicBool::new(false));
    let pollers = [
        spawn_invariant_poller(server.clone(), concert_id.clone(), stop.clone()),
        spawn_seat_poller(server.clone(), concert_id.clone(), stop.clone()),
    ];
    let tasks: Vec<JoinHandle<Seen>> = steps
        .into_iter()
        .map(|(delay_ms, step)| {
            let buyer = match &step {
                Step::Order { buyer, .. } | Step::Hold { buyer, .. } => buyers[*buyer].clone(),
            };
            let (server, concert_id) = (server.clone(), concert_id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                run(server, concert_id, buyer, step).await
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.expect("a client task"));
    }
    stop.store(true, Ordering::Release);
    for poller in pollers {
        assert!(
            poller.await.expect("a poller") > 0,
            "the invariants were polled during the race"
        );
    }

    let mut confirmed = Confirmed::default();
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    let mut count = |what: &str, reply: &Reply| {
        *tally
            .entry(format!("{what} {}", reply.status.as_u16()))
            .or_default() += 1;
    };
    for event in &seen {
        match event {
            Seen::Order {
                buyer,
                seats,
                key,
                reply,
            } => {
                let who = &buyers[*buyer];
                match reply.status.as_u16() {
                    201 => {
                        assert!(
                            !who.declines,
                            "a declining card bought seats: {}",
                            reply.body
                        );
                        check_order(&reply.body, &concert_id, who, seats);
                        confirmed.record(*buyer, key.as_deref(), &reply.body);
                    }
                    402 => {
                        reply.expect_error(402, "payment_declined");
                        assert!(
                            who.declines,
                            "only the declining card is declined: {}",
                            reply.body
                        );
                    }
                    _ => reply.expect_error(409, "seat_taken"),
                }
                count("order", reply);
            }
            Seen::Hold {
                buyer,
                seats,
                reply,
                purchase,
                cancel,
            } => {
                let who = &buyers[*buyer];
                if reply.status == 201 {
                    let wanted: BTreeSet<String> = seats.iter().cloned().collect();
                    assert_eq!(
                        seat_set(&reply.body["seats"]),
                        wanted,
                        "a hold holds the seats asked for"
                    );
                    assert_eq!(reply.body["quantity"].as_u64(), Some(seats.len() as u64));
                } else {
                    reply.expect_error(409, "seat_taken");
                }
                count("hold", reply);
                if let Some(purchase) = purchase {
                    match purchase.status.as_u16() {
                        201 => {
                            assert!(
                                !who.declines,
                                "a declining card bought seats: {}",
                                purchase.body
                            );
                            check_order(&purchase.body, &concert_id, who, seats);
                            confirmed.record(*buyer, None, &purchase.body);
                        }
                        402 => {
                            purchase.expect_error(402, "payment_declined");
                            assert!(
                                who.declines,
                                "only the declining card is declined: {}",
                                purchase.body
                            );
                        }
                        // Only if the hold ran out before the purchase reached it.
                        _ => purchase.expect_error(410, "hold_expired"),
                    }
                    count("purchase", purchase);
                }
                if let Some(cancel) = cancel {
                    if cancel.status != 204 {
                        cancel.expect_error(404, "hold_not_found");
                    }
                    count("cancel", cancel);
                }
            }
        }
    }
    eprintln!("seated race: {tally:?}");
    assert!(
        tally.contains_key("order 409") || tally.contains_key("hold 409"),
        "the race had conflicts"
    );

    // After cancels and expiries nothing stays held, and the seat map agrees with the confirmed tickets exactly.
    let (remaining, _, sold, _) = wait_until_nothing_held(&server, &concert_id).await;
    let map = seat_map(&server, &concert_id).await;
    let mut ticket_labels = BTreeSet::new();
    for ticket in confirmed.tickets() {
        let seat = as_str(ticket, "seat");
        assert!(
            ticket_labels.insert(seat.to_owned()),
            "seat {seat} is on two confirmed tickets"
        );
    }
    let sold_labels: BTreeSet<String> = map
        .iter()
        .filter(|(_, status)| *status == "sold")
        .map(|(label, _)| label.clone())
        .collect();
    assert_eq!(
        sold_labels, ticket_labels,
        "a seat is sold if and only if a confirmed ticket has it"
    );
    assert!(
        map.values().all(|status| status != "held"),
        "no seat stays held: {map:?}"
    );
    assert_eq!(sold, sold_labels.len() as u64);
    assert_eq!(remaining, CAPACITY - sold);
    confirmed.assert_tickets_unique();

    // Every seat that went back to sale can be bought; a sold seat cannot.
    let (closer_id, closer_token) = server.register("seated-closer", GOOD_CARD).await;
    buyers.push(Buyer {
        id: closer_id,
        token: closer_token,
        declines: false,
    });
    let closer = buyers.len() - 1;
    let free: Vec<String> = map
        .iter()
        .filter(|(_, status)| *status == "free")
        .map(|(label, _)| label.clone())
        .collect();
    for seats in free.chunks(TICKETS_PER_ORDER_MAX) {
        let body = json!({"concert_id": concert_id, "seats": seats});
        let order = server
            .post("/orders", Some(&buyers[closer].token), body)
            .await
            .expect(201);
        check_order(&order, &concert_id, &buyers[closer], seats);
        confirmed.record(closer, None, &order);
    }
    assert_eq!(
        server.availability(&concert_id).await,
        (0, 0, CAPACITY, CAPACITY)
    );
    assert!(
        seat_map(&server, &concert_id)
            .await
            .values()
            .all(|status| status == "sold")
    );
    let taken = json!({"concert_id": concert_id, "seats": [label(0, 1, 1)]});
    server
        .post("/orders", Some(&buyers[closer].token), taken.clone())
        .await
        .expect_error(409, "seat_taken");
    server
        .post("/holds", Some(&buyers[closer].token), taken)
        .await
        .expect_error(409, "seat_taken");
    confirmed.assert_tickets_unique();
    confirmed.assert_matches_server(&server, &buyers).await;
}

/// Waits until every listed seat shows `status` in the seat map.
async fn wait_for_seats(server: &Server, concert_id: &str, labels: &[&str], status: &str) {
    let deadline = Instant::now() + SETTLE_WAIT_MAX;
    loop {
        let body = server
            .get(&format!("/concerts/{concert_id}/seats"), None)
            .await
            .expect(200);
        let statuses: HashMap<&str, &str> = body["seats"]
            .as_array()
            .expect("seats")
            .iter()
            .map(|seat| (as_str(seat, "id"), as_str(seat, "status")))
            .collect();
        if labels.iter().all(|label| statuses[label] == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "seats {labels:?} never became {status}: {body}"
        );
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_untouched_hold_expires_by_itself() {
    let server = Server::start(&["--hold-ttl-s", "1"]);
    let seated_id = server.create_seated(&["A"], 2, 5, 2).await;
    let general_id = server.create_general(10, 2, 500).await;
    let (_, alice) = server.register("expiry-alice", GOOD_CARD).await;
    let (bob_id, bob) = server.register("expiry-bob", GOOD_CARD).await;

    // One seat in each shard, so that both shards must expire their part.
    let seats = ["A-1-1", "A-2-5"];
    let hold = server
        .post(
            "/holds",
            Some(&alice),
            json!({"concert_id": seated_id, "seats": seats}),
        )
        .await
        .expect(201);
    assert_eq!(
        seat_set(&hold["seats"]),
        seats.iter().map(|seat| seat.to_string()).collect()
    );
    let general_hold = server
        .post(
            "/holds",
            Some(&alice),
            json!({"concert_id": general_id, "quantity": 3}),
        )
        .await
        .expect(201);
    assert_eq!(server.availability(&seated_id).await.1, 2);
    assert_eq!(server.availability(&general_id).await.1, 3);
    server
        .post(
            "/orders",
            Some(&bob),
            json!({"concert_id": seated_id, "seats": ["A-1-1"]}),
        )
        .await
        .expect_error(409, "seat_taken");

    // Nobody touches the holds: they end by themselves.
    wait_for_seats(&server, &seated_id, &seats, "free").await;
    assert_eq!(server.availability(&seated_id).await, (10, 0, 0, 10));
    wait_until_nothing_held(&server, &general_id).await;
    assert_eq!(server.availability(&general_id).await, (10, 0, 0, 10));

    for hold in [&hold, &general_hold] {
        let path = format!("/holds/{}/purchase", as_str(hold, "id"));
        server
            .post(&path, Some(&alice), json!({}))
            .await
            .expect_error(410, "hold_expired");
        // Under a key of its own, too: a key names one request, and a second hold is a second request.
        let key = format!("expired-{}", as_str(hold, "id"));
        let keyed = post_with_key(&server, &path, &alice, json!({}), Some(&key)).await;
        keyed.expect_error(410, "hold_expired");
    }
    assert_eq!(server.availability(&seated_id).await, (10, 0, 0, 10));
    assert_eq!(server.availability(&general_id).await, (10, 0, 0, 10));

    // The expired seat is for sale again.
    let order = server
        .post(
            "/orders",
            Some(&bob),
            json!({"concert_id": seated_id, "seats": ["A-1-1"]}),
        )
        .await
        .expect(201);
    assert_eq!(as_str(&order, "user_id"), bob_id);
    assert_eq!(ticket_seats(&order), BTreeSet::from(["A-1-1".to_owned()]));
    wait_for_seats(&server, &seated_id, &["A-1-1"], "sold").await;
    wait_for_seats(&server, &seated_id, &["A-2-5"], "free").await;
    assert_eq!(server.availability(&seated_id).await, (9, 0, 1, 10));
}
